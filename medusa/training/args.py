"""The training settings: TrainArgs (every flag of `medusa train`), the published recipes a
--preset fills in, and the checks of the flags, made before the base model loads.

Data: chat JSON(L) rendered with the tokenizer's chat template (data.load_samples), or token
samples (.npz, data.save_token_samples: the exact tokens the base model wrote when distilled,
split into train/val by prompt), which need no tokenizer.

A --preset (PRESETS) sets each of its flags that is not on the command line (cli/train.py). A run
saves its settings (train_args.json, last_state.npz); --resume refuses settings that differ, all
but RESUME_FREE, and saved_args reads settings saved under an older name.
"""
import dataclasses
from dataclasses import field
from pathlib import Path

from medusa.app.settings import BaseModelArgs
from medusa.data import samples as data
from medusa.heads.io import read_config
from medusa.model import weights
from medusa.runtime.errors import UsageError
from medusa.runtime.files import PACKAGE_DIR

MOE_ONLY = ("moe_num_experts", "moe_top_k", "aux_loss_weight")
# flags that may differ between a run and its --resume (they do not change what is computed)
RESUME_FREE = ("resume", "save_every", "max_steps", "device", "cache_dir", "cache_hidden", "output_dir", "early_stop")
# settings saved under an older name (old -> new): a run saved before the rename still resumes
RENAMED_KEYS = {"base_dtype": "dtype"}
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
    if not 0 <= args.seed < 2 ** 32:
        raise UsageError(f"--seed must be in [0, 2^32), got {args.seed}")
    if args.loss not in LOSSES:
        raise UsageError(f"--loss {args.loss!r}: choose one of {', '.join(LOSSES)}")
    if args.early_stop < 0:
        raise UsageError(f"--early_stop must be >= 0 (0 = never), got {args.early_stop}")
    if args.preset and args.preset not in PRESETS:
        raise UsageError(f"--preset {args.preset!r}: unknown; known: {', '.join(PRESETS)}")
    if args.init_heads:
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
