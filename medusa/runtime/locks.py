"""One writer per run folder or output file: a lock file holding the writer's pid.

    lock = locks.hold_folder(out_dir, "--output_dir")     # training: <out_dir>/.lock
    lock = locks.hold_file(results_json, "--output")      # benchmark, distillation: <file>.lock
    ...
    lock.release()                                        # or `with lock:`; exit releases it too

A second process asking for a held lock is refused at once with a one-line LockedError naming the
holder's pid. The lock is Linux's flock on the lock file, so the kernel drops it when its holder
dies, however it dies; a lock file left by a killed holder (its pid inside, no flock on it) is taken
over with a warning. A clean release deletes the file. Within one process a lock is re-entrant
(a test or a notebook that builds two trainers for one folder is one writer).
"""
import atexit
import errno
import fcntl
import os
import sys
import time
from pathlib import Path

from medusa.runtime.errors import UsageError

FOLDER_LOCK = ".lock"            # the lock file inside a locked folder


class LockedError(UsageError):
    """Another process holds the lock of a run folder or output file."""


# lock file (absolute) -> [fd, holds, pid] of the locks this process (pid) holds
_held = {}


def hold_folder(folder, flag="the folder") -> "Lock":
    """Lock the run folder `folder` (created if missing) for this process."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return Lock(folder / FOLDER_LOCK, folder, flag)


def hold_file(path, flag="the file") -> "Lock":
    """Lock the output file `path` (the lock is `<path>.lock` beside it; the folder is created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return Lock(path.with_name(path.name + ".lock"), path, flag)


class Lock:
    """A held lock (see the module docstring); `release()` is idempotent."""

    def __init__(self, lock_file: Path, target: Path, flag: str):
        self.file, self.pid, self.held = Path(lock_file).absolute(), os.getpid(), False
        key = str(self.file)
        if key in _held and _held[key][2] == self.pid:
            _held[key][1] += 1
        else:
            _held[key] = [_take(self.file, target, flag), 1, self.pid]
        self.held = True

    def release(self):
        key = str(self.file)
        if not self.held or key not in _held or os.getpid() != self.pid:   # a forked child holds nothing
            return
        self.held = False
        _held[key][1] -= 1
        if _held[key][1] == 0:
            _drop(self.file, _held.pop(key)[0])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    def __del__(self):
        if _held is not None:          # (at interpreter exit the module's globals may be gone; atexit released it)
            self.release()


def _take(lock_file: Path, target: Path, flag: str) -> int:
    """flock the lock file (refused at once when another process holds it), write our pid; -> fd."""
    while True:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _holder(fd)
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise LockedError(f"{flag} {target} is being written by another process (pid {holder or '?'}): wait "
                              f"for it to end or choose another {flag} (lock file {lock_file})") from None
        if _same_file(fd, lock_file):
            break
        os.close(fd)            # its holder deleted the file as it let go: lock the new one
    left_by = _holder(fd, tries=1)
    if left_by and left_by != os.getpid():
        print(f"warning: {lock_file} was left by pid {left_by}, which no longer holds it (it ended without "
              "releasing it): taking it over", file=sys.stderr)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _drop(lock_file: Path, fd: int):
    """Delete the lock file (while still holding it, so nobody locks a deleted file), then let go."""
    try:
        if _same_file(fd, lock_file):
            lock_file.unlink()
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _same_file(fd, path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _holder(fd, tries=5):
    """The pid written in the lock file, or None (a holder writes it just after taking the lock)."""
    for _ in range(tries):
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        if text.isdigit():
            return int(text)
        time.sleep(0.02)
    return None


@atexit.register
def _release_all():
    """At exit, delete the lock files this process holds (the kernel drops the flocks anyway)."""
    for key, (fd, _, pid) in list(_held.items()):
        if pid == os.getpid():          # a forked child inherits _held, not the locks
            del _held[key]
            _drop(Path(key), fd)
