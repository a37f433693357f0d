"""Training draft heads on a frozen base model: one trainer for every head family.

train_ddp.py (medusa), train_rnn.py (rnn) and train_moe.py (moe) only pick the family and call
`main`. References: FasterDecoding/Medusa `train_legacy.py` (loss = sum_k lambda^k CE_k with
lambda = 0.8, head k at position t learns token t+k+2) and nanoGPT's `train.py` (the loop:
warmup + cosine schedule, gradient accumulation, clipping, resumable checkpoints).

    python train_ddp.py --epochs 2                          # heads for the embedded SmolLM2
    mpirun -np 2 python train_ddp.py --batch_size 4         # Jittor MPI data parallel

The base model never gets a gradient. Its final-normed hidden states are computed once per
batch, or, with --cache_hidden (the default), once for the whole data set and kept on disk in
fp16, memory-mapped (hidden_cache.py): every epoch after the first then costs only the heads.

Data: chat JSON(L) rendered with the tokenizer's chat template (data.load_samples), or token
samples (.npz, data.save_token_samples: the exact tokens the base model wrote when distilled,
split into train/val by prompt), which need no tokenizer.

Loss (--loss): `hard` is Medusa's cross-entropy to the data's next tokens; `soft` is Hydra++'s
teacher loss, the cross-entropy to the base model's whole distribution at the same position
(softmax of the base lm_head on the base hidden state that predicts that token), which also
teaches the heads the base's second and third choices, what a tree's other branches need.
Both report the same validation metrics (hard CE, top-1, top-5), so runs compare directly.
The best checkpoint is the lowest validation hard-CE loss; --early_stop N ends a run after N
evaluations without a new best. --preset fills in a published recipe (PRESETS) for every flag
not given on the command line.
Only the positions where some head has a target (the assistant tokens, see data.head_targets)
are fed to the heads, as one flat row list: the [rows, H] x [H, V] vocab projections dominate the
cost and every family is position-wise, so the prompt and padding positions would be waste.

Data parallel: under `mpirun`, Jittor's optimizer all-reduces (averages) every gradient in
`backward` (jittor/optim.py: `g.mpi_all_reduce("mean")`) and broadcasts rank 0's parameters at
the first step. Each rank takes its slice of every global batch; the loss is normalised by the
target count of the whole global batch (and multiplied by world_size to undo the mean), so N
ranks compute exactly the gradient one process computes on the same global batch of
batch_size x gradient_accumulation_steps x world_size samples. Only rank 0 writes files.
"""
import dataclasses
import io
import json
import os
import time
from dataclasses import field
from pathlib import Path

import numpy as np

import medusa.runtime.options as options
from medusa.app.settings import BaseModelArgs
from medusa.data import samples as data
from medusa.heads.families import HeadConfig, build_heads
from medusa.heads.io import save_heads
from medusa.model import weights
from medusa.model.transformer import matmul
from medusa.runtime.backend import (
    collectives,
    default_compute_dtype,
    interrupts_deferred,
    jt,
    use_device,
)
from medusa.runtime.errors import Interrupted, UsageError
from medusa.runtime.files import PACKAGE_DIR, atomic_write
from medusa.training import hidden_cache
from medusa.training.optim import AdamW, lr_at

MOE_ONLY = ("moe_num_experts", "moe_top_k", "aux_loss_weight")
# flags that may differ between a run and its --resume (they do not change what is computed)
RESUME_FREE = ("resume", "save_every", "max_steps", "device", "cache_dir", "cache_hidden", "output_dir", "early_stop")
# settings saved under an older name (old -> new): a run saved before the rename still resumes
RENAMED_KEYS = {"base_dtype": "dtype"}
STATE_NAME = "last_state.npz"
SPLIT_NAME = "split.json"            # the prompt ids a run trained and validated on
SHIPPED_DATA = PACKAGE_DIR / "trained" / "smollm2_selfdistill.jsonl"   # package data
LOSSES = ("hard", "soft")
# Published recipes; a preset sets each of these unless the flag is on the command line.
PRESETS = {
    # FasterDecoding/Medusa (Medusa-1 heads on a frozen base): lr 1e-3, cosine, 10 % warmup,
    # no weight decay, 8 samples x 4 accumulation, 2 epochs.
    "medusa1": dict(lr=1e-3, warmup_ratio=0.1, weight_decay=0.0, batch_size=8, gradient_accumulation_steps=4,
                    epochs=2),
    # A fairness configuration used to compare against EAGLE-3: lr 1e-4, batch 1,
    # 4 accumulation, warmup 0.015, gradient norm 0.5, 10 epochs.
    "seed_fair": dict(lr=1e-4, batch_size=1, gradient_accumulation_steps=4, warmup_ratio=0.015,
                      max_grad_norm=0.5, epochs=10),
}


