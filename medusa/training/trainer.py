"""Training draft heads on a frozen base model: one trainer for every head family.

`medusa train --head_family medusa|rnn|moe` (cli/train.py; train_ddp.py, train_rnn.py and
train_moe.py fix the family) parses TrainArgs (args.py) and runs Trainer.fit. References:
FasterDecoding/Medusa `train_legacy.py` (the heads and their loss, losses.py) and nanoGPT's
`train.py` (the loop: warmup + cosine schedule, gradient accumulation, clipping, resumable
checkpoints, state.py).

    python train_ddp.py --epochs 2                          # heads for the embedded SmolLM2
    mpirun -np 2 python train_ddp.py --batch_size 4         # Jittor MPI data parallel

The base model never gets a gradient. Its final-normed hidden states are computed once per
batch, or, with --cache_hidden (the default), once for the whole data set and kept on disk in
fp16, memory-mapped (hidden_cache.py): every epoch after the first then costs only the heads.

The best checkpoint is the lowest validation hard-CE loss; --early_stop N ends a run after N
evaluations without a new best.

Data parallel: under `mpirun`, Jittor's optimizer all-reduces (averages) every gradient in
`backward` (jittor/optim.py: `g.mpi_all_reduce("mean")`) and broadcasts rank 0's parameters at
the first step. Each rank takes its slice of every global batch; the loss is normalised by the
target count of the whole global batch (and multiplied by world_size to undo the mean), so N
ranks compute exactly the gradient one process computes on the same global batch of
batch_size x gradient_accumulation_steps x world_size samples. Only rank 0 writes files.
"""
import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

import medusa.runtime.options as options
from medusa.data import samples as data
from medusa.heads.families import HeadConfig, build_heads
from medusa.heads.io import save_heads, start_from
from medusa.model import weights
from medusa.runtime import locks
from medusa.runtime.backend import collectives, default_compute_dtype, interrupts_deferred, jt, use_device
from medusa.runtime.errors import Interrupted, NonFiniteError, UsageError
from medusa.runtime.files import atomic_write, naming
from medusa.training import hidden_cache, losses, state
from medusa.training.args import SPLIT_NAME, TrainArgs, base_source, split_file, token_data
from medusa.training.optim import AdamW, lr_at


