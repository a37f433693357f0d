"""Errors a user can fix, told apart from bugs.

A `UsageError` message says what is wrong, where (the flag, file, line or tensor) and what to
do; the command-line entry points print it as one line and exit with status 2 (cli.run).
Everything else is a bug and keeps its traceback. Both subclass the builtin a caller would
expect (ValueError, FileNotFoundError), so library users can catch either.
"""


class UsageError(ValueError):
    """Bad input: an argument, a file's content, a request the model cannot serve."""


class MissingFileError(UsageError, FileNotFoundError):
    """A file or folder the user named (or that should sit beside it) does not exist."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during a long run, after it saved what it finished; the message says
    where and how to continue (cli.run prints it and exits 130)."""


class NonFiniteError(UsageError):
    """A NaN or inf where a number must be finite (a training loss, a metric); the message says
    where it appeared and what to look at."""