def _flag(default, text):
    return field(default=default, metadata={"help": text})


@dataclasses.dataclass
class TrainArgs(BaseModelArgs):
    """The base model (BaseModelArgs: --base_model_path, --jittor_base_weights, --device, --dtype,
    the same flags as every command) and the training flags. Every field but `family` is a flag;
    the MoE ones (MOE_ONLY) only for the moe family. Validated when made (check_args)."""
    data_path: str = _flag(str(SHIPPED_DATA), "conversations, JSON or JSONL: records with 'conversations' "
                           "[{from, value}] (ShareGPT) or 'messages' [{role, content}]; or token samples (.npz)")
    output_dir: str = _flag("", "where checkpoints go; empty = checkpoints/<family>")
    medusa_num_heads: int = _flag(4, "draft heads K (head k predicts token t+k+2)")
    medusa_num_layers: int = _flag(1, "ResBlocks (moe: mixture layers) per head")
    share_lm_head: bool = _flag(True, "project with the frozen base lm_head (small heads) instead of one vocab "
                                      "matrix per head")
    prefix_layer: bool = _flag(False, "Hydra++'s prefix attention: one decoder layer over the base states that "
                                      "every head reads")
    init_heads: str = _flag("", "start from these heads (.jtr with its config; the same head flags, a prefix "
                                "layer may be new)")
    moe_num_experts: int = _flag(4, "experts per mixture layer")
    moe_top_k: int = _flag(2, "experts mixed per token (== experts: soft routing)")
    aux_loss_weight: float = _flag(0.01, "coefficient of the MoE load-balancing loss")
    epochs: int = _flag(3, "passes over the training split")
    batch_size: int = _flag(8, "samples per rank per micro-batch")
    gradient_accumulation_steps: int = _flag(1, "micro-batches per optimizer step")
    lr: float = _flag(1e-3, "peak learning rate (Medusa's default for 1-layer heads)")
    warmup_ratio: float = _flag(0.05, "fraction of the steps with a linear warm-up; cosine decay to 0 after it")
    max_length: int = _flag(1024, "tokens per sample (longer ones are truncated)")
    seed: int = _flag(42, "seed of the head init, the train/val split and the shuffling")
    loss_decay: float = _flag(0.8, "lambda: head k's cross-entropy is weighted lambda^k")
    weight_decay: float = _flag(0.0, "AdamW decoupled weight decay")
    max_grad_norm: float = _flag(1.0, "clip the global gradient norm to this; 0 = no clipping")
    val_ratio: float = _flag(0.1, "fraction of the samples held out for validation")
    split_from: str = _flag("", "a previous run's split.json (its output_dir has one): its train and val prompts "
                                "stay on their side and only new prompts are split by --val_ratio, so heads "
                                "fine-tuned (--init_heads) on grown token samples never train on the val prompts "
                                "of the run they start from")
    template: str = _flag("tokenizer", "chat template: tokenizer (the model's own) or vicuna")
    cache_hidden: bool = _flag(True, "compute the base hidden states once and cache them on disk (fp16 .npz)")
    cache_dir: str = _flag("cache/hidden", "where the cached hidden states (and the tokenized data, as Arrow) go")
    resume: bool = _flag(False, "continue from output_dir/last_state.npz (the settings that shape the run must "
                                "match)")
    save_every: int = _flag(50, "save the training state every N optimizer steps (and at each epoch end and at "
                                "Ctrl-C); 0 = epoch ends only")
    max_steps: int = _flag(0, "stop (and save) after this many optimizer steps; 0 = all epochs")
    preset: str = _flag("", "a published recipe for the flags not given on the command line: "
                            + ", ".join(PRESETS) + " (empty = none)")
    loss: str = _flag("hard", "hard: CE to the data's tokens; soft: CE to the base model's distribution "
                              "(Hydra++ teacher loss)")
    early_stop: int = _flag(2, "stop after this many evaluations (epoch ends) without a lower validation loss; "
                               "0 = never")
    tf32: bool = _flag(True, "on a GPU, the heads' fp32 matmuls run on TF32 tensor cores (jt.flags.use_tensorcore "
                             "= 1) once the base hidden states are cached (they are computed in full fp32 first); "
                             "--no_tf32: fp32 throughout")
    family: str = "medusa"                  # set by the command (--head_family or the train_*.py script), not a flag

    def __post_init__(self):
        super().__post_init__()
        check_args(self)

    def out_dir(self) -> Path:
        return Path(self.output_dir or f"checkpoints/{self.family}")