def _rss_bytes():
    """This process's resident memory (Linux /proc), None where it cannot be read."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


_after_gc = {"rss": None}


def release_cached_memory():
    """On the CPU, hand Jittor's cached blocks back once the process has doubled in size since
    the last time. Every batch has its own number of rows, so its [K, rows, V] logits and their
    gradients need new block sizes, and the allocator keeps the old ones. Measured on the 2-core
    CI machine (24 GiB), training SmolLM2 rnn heads (V = 49,152, ~1,200 rows a batch): RSS went
    3.5 -> 15.4 GB in 14 steps, and a run was OOM-killed at 24 GB after 59 steps. jt.gc() after
    every step held it at 1.6 GB but made steps ~1.6x slower (freed blocks are faulted in again),
    hence only on doubling. The GPU keeps its cache (139 GB on the H200; reallocating costs more)."""
    if jt.flags.use_cuda:
        return
    rss, after = _rss_bytes(), _after_gc["rss"]
    if rss is None or after is None or rss > 2 * after:
        jt.gc()
        _after_gc["rss"] = _rss_bytes()


class Trainer:
    """One training run of TrainArgs: the frozen base model, the heads, their optimizer and the loop."""

    def __init__(self, args: TrainArgs):
        use_device(args.device)
        self.args, self.rank, self.world = args, jt.rank, jt.world_size
        # one writer per run folder, refused before anything loads (released at the end of fit)
        self.lock = locks.hold_folder(args.out_dir(), "--output_dir") if self.rank == 0 else None
        jt.set_global_seed(args.seed, different_seed_for_mpi=False)
        dtype = args.dtype or default_compute_dtype()
        src, tok_dir = base_source(args, dtype)
        self.base_src = src
        self.model = weights.load_model(src, dtype)
        self.samples = samples = self._load_data(args, tok_dir)
        kept = data.read_split(split_file(args.split_from)) if args.split_from else None
        self.train_set, self.val_set = data.train_val_split(list(range(len(samples))), args.val_ratio, args.seed,
                                                            self.groups, kept)
        cfg = self.model.config
        self.heads = build_heads(HeadConfig(
            family=args.family, num_heads=args.medusa_num_heads, num_layers=args.medusa_num_layers,
            hidden_size=cfg.hidden_size, vocab_size=cfg.output_size, vocab=cfg.vocab_id, share_lm_head=args.share_lm_head,
            moe_num_experts=args.moe_num_experts, moe_top_k=args.moe_top_k, prefix_layer=args.prefix_layer))
        self.heads.init_from_base(self.model.lm_head_t())
        if args.init_heads:
            start_from(self.heads, args.init_heads)
        self.opt = AdamW(self.heads.parameters(), args.lr, weight_decay=args.weight_decay)
        self.cache_path = self._cache_file(src) if args.cache_hidden else None
        self.hidden = (hidden_cache.load_or_build(self.model, samples, self.cache_path, self.pad_id)
                       if args.cache_hidden else None)
        self.K = args.medusa_num_heads
        self.lambdas = args.loss_decay ** np.arange(self.K)
        self.global_batch = args.batch_size * args.gradient_accumulation_steps * self.world
        self.steps_per_epoch = len(self.train_set) // self.global_batch
        if self.steps_per_epoch == 0:
            raise UsageError(f"{len(self.train_set)} training samples < one global batch of {self.global_batch} "
                             f"(batch_size x gradient_accumulation_steps x world_size)")
        self.total_steps = args.epochs * self.steps_per_epoch          # the schedule's length
        self.stop_at = min(args.max_steps or self.total_steps, self.total_steps)
        self.step, self.best, self.since_best = 0, float("inf"), 0

    def _load_data(self, args, tok_dir):
        """The samples; sets pad_id, report, sampled (replies sampled at T > 0) and groups (the
        prompt of each sample, for the train/val split; None for chat data)."""
        if token_data(args):                            # token samples: no tokenizer needed
            token = data.load_token_samples(args.data_path, args.max_length)
            self.pad_id = int(token.meta.get("pad_id", 0))
            self.report = data.LoadReport(str(args.data_path), total=len(token.samples), kept=len(token.samples))
            self.sampled, self.groups = int((token.temperature > 0).sum()), token.groups
            return token.samples
        tok = weights.load_tokenizer(tok_dir)
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        samples, self.report = data.load_samples(args.data_path, tok, args.max_length, args.template,
                                                 cache_dir=Path(args.cache_dir) / "datasets")
        self.sampled, self.groups = 0, None
        return samples

    def _cache_file(self, src):
        a = self.args
        key = hidden_cache.cache_key(a.data_path, src, a.max_length, a.template, self.model.dtype)
        return Path(a.cache_dir) / key

    # -- data
    def hiddens_of(self, idx):
        if self.hidden is not None:
            return [self.hidden[i] for i in idx]
        return hidden_cache.base_hidden(self.model, [self.samples[i] for i in idx], self.pad_id)

    def global_batch_of(self, step):
        """The sample indices of global step `step`: one slice of the epoch's seeded shuffle."""
        epoch, i = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng(self.args.seed + epoch).permutation(self.train_set)
        return order[i * self.global_batch:(i + 1) * self.global_batch]

    def micro_batches(self, step):
        """This rank's micro-batches (lists of sample indices) of global step `step`."""
        glob, b = self.global_batch_of(step), self.args.batch_size
        per_micro = b * self.world
        return [glob[j:j + per_micro][self.rank * b:(self.rank + 1) * b] for j in range(0, len(glob), per_micro)]

    def target_counts(self, step):
        """Targets per head in the whole global batch of `step` (every rank computes the same)."""
        return losses.count_targets([self.samples[j] for j in self.global_batch_of(step)], self.K, self.model.vocab)

    def targets_outside_vocab(self) -> int:
        return losses.targets_outside_vocab(self.samples, self.K, self.model.vocab)

    # -- one step
    def forward(self, idx, soft=False):
        """-> (loss per head [K] Var: hard CE sums, or soft CE sums when `soft`; aux; hit1; hit5;
        counts; hard CE sums [K] Var)."""
        hiddens = self.hiddens_of(idx)
        states = hiddens
        if self.heads.prefix is not None:          # Hydra++'s prefix layer reads whole sequences first
            states = self.heads.prefix(losses.padded_states(hiddens))[0]
        h, drafted, targets, valid, (bi, ti) = losses.flat_rows([self.samples[i] for i in idx], states, self.K,
                                                         self.pad_id, self.model.vocab)
        teacher = losses.teacher_probs(self.model, hiddens, bi, ti, valid) if soft else None
        logits, aux = self.heads(h, drafted, self.model.lm_head_t(), self.model.embed_weight(), prefixed=True)
        nll, hit1, hit5, soft_ce = losses.head_losses(logits[:, 0], targets, valid, teacher)
        return (soft_ce if soft else nll), aux, hit1, hit5, valid.sum(-1), nll

    def train_step(self, totals):
        a = self.args
        counts = np.maximum(self.target_counts(self.step), 1)
        scale = jt.array((self.lambdas / counts * self.world).astype(np.float32))
        for idx in self.micro_batches(self.step):
            objective, aux, hit1, hit5, n, nll = self.forward(idx, soft=a.loss == "soft")
            loss = (objective * scale).sum() + aux.sum() * (a.aux_loss_weight * self.world / a.gradient_accumulation_steps)
            nll, aux_sum = nll.numpy(), float(aux.sum().item())
            if not np.isfinite([*nll, aux_sum]).all():       # before the optimizer step: the heads stay as they were
                raise self.nonfinite("training loss", nll, idx, self.step + 1)
            self.opt.backward(loss)
            totals.add(nll, hit1, hit5, n)
            totals.aux += aux_sum / a.gradient_accumulation_steps
        totals.steps += 1
        if a.max_grad_norm > 0:
            self.opt.clip_grad_norm(a.max_grad_norm)
        self.opt.lr = lr_at(self.step, self.total_steps, a.lr, a.warmup_ratio)
        self.opt.step()
        # Jittor is lazy: run this step's all-reduces now, on every rank, so that no rank waits
        # in a collective that another rank only reaches later (or never, at exit).
        jt.sync_all()
        release_cached_memory()
        self.step += 1

    def evaluate(self):
        return self.evaluate_on(self.val_set)

    def evaluate_on(self, indices):
        """Metrics of the heads on the samples `indices` (split across ranks, no gradient)."""
        totals = losses.Totals(self.K)
        mine = list(indices)[self.rank::self.world]
        with jt.no_grad():
            for j in range(0, len(mine), self.args.batch_size):
                nll, _, hit1, hit5, n, _ = self.forward(mine[j:j + self.args.batch_size])
                totals.add(nll.numpy(), hit1, hit5, n)
                release_cached_memory()
        return totals.metrics(self.lambdas)

    # -- files (rank 0 only)
    def log(self, record):
        path = self.args.out_dir() / "metrics.jsonl"
        if self.rank == 0:
            with naming(path), open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def save(self, name):
        if self.rank != 0:
            return
        for param, p in self.heads.named_parameters():       # never save heads a NaN reached
            if not np.isfinite(p.numpy()).all():
                raise self.nonfinite(f"head parameter {param}", [np.nan], [], self.step)
        save_heads(self.heads, self.args.out_dir() / name)

    def save_state(self):
        """The run's resumable state (state.write_state), last.jtr beside it; rank 0 only."""
        if self.rank != 0:
            return
        self.save("last.jtr")
        state.write_state(self.args.out_dir() / state.STATE_NAME, self.heads, self.opt,
                    dict(step=self.step, best=self.best, since_best=self.since_best), self.args)

    def load_state(self):
        """Continue from the saved state: refused when a setting that shapes the run differs."""
        out = self.args.out_dir()
        saved = state.read_state(out / state.STATE_NAME, self.args, self.heads, self.opt)
        self.step, self.best, self.since_best = saved
        if self.rank == 0:
            state.drop_metrics_after(out / "metrics.jsonl", self.step)

    # -- the loop
    def fit(self):
        """Train to the end (or the early stop); -> the best score. Releases the run folder's lock."""
        try:
            return self._fit()
        finally:
            if self.lock is not None:
                self.lock.release()

    def _fit(self):
        a, out = self.args, self.args.out_dir()
        if a.resume:
            self.load_state()
        elif self.rank == 0:
            if (out / state.STATE_NAME).is_file():
                raise UsageError(f"--output_dir {out} holds a run already: pass --resume to continue it "
                                 "or choose another --output_dir")
            out.mkdir(parents=True, exist_ok=True)
            atomic_write(out / "train_args.json", json.dumps(
                dict(dataclasses.asdict(a), world_size=self.world, **collectives(), global_batch=self.global_batch,
                     samples=self.report.kept, skipped=dict(self.report.skipped), sampled_replies=self.sampled,
                     train_samples=len(self.train_set), val_samples=len(self.val_set),
                     targets_outside_vocab=self.targets_outside_vocab(), options=options.as_dict()), indent=2))
            if self.groups is not None:
                data.save_split(out / SPLIT_NAME, self.groups, self.train_set, self.val_set)
        self.use_tf32()
        bar = tqdm(total=self.stop_at, initial=self.step, desc=f"train {a.family}", disable=self.rank != 0)
        totals, t0 = losses.Totals(self.K), time.time()
        with interrupts_deferred() as stop, bar:          # the bar ends its line before an error prints
            while self.step < self.stop_at and not self.early_stopped():
                self.train_step(totals)
                bar.update(1)
                epoch_end = self.step % self.steps_per_epoch == 0 or self.step == self.stop_at
                if self.step % 10 == 0 or epoch_end:
                    record = dict(split="train", step=self.step, lr=self.opt.lr, aux=totals.aux / totals.steps,
                                  seconds=round(time.time() - t0, 1), **totals.metrics(self.lambdas))
                    bar.set_postfix(loss=f"{record['loss']:.3f}", top1_0=f"{record['head0_top1']:.3f}")
                    self.log(record)
                    totals = losses.Totals(self.K)
                if epoch_end:
                    self.end_of_epoch()
                elif stop.requested or (a.save_every and self.step % a.save_every == 0):
                    self.save_state()
                if stop.requested:
                    raise Interrupted(f"interrupted ({stop.requested}) after optimizer step {self.step}: the state "
                                      f"is saved in {out / state.STATE_NAME}; run the same command with --resume "
                                      "to continue")
        return self.best

    def use_tf32(self) -> bool:
        """TF32 for the heads' matmuls (--tf32, a GPU, cached base states): the shared lm_head
        projection of K heads x the batch's rows dominates a step, and in fp32 it runs on the
        CUDA cores. Jittor reads the flag when a matmul runs, so the states cached before stay
        full fp32; without a cache they are computed each step and the flag stays off."""
        on = bool(self.args.tf32 and jt.flags.use_cuda and self.hidden is not None)
        jt.flags.use_tensorcore = int(on)
        return on

    def early_stopped(self) -> bool:
        return bool(self.args.early_stop) and self.since_best >= self.args.early_stop

    def end_of_epoch(self):
        val = self.evaluate() if self.val_set else None
        if val is not None and not np.isfinite(list(val.values())).all():
            raise self.nonfinite("validation loss", [val["loss"]], self.val_set, self.step)
        if val is not None:
            self.log(dict(split="val", step=self.step, epoch=self.step / self.steps_per_epoch, **val))
        score = val["loss"] if val is not None else -self.step
        if score < self.best:
            self.best, self.since_best = score, 0
            self.save("best.jtr")
        else:
            self.since_best += 1
        if self.early_stopped() and self.step < self.stop_at:
            self.log(dict(split="early_stop", step=self.step, best=self.best, evaluations_without_best=self.since_best))
        self.save_state()

    # -- non-finite values
    def nonfinite(self, what, values, indices, step) -> NonFiniteError:
        """The error of a NaN/inf `what` (its `values`) at optimizer step `step` (1-based), on the
        samples `indices`: where it happened, whether the base's states or the heads caused it,
        and that nothing was saved from it."""
        a, kept = self.args, self.args.out_dir() / state.STATE_NAME
        value = next(float(v) for v in values if not np.isfinite(v))
        sample = self.nonfinite_input(indices)
        if sample is not None:
            where = (f"the hidden-state cache {self.cache_path} (delete that folder to rebuild it) or "
                     if self.hidden is not None else "")
            cause = (f"the base model's hidden states of sample {sample} are not finite: check {where}the base "
                     f"weights {self.base_src}")
        else:
            cause = (f"the heads diverged on finite inputs: lower --lr (now {a.lr:g}) or --max_grad_norm "
                     f"(now {a.max_grad_norm:g})")
        saved = f"the last good state {kept} is kept" if kept.is_file() else "no state was saved before"
        epoch = (max(step, 1) - 1) // self.steps_per_epoch + 1
        return NonFiniteError(f"{what} is {value} at step {step} of {self.stop_at} (epoch {epoch} of {a.epochs}): "
                              f"{cause}; training stopped and saved nothing from it ({saved})")

    def nonfinite_input(self, indices):
        """The first sample of `indices` whose base hidden states hold NaN or inf, or None."""
        for i in indices:
            if self.hidden is not None:
                h = self.hidden[i]
            else:
                h = hidden_cache.base_hidden(self.model, [self.samples[i]], self.pad_id).numpy()[0]
            if not np.isfinite(h).all():
                return int(i)
        return None