# ---------------------------------------------------------------- batches and loss
def labels(ids, loss_mask, num_heads, vocab=None):
    """Head targets as logit rows [K, B, T] and their validity: data.head_targets, mapped through
    a reduced vocabulary (model/transformer.py's VocabMap, an orig2draft map) with the targets outside it
    masked out."""
    targets, valid = data.head_targets(ids, loss_mask, num_heads)
    if vocab is None or not vocab.reduced:
        return targets, valid
    rows = vocab.rows(targets)
    return np.maximum(rows, 0).astype(targets.dtype), valid & (rows >= 0)


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


def padded_states(hiddens):
    """Per-sample base states [T_i, H] (or one jt.Var [B, T, H]) -> jt.Var [B, T, H] fp32,
    right-padded with zeros as data.collate pads the ids (causal layers never read the pads)."""
    if isinstance(hiddens, jt.Var):
        return hiddens.float32()
    T = max(len(x) for x in hiddens)
    out = np.zeros((len(hiddens), T, hiddens[0].shape[-1]), np.float32)
    for b, x in enumerate(hiddens):
        out[b, :len(x)] = x
    return jt.array(out)


def flat_rows(samples, hiddens, num_heads, pad_id, vocab=None):
    """One micro-batch as the flat rows the heads see.

    hiddens: per-sample [T_i, H] arrays (or one jt.Var [B, T, H]). Returns (hidden [1, N, H],
    drafted tokens [1, N, K] (tokens[..., k] = token t+k+1, what rnn heads read, as embedding
    rows), targets [K, N] (logit rows), valid [K, N]) over the N positions where at least one
    head has a target, and where those rows are: (batch rows bi [N], positions ti [N]).
    """
    batch = data.collate(samples, pad_id)
    ids = batch["input_ids"]
    targets, valid = labels(ids, batch["loss_mask"], num_heads, vocab)
    bi, ti = np.nonzero(valid.any(0))
    B = ids.shape[0]
    drafted = data.drafted_tokens(ids, bi, ti, num_heads, pad_id)
    if vocab is not None and vocab.sliced:
        drafted = np.maximum(vocab.embedding_rows(drafted), 0).astype(drafted.dtype)
    if isinstance(hiddens, jt.Var):
        h = hiddens[jt.array(bi.astype(np.int32)), jt.array(ti.astype(np.int32))]
    else:
        h = jt.array(np.concatenate([hiddens[b][ti[bi == b]] for b in range(B)]).astype(np.float32))
    return h.float32().unsqueeze(0), jt.array(drafted[None]), targets[:, bi, ti], valid[:, bi, ti], (bi, ti)


def head_losses(logits, targets, valid, teacher=None):
    """Per-head sums over the valid rows: (nll [K] Var, top1 [K], top5 [K] numpy, soft [K] Var).

    logits [K, N, V] fp32, targets / valid [K, N] numpy; teacher [K, N, V] fp32 probabilities
    (the base model's) or None. nll is the hard cross-entropy; soft = -sum_v teacher_v log p_v
    (None without a teacher)."""
    K, N, V = logits.shape
    flat = logits.reshape(K * N, V)
    target_logit = flat[jt.arange(K * N), jt.array(targets.reshape(-1).astype(np.int32))].reshape(K, N)
    top = logits.max(-1, keepdims=True).detach()                                 # jt.nn.logsumexp overflows
    lse = (logits - top).exp().sum(-1).log() + top.squeeze(-1)                   # [K, N]
    nll = lse - target_logit
    w = jt.array(valid.astype(np.float32))
    # rank of the target = how many logits beat it (ties count for the target)
    rank = (logits.detach() > target_logit.detach().unsqueeze(-1)).int32().sum(-1).numpy()
    hit1 = ((rank < 1) * valid).sum(-1)
    hit5 = ((rank < 5) * valid).sum(-1)
    soft = None if teacher is None else ((lse - (teacher * logits).sum(-1)) * w).sum(-1)
    return (nll * w).sum(-1), hit1, hit5, soft


def teacher_positions(bi, ti, valid):
    """Where the base predicts each head target: head k's row n (sample bi[n], position ti[n])
    targets token t+k+2, which the base lm_head predicts from its hidden state at t+k+1.
    Returns (rows, positions) of the M distinct such states and index [K, N] into them
    (0 where the target is invalid)."""
    K, N = valid.shape
    pos = ti[None, :] + 1 + np.arange(K)[:, None]                       # [K, N]
    key = np.where(valid > 0, bi[None, :].astype(np.int64) * (1 << 32) + pos, -1)
    uniq, inverse = np.unique(key[key >= 0], return_inverse=True)
    index = np.zeros((K, N), np.int64)
    index[key >= 0] = inverse
    return (uniq >> 32).astype(np.int64), (uniq & ((1 << 32) - 1)).astype(np.int64), index


def teacher_probs(model, hiddens, bi, ti, valid):
    """The base model's next-token distribution [K, N, V] fp32 for every head target (no gradient),
    from the same hidden states the heads read."""
    rows, positions, index = teacher_positions(bi, ti, valid)
    if isinstance(hiddens, jt.Var):
        h = hiddens[jt.array(rows.astype(np.int32)), jt.array(positions.astype(np.int32))]
    else:
        h = jt.array(np.stack([hiddens[b][p] for b, p in zip(rows, positions)]).astype(np.float32))
    with jt.no_grad():
        probs = jt.nn.softmax(matmul(h.float32(), model.lm_head_t().float32()), dim=-1)   # [M, V]
        K, N = index.shape
        return probs[jt.array(index.reshape(-1).astype(np.int32))].reshape(K, N, -1).stop_grad()


class Totals:
    """Per-head sums of loss, top-1, top-5 and target counts (all-reduced across ranks)."""

    def __init__(self, K):
        self.sums = np.zeros((4, K))
        self.aux, self.steps = 0.0, 0   # MoE balance loss summed over `steps` optimizer steps

    def add(self, nll, hit1, hit5, count):
        self.sums += np.stack([nll, hit1, hit5, count])

    def reduced(self):
        sums = self.sums
        if jt.in_mpi:
            sums = jt.array(sums.astype(np.float32)).mpi_all_reduce("add").numpy().astype(np.float64)
        return sums

    def metrics(self, lambdas):
        nll, hit1, hit5, count = self.reduced()
        n = np.maximum(count, 1)
        out = {"loss": float((lambdas * nll / n).sum()), "tokens": int(count[0])}
        for k in range(len(n)):
            out.update({f"head{k}_loss": float(nll[k] / n[k]), f"head{k}_top1": float(hit1[k] / n[k]),
                        f"head{k}_top5": float(hit5[k] / n[k])})
        return out


# ---------------------------------------------------------------- the trainer
class Trainer:
    def __init__(self, args: TrainArgs):
        use_device(args.device)
        self.args, self.rank, self.world = args, jt.rank, jt.world_size
        jt.set_global_seed(args.seed, different_seed_for_mpi=False)
        dtype = args.dtype or default_compute_dtype()
        src, tok_dir = base_source(args, dtype)
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
            from medusa.heads.io import start_from

            start_from(self.heads, args.init_heads)
        self.opt = AdamW(self.heads.parameters(), args.lr, weight_decay=args.weight_decay)
        self.hidden = (hidden_cache.load_or_build(self.model, samples, self._cache_file(src), self.pad_id)
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

    def micro_batches(self, step):
        """This rank's micro-batches (lists of sample indices) of global step `step`."""
        a = self.args
        epoch, i = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng(a.seed + epoch).permutation(self.train_set)
        glob = order[i * self.global_batch:(i + 1) * self.global_batch]
        per_micro = a.batch_size * self.world
        return [glob[j:j + per_micro][self.rank * a.batch_size:(self.rank + 1) * a.batch_size]
                for j in range(0, len(glob), per_micro)]

    def target_counts(self, step):
        """Targets per head in the whole global batch of `step` (every rank computes the same)."""
        a = self.args
        epoch, i = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng(a.seed + epoch).permutation(self.train_set)
        glob = order[i * self.global_batch:(i + 1) * self.global_batch]
        return sum(labels(s.input_ids[None], s.loss_mask[None], self.K, self.model.vocab)[1].sum((1, 2))
                   for s in (self.samples[j] for j in glob))

    def targets_outside_vocab(self) -> int:
        """Head targets a reduced vocabulary cannot express (masked out of the loss)."""
        if not self.model.vocab.reduced:
            return 0
        return int(sum(data.head_targets(s.input_ids[None], s.loss_mask[None], self.K)[1].sum()
                       - labels(s.input_ids[None], s.loss_mask[None], self.K, self.model.vocab)[1].sum()
                       for s in self.samples))

    # -- one step
    def forward(self, idx, soft=False):
        """-> (loss per head [K] Var: hard CE sums, or soft CE sums when `soft`; aux; hit1; hit5;
        counts; hard CE sums [K] Var)."""
        hiddens = self.hiddens_of(idx)
        states = hiddens
        if self.heads.prefix is not None:          # Hydra++'s prefix layer reads whole sequences first
            states = self.heads.prefix(padded_states(hiddens))[0]
        h, drafted, targets, valid, (bi, ti) = flat_rows([self.samples[i] for i in idx], states, self.K,
                                                         self.pad_id, self.model.vocab)
        teacher = teacher_probs(self.model, hiddens, bi, ti, valid) if soft else None
        logits, aux = self.heads(h, drafted, self.model.lm_head_t(), self.model.embed_weight(), prefixed=True)
        nll, hit1, hit5, soft_ce = head_losses(logits[:, 0], targets, valid, teacher)
        return (soft_ce if soft else nll), aux, hit1, hit5, valid.sum(-1), nll

    def train_step(self, totals):
        a = self.args
        counts = np.maximum(self.target_counts(self.step), 1)
        scale = jt.array((self.lambdas / counts * self.world).astype(np.float32))
        for idx in self.micro_batches(self.step):
            objective, aux, hit1, hit5, n, nll = self.forward(idx, soft=a.loss == "soft")
            loss = (objective * scale).sum() + aux.sum() * (a.aux_loss_weight * self.world / a.gradient_accumulation_steps)
            self.opt.backward(loss)
            totals.add(nll.numpy(), hit1, hit5, n)
            totals.aux += float(aux.sum().item()) / a.gradient_accumulation_steps
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
        totals = Totals(self.K)
        mine = list(indices)[self.rank::self.world]
        with jt.no_grad():
            for j in range(0, len(mine), self.args.batch_size):
                nll, _, hit1, hit5, n, _ = self.forward(mine[j:j + self.args.batch_size])
                totals.add(nll.numpy(), hit1, hit5, n)
                release_cached_memory()
        return totals.metrics(self.lambdas)

    # -- files (rank 0 only)
    def log(self, record):
        if self.rank == 0:
            with open(self.args.out_dir() / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def save(self, name):
        if self.rank == 0:
            save_heads(self.heads, self.args.out_dir() / name)

    def save_state(self):
        """Heads, optimizer moments, step and settings in one npz (numpy arrays and a JSON
        string: nothing that runs code when read), written atomically; last.jtr beside it."""
        if self.rank != 0:
            return
        self.save("last.jtr")
        opt = self.opt.state()
        meta = {"step": self.step, "best": self.best, "since_best": self.since_best, "optimizer_steps": opt["steps"],
                "args": dataclasses.asdict(self.args), "head_config": self.heads.config.to_dict()}
        arrays = {f"heads/{name}": p.numpy() for name, p in self.heads.named_parameters()}
        arrays.update({f"m/{i}": m for i, m in enumerate(opt["m"])})
        arrays.update({f"v/{i}": v for i, v in enumerate(opt["v"])})
        buf = io.BytesIO()
        np.savez(buf, meta=np.array(json.dumps(meta)), **arrays)
        atomic_write(self.args.out_dir() / STATE_NAME, buf.getvalue())

    def load_state(self):
        """Continue from the saved state: refused when a setting that shapes the run differs."""
        out = self.args.out_dir()
        path = out / STATE_NAME
        if not path.is_file():
            raise UsageError(f"--resume: nothing to resume in {out} (no {STATE_NAME}; a run saves one every "
                             "--save_every steps, at each epoch end and at Ctrl-C)")
        try:
            with np.load(path, allow_pickle=False) as f:   # object arrays (pickles) are refused
                arrays = {k: f[k] for k in f.files}
            meta = json.loads(str(arrays.pop("meta")))
        except (OSError, ValueError, KeyError) as e:
            raise UsageError(f"--resume: cannot read {path}: {e}") from e
        saved, now = saved_args(meta["args"]), dataclasses.asdict(self.args)
        changed = sorted(k for k in set(saved) | set(now) if k not in RESUME_FREE and saved.get(k) != now.get(k))
        if changed:
            raise UsageError(f"--resume: {path} was saved with other settings: " + ", ".join(
                f"--{k} {saved.get(k)!r} (now {now.get(k)!r})" for k in changed) + "; resume with the saved ones "
                "or start a new --output_dir")
        if meta["head_config"] != self.heads.config.to_dict():
            raise UsageError(f"--resume: {path} holds heads {meta['head_config']}, this base model needs "
                             f"{self.heads.config.to_dict()}")
        for name, p in self.heads.named_parameters():
            p.assign(jt.array(arrays[f"heads/{name}"]))
        n = len([k for k in arrays if k.startswith("m/")])
        self.opt.load({"steps": meta["optimizer_steps"], "m": [arrays[f"m/{i}"] for i in range(n)],
                       "v": [arrays[f"v/{i}"] for i in range(n)]})
        self.step, self.best, self.since_best = meta["step"], meta["best"], meta.get("since_best", 0)
        self._drop_metrics_after(self.step)

    def _drop_metrics_after(self, step):
        """Metrics logged after the saved step are computed again: drop them, so no step repeats."""
        path = self.args.out_dir() / "metrics.jsonl"
        if self.rank == 0 and path.is_file():
            kept = [r for _, r in data.read_located(path, partial_tail="skip") if r.get("step", 0) <= step]
            atomic_write(path, "".join(json.dumps(r) + "\n" for r in kept))

    # -- the loop
    def fit(self):
        from tqdm import tqdm


        a, out = self.args, self.args.out_dir()
        if a.resume:
            self.load_state()
        elif self.rank == 0:
            if (out / STATE_NAME).is_file():
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
        totals, t0 = Totals(self.K), time.time()
        with interrupts_deferred() as stop:
            while self.step < self.stop_at and not self.early_stopped():
                self.train_step(totals)
                bar.update(1)
                epoch_end = self.step % self.steps_per_epoch == 0 or self.step == self.stop_at
                if self.step % 10 == 0 or epoch_end:
                    record = dict(split="train", step=self.step, lr=self.opt.lr, aux=totals.aux / totals.steps,
                                  seconds=round(time.time() - t0, 1), **totals.metrics(self.lambdas))
                    bar.set_postfix(loss=f"{record['loss']:.3f}", top1_0=f"{record['head0_top1']:.3f}")
                    self.log(record)
                    totals = Totals(self.K)
                if epoch_end:
                    self.end_of_epoch()
                elif stop.requested or (a.save_every and self.step % a.save_every == 0):
                    self.save_state()
                if stop.requested:
                    bar.close()
                    raise Interrupted(f"interrupted ({stop.requested}) after optimizer step {self.step}: the state "
                                      f"is saved in {out / STATE_NAME}; run the same command with --resume to continue")
        bar.close()
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


# ---------------------------------------------------------------- flags
def split_file(value) -> Path:
    """--split_from: a split file, or a run's output_dir holding one."""
    path = Path(value)
    return path / SPLIT_NAME if path.is_dir() else path


def token_data(args: TrainArgs) -> bool:
    """--data_path holds token samples (.npz, data.save_token_samples), not chat records."""
    return str(args.data_path).endswith(".npz")


def base_source(args: TrainArgs, dtype):
    """(weights source, tokenizer folder or None) of the base model flags, resolved as every
    command resolves them (weights.resolve_model: the embedded default converted on first use, a
    .gguf converted once, a .pkl with its tokenizer beside it). Token samples need no tokenizer:
    a given base is then read as it is (a .gguf directly, a .pkl without tokenizer files beside
    it) and nothing is converted; only the embedded default still is."""
    if token_data(args) and not args.is_default_model:
        return Path(args.jittor_base_weights or args.base_model_path), None
    return weights.resolve_model(args.base_model_path or None, args.jittor_base_weights or None, dtype)


def saved_args(saved: dict) -> dict:
    """The settings a run saved (last_state.npz, train_args.json) under today's names."""
    return {RENAMED_KEYS.get(k, k): v for k, v in saved.items()}


def check_args(args: TrainArgs):
    """What can be wrong with the flags, found before the base model loads."""
    if not Path(args.data_path).is_file():
        raise UsageError(f"--data_path {args.data_path}: no such file (make it with python -m medusa distill)")
    for flag in ("epochs", "batch_size", "gradient_accumulation_steps", "medusa_num_heads", "max_length"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    if args.save_every < 0 or args.max_steps < 0:
        raise UsageError("--save_every and --max_steps must be >= 0")
    if args.loss not in LOSSES:
        raise UsageError(f"--loss {args.loss!r}: choose one of {', '.join(LOSSES)}")
    if args.early_stop < 0:
        raise UsageError(f"--early_stop must be >= 0 (0 = never), got {args.early_stop}")
    if args.preset and args.preset not in PRESETS:
        raise UsageError(f"--preset {args.preset!r}: unknown; known: {', '.join(PRESETS)}")
    if args.init_heads:
        from medusa.heads.io import read_config

        read_config(args.init_heads)            # the file and its config beside it, or a one-line error
    if args.split_from:
        if not token_data(args):
            raise UsageError(f"--split_from {args.split_from}: needs token samples (.npz, whose prompt ids name the "
                             f"split), not the chat records in {args.data_path}")
        if not split_file(args.split_from).is_file():
            raise UsageError(f"--split_from {args.split_from}: no such file (a run writes {SPLIT_NAME} in its "
                             "--output_dir when it starts)")
        data.read_split(split_file(args.split_from))    # readable, or a one-line error before the model loads
    if token_data(args) and args.template != "tokenizer":
        raise UsageError(f"--template {args.template}: token samples ({args.data_path}) are rendered already")
    if args.lr <= 0 or not 0 <= args.warmup_ratio < 1:
        raise UsageError(f"--lr must be > 0 and --warmup_ratio in [0, 1), got {args.lr} and {args.warmup_ratio}")
