"""Benchmark: plain base decoding against Medusa on one prompt set, in one process.

    python test_medusa_benchmark.py --greedy                 # embedded SmolLM2 + shipped heads
    python test_medusa_benchmark.py --temperature 0.7 --data_path question.jsonl --data_format mt_bench

For every prompt (all turns of a multi-turn one, each decoder's own answer fed back as history)
the base model and Medusa run one after the other with the same settings, after a warm-up that
is not timed (Jittor compiles kernels on first use). Interleaving per sample keeps a drift in the
machine's load from favouring one side. `results/<name>.json` holds

    config       every resolved setting
    environment  jittor version, device, CUDA, CPU, load, git commit, date
    samples      per sample and turn: prompt; for base and medusa the text, token count, wall
                 time; for medusa the tokens accepted per step and the time per stage
    summary      `summarize(samples, greedy)`: computed only from `samples`, so anyone can redo it

and is rewritten atomically after every sample, so an interrupted run keeps what it finished and
`--resume` goes on from there. A PNG beside it shows the accepted-length histogram, per-category
speedup and the time breakdown. References: FasterDecoding/Medusa llm_judge/gen_model_answer_medusa.py
(MT-bench answers), the experiment report's wall_time_* / compression_ratio / tokens_per_second.
"""
import argparse
import dataclasses
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

from medusa.data import DataError, SkipRecord, load_prompts, normalise_record

DEFAULT_PROMPTS = Path(__file__).parent / "prompts" / "bench_prompts.jsonl"
TRAINED_DIR = Path(__file__).parent / "trained"
DEFAULT_HEADS = TRAINED_DIR / "smollm2_medusa.jtr"
RESULTS_DIR = Path("results")
DATA_FORMATS = ("auto", "jsonl", "mt_bench", "sharegpt")
# = medusa.decoding.STAT_NAMES (test_bench checks); not imported so that reading results
# (summaries, compare.py) needs no Jittor
STAGES = ("init", "medusa", "tree", "posterior", "update")
SIDES = ("base", "medusa")
# settings that may change between an interrupted run and its --resume
RESUMABLE_KEYS = ("num_samples", "resume", "output", "plot")


# ---------------------------------------------------------------- prompt sets
@dataclasses.dataclass
class BenchPrompt:
    id: object            # int or str, unique within a set
    category: str
    turns: list           # user messages, in order
    system: str = ""      # optional system message


def load_prompt_set(path, data_format="auto"):
    """BenchPrompts of a file: our JSONL ({"id", "category", "prompt"}), MT-bench
    ({"question_id", "category", "turns"}) or ShareGPT (JSON array or JSONL of {"conversations"}).
    Raises DataError naming the file and line (JSONL) or record (JSON array) of a bad entry."""
    if data_format not in DATA_FORMATS:
        raise ValueError(f"data_format must be one of {DATA_FORMATS}, got {data_format!r}")
    records = read_located(path)
    if not records:
        raise DataError(f"{path}: no records")
    if data_format == "auto":
        data_format = detect_format(path, *records[0])
    if data_format == "jsonl":
        return [BenchPrompt(p["id"], p["category"], [p["prompt"]]) for p in load_prompts(path)]
    parse = _mt_bench_prompt if data_format == "mt_bench" else _sharegpt_prompt
    prompts = [p for where, rec in records if (p := parse(f"{path}: {where}", rec)) is not None]
    if not prompts:
        raise DataError(f"{path}: no usable {data_format} records")
    ids = [p.id for p in prompts]
    if len(set(map(str, ids))) != len(ids):
        raise DataError(f"{path}: duplicate ids; every record needs its own id")
    return prompts


def read_located(path):
    """[(where, record)] of a JSON array ("record i") or JSONL file ("line n")."""
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            return [(f"record {i}", r) for i, r in enumerate(json.loads(text))]
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {e.lineno} column {e.colno}: malformed JSON: {e.msg}") from e
    located = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                located.append((f"line {lineno}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {lineno}: malformed JSON: {e.msg}") from e
    return located


def detect_format(path, where, record):
    if isinstance(record, dict):
        if "turns" in record:
            return "mt_bench"
        if "conversations" in record or "messages" in record:
            return "sharegpt"
        if "prompt" in record:
            return "jsonl"
    raise DataError(f"{path}: {where}: cannot tell the format (expected a 'turns', 'conversations', "
                    "'messages' or 'prompt' key); pass --data_format")


def _mt_bench_prompt(where, rec):
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected an object")
    qid, turns = rec.get("question_id"), rec.get("turns")
    if not isinstance(qid, (int, str)) or isinstance(qid, bool):
        raise DataError(f"{where}: 'question_id' must be an integer or string")
    if not isinstance(turns, list) or not turns or not all(isinstance(t, str) and t.strip() for t in turns):
        raise DataError(f"{where}: 'turns' must be a non-empty list of non-empty strings")
    category = rec.get("category", "mt_bench")
    if not isinstance(category, str):
        raise DataError(f"{where}: 'category' must be a string")
    return BenchPrompt(qid, category, list(turns))


# An empty or one-sided conversation is common in ShareGPT dumps: skipped, not an error.
SHAREGPT_SKIPPED = ("empty_conversation", "no_assistant_turn")


def _sharegpt_prompt(where, rec):
    try:
        messages = normalise_record(rec)
    except SkipRecord as err:
        if err.reason in SHAREGPT_SKIPPED:
            return None
        raise DataError(f"{where}: {err}") from err
    turns = [m["content"] for m in messages if m["role"] == "user"]
    if not turns:
        return None
    system = messages[0]["content"] if messages[0]["role"] == "system" else ""
    return BenchPrompt(rec.get("id", where), str(rec.get("category", "sharegpt")), turns, system)


# ---------------------------------------------------------------- summary
def summarize(samples, greedy):
    """Summary of the per-sample records (the only input, so a reader can recompute it).

    tokens_per_second = all new tokens / all wall time of that side; compression_ratio = Medusa's
    new tokens / its decoding steps; wall_time_<stage> = seconds per sample; speedup = medusa / base
    tokens per second; identical_outputs (greedy) = samples whose every turn has the same text.
    """
    summary = {"num_samples": len(samples), "num_turns": sum(len(s["turns"]) for s in samples),
               **_sides_summary(samples)}
    if "speedup" in summary:
        summary["per_category"] = _per_category(samples)
        if greedy:
            summary["identical_outputs"] = sum(_identical(s) for s in samples)
    return summary


def _sides_summary(samples):
    """{"base": ..., "medusa": ..., "speedup": ...} for the sides present in `samples`."""
    out = {}
    for side in SIDES:
        runs = [t[side] for s in samples for t in s["turns"] if side in t]
        if runs:
            out[side] = _side_summary(runs, len(samples), side == "medusa")
    if len(out) == 2:
        out["speedup"] = _ratio(out["medusa"]["tokens_per_second"], out["base"]["tokens_per_second"])
    return out


def _side_summary(runs, num_samples, medusa):
    tokens = sum(r["new_tokens"] for r in runs)
    wall = sum(r["wall_time"] for r in runs)
    out = {"new_tokens": tokens, "wall_time": wall, "tokens_per_second": _ratio(tokens, wall)}
    if medusa:
        out["steps"] = sum(r["steps"] for r in runs)
        out["compression_ratio"] = _ratio(tokens, out["steps"])
        for stage in STAGES:
            out[f"wall_time_{stage}"] = sum(r["times"][stage] for r in runs) / max(num_samples, 1)
    return out


def _per_category(samples):
    groups = {}
    for s in samples:
        groups.setdefault(s["category"], []).append(s)
    table = {}
    for category, group in sorted(groups.items()):
        sides = _sides_summary(group)
        if "speedup" in sides:
            table[category] = {"samples": len(group), "speedup": sides["speedup"],
                               "base_tokens_per_second": sides["base"]["tokens_per_second"],
                               "medusa_tokens_per_second": sides["medusa"]["tokens_per_second"],
                               "compression_ratio": sides["medusa"]["compression_ratio"]}
    return table


def _identical(sample):
    return all("base" in t and "medusa" in t and t["base"]["text"] == t["medusa"]["text"]
               for t in sample["turns"])


def _ratio(a, b):
    return a / b if b else 0.0


# ---------------------------------------------------------------- results file
def environment():
    """Where the numbers come from: software, device, CPU and its load, git commit, date."""
    from medusa.runtime import jt

    env = {"jittor": jt.__version__, "python": platform.python_version(),
           "device": "cuda" if jt.flags.use_cuda else "cpu", "cuda": bool(jt.has_cuda),
           "cpu": _cpu_name(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
           "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
           "git_commit": _git("rev-parse", "HEAD"), "git_dirty": bool(_git("status", "--porcelain", "-uno")),
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if jt.flags.use_cuda:
        env["gpu"] = _run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"])
    return env


def _cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _git(*args):
    return _run(["git", "-C", str(Path(__file__).resolve().parent), *args])


def _run(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def write_results(path, results):
    """Recompute the summary from the samples and replace `path` atomically."""
    results["summary"] = summarize(results["samples"], results["config"]["greedy"])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(dumps_compact(results))
    os.replace(tmp, path)
    return results


def dumps_compact(obj):
    """Indented JSON with lists of numbers (and lists of those, e.g. trees) on one line. A raw
    newline only occurs between JSON tokens (never inside a string), so patterns that start
    with "[\\n" touch no text."""
    text = json.dumps(obj, indent=1, ensure_ascii=False)
    for pattern in (r"\[\n[\d\s,.eE+\-]*\]", r"\[\n(?:\s*\[[^\[\]\n]*\],?\n)+\s*\]"):
        text = re.sub(pattern, lambda m: re.sub(r"\s+", "", m.group()).replace(",", ", "), text)
    return text


def start_results(path, config, resume):
    """A fresh results dict, or the one at `path` when resuming (its config must match)."""
    if not (resume and Path(path).is_file()):
        return {"config": config, "environment": environment(), "samples": [], "summary": {}}
    results = json.loads(Path(path).read_text())
    old = {k: v for k, v in results["config"].items() if k not in RESUMABLE_KEYS}
    new = {k: v for k, v in config.items() if k not in RESUMABLE_KEYS}
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if changed:
        raise ValueError(f"{path}: cannot resume with different settings: "
                         + ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in changed))
    results["config"] = config
    results.setdefault("resumed", []).append(environment())
    return results


# ---------------------------------------------------------------- running
@dataclasses.dataclass
class BenchConfig:
    greedy: bool = True                # False when a temperature is given
    temperature: float = 0.0
    top_p: float = 1.0
    sampling_mode: str = "typical"     # Medusa's acceptance when sampling: typical or sample
    posterior_threshold: float = 0.09  # typical acceptance (Medusa-2 defaults)
    posterior_alpha: float = 0.3
    base_model_path: str = ""          # "" = the embedded default SmolLM2
    jittor_base_weights: str = ""
    medusa_weights: str = ""           # "" = the shipped heads of the default model
    medusa_choices: str = "8_node"     # tree preset name or JSON file
    data_path: str = str(DEFAULT_PROMPTS)
    data_format: str = "auto"
    num_samples: int = 10              # 10 x 96 tokens: about two minutes per side on 2 CPU cores
    max_new_token: int = 96
    seed: int = 0
    base_only: bool = False
    medusa_only: bool = False
    output: str = ""                   # "" = results/<model>_<family>_<tree>_<mode>.json
    resume: bool = False
    warmup_tokens: int = 32            # per side, before timing; 0 = no warm-up
    device: str = "auto"
    dtype: str = ""                    # "" = fp32 on CPU, fp16 on GPU
    plot: bool = True

    def __post_init__(self):
        if self.base_only and self.medusa_only:
            raise ValueError("--base_only and --medusa_only exclude each other")
        if self.sampling_mode not in ("typical", "sample"):
            raise ValueError(f"sampling_mode must be typical or sample, got {self.sampling_mode!r}")
        if self.num_samples < 1 or self.max_new_token < 1:
            raise ValueError("num_samples and max_new_token must be >= 1")

    @property
    def sides(self):
        return tuple(s for s in SIDES if not (s == "base" and self.medusa_only)
                     and not (s == "medusa" and self.base_only))

    @property
    def mode_name(self):
        return "greedy" if self.greedy else f"{self.sampling_mode}_t{self.temperature:g}"


@dataclasses.dataclass
class Setup:
    """What a run decodes with, resolved from a BenchConfig."""
    model: object
    tokenizer: object
    eos_ids: tuple
    heads: object          # None with --base_only
    choices: list          # resolved tree paths (None with --base_only)
    resolved: dict         # resolved paths and settings, written into the config


def load_setup(cfg: BenchConfig) -> Setup:
    from medusa import weights
    from medusa.generate import eos_ids_of, resolve_model
    from medusa.runtime import default_compute_dtype, use_device

    device = use_device(cfg.device)
    dtype = cfg.dtype or default_compute_dtype()
    src, tok_dir = resolve_model(cfg.base_model_path or None, cfg.jittor_base_weights or None, dtype)
    model = weights.load_model(src, dtype)
    tokenizer = weights.load_tokenizer(tok_dir)
    resolved = {"model": str(src), "model_name": model_name(cfg, src), "device": device, "dtype": dtype}
    heads = choices = None
    if "medusa" in cfg.sides:
        from medusa.head_io import load_heads
        from medusa.tree import load_choices

        path = resolve_heads(cfg)
        heads = load_heads(path)
        choices = load_choices(cfg.medusa_choices, heads.config.num_heads)
        resolved.update(medusa_weights=str(path), head_config=heads.config.to_dict(), tree=choices)
    return Setup(model, tokenizer, eos_ids_of(model, tokenizer), heads, choices, resolved)


def resolve_heads(cfg: BenchConfig) -> Path:
    if cfg.medusa_weights:
        path = Path(cfg.medusa_weights)
    elif cfg.base_model_path or cfg.jittor_base_weights:
        raise ValueError("a non-default base model needs --medusa_weights (or --base_only)")
    else:
        path = DEFAULT_HEADS
    if not path.is_file():
        raise FileNotFoundError(f"no Medusa heads at {path}: train them (README, training section), "
                                "pass --medusa_weights, or run --base_only")
    return path


def model_name(cfg: BenchConfig, src) -> str:
    from medusa.weights import DEFAULT_MODEL_NAME

    if not (cfg.base_model_path or cfg.jittor_base_weights):
        return DEFAULT_MODEL_NAME
    src = Path(src)
    return src.parent.name if src.suffix == ".pkl" else src.stem if src.suffix == ".gguf" else src.name


def default_output(cfg: BenchConfig, setup: Setup) -> Path:
    family = setup.heads.config.family if setup.heads is not None else "base"
    tree = Path(cfg.medusa_choices).stem if "medusa" in cfg.sides else "none"
    name = f"{setup.resolved['model_name']}_{family}_{tree}_{cfg.mode_name}".lower()
    return RESULTS_DIR / f"{name}.json"


def decode_turn(side, setup: Setup, cfg: BenchConfig, prompt_ids, max_new_tokens, seed):
    """One reply of `side` ("base" or "medusa") -> its record. wall_time is measured around the
    whole call, prefill included, the same way for both sides."""
    start = time.perf_counter()
    if side == "base":
        from medusa.generate import generate

        out = generate(setup.model, prompt_ids, max_new_tokens, setup.eos_ids, greedy=cfg.greedy,
                       temperature=cfg.temperature or 1.0, top_p=cfg.top_p, seed=seed)
    else:
        from medusa.decoding import medusa_generate

        out = medusa_generate(setup.model, setup.heads, prompt_ids, max_new_tokens, choices=setup.choices,
                              eos_ids=setup.eos_ids, sampling=medusa_sampling(cfg, seed))
    wall = time.perf_counter() - start
    ids = [int(t) for t in out.output_ids]
    record = {"text": setup.tokenizer.decode(ids, skip_special_tokens=True), "new_tokens": len(ids),
              "wall_time": wall}
    if side == "medusa":
        record.update(steps=int(out.steps), accept_lengths=[int(a) for a in out.accept_lengths],
                      times={stage: float(out.times[stage]) for stage in STAGES})
    return record


def medusa_sampling(cfg: BenchConfig, seed):
    from medusa.decoding import Sampling

    if cfg.greedy:
        return Sampling(mode="greedy", seed=seed)
    return Sampling(mode=cfg.sampling_mode, temperature=cfg.temperature, top_p=cfg.top_p,
                    posterior_threshold=cfg.posterior_threshold, posterior_alpha=cfg.posterior_alpha,
                    seed=seed)


def chat_ids(tokenizer, messages):
    return [int(t) for t in tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                          tokenize=True, return_dict=False)]


def run_sample(setup: Setup, cfg: BenchConfig, prompt: BenchPrompt, index):
    """Every turn of one prompt for each side; each side's own replies become its history."""
    history = {side: [{"role": "system", "content": prompt.system}] if prompt.system else []
               for side in cfg.sides}
    turns = []
    for turn, user in enumerate(prompt.turns):
        record = {"prompt": user}
        for side in cfg.sides:
            history[side].append({"role": "user", "content": user})
            ids = chat_ids(setup.tokenizer, history[side])
            record[side] = decode_turn(side, setup, cfg, ids, cfg.max_new_token, cfg.seed + 1000 * index + turn)
            record[side]["prompt_tokens"] = len(ids)
            history[side].append({"role": "assistant", "content": record[side]["text"]})
        turns.append(record)
    return {"id": prompt.id, "category": prompt.category, "turns": turns}


def warm_up(setup: Setup, cfg: BenchConfig, prompt: BenchPrompt):
    """Decode once per side, untimed, so kernel compilation stays out of the measurements."""
    if cfg.warmup_tokens > 0:
        ids = chat_ids(setup.tokenizer, [{"role": "user", "content": prompt.turns[0]}])
        for side in cfg.sides:
            decode_turn(side, setup, cfg, ids, cfg.warmup_tokens, cfg.seed)


def run(cfg: BenchConfig, setup: Setup = None, progress=True):
    """Run the benchmark; returns (results dict, output path). Writes after every sample."""
    from tqdm import tqdm

    prompts = load_prompt_set(cfg.data_path, cfg.data_format)[:cfg.num_samples]
    setup = setup or load_setup(cfg)
    out = Path(cfg.output) if cfg.output else default_output(cfg, setup)
    config = {**dataclasses.asdict(cfg), **setup.resolved, "output": str(out)}
    results = start_results(out, config, cfg.resume)
    done = {str(s["id"]) for s in results["samples"]}
    todo = [(i, p) for i, p in enumerate(prompts) if str(p.id) not in done]
    if todo:
        warm_up(setup, cfg, todo[0][1])
    bar = tqdm(todo, desc=out.stem, unit="sample", disable=not progress)
    for index, prompt in bar:
        results["samples"].append(run_sample(setup, cfg, prompt, index))
        write_results(out, results)
        if "speedup" in results["summary"]:
            bar.set_postfix(speedup=f"{results['summary']['speedup']:.2f}")
    if not todo:
        write_results(out, results)
    if cfg.plot:
        plot_results(results, out.with_suffix(".png"))
    return results, out


# ---------------------------------------------------------------- plot
def plot_results(results, png):
    """Accepted-length histogram, per-category speedup and time breakdown, side by side."""
    import matplotlib

    matplotlib.use("Agg")   # files only; no display on CI machines
    import matplotlib.pyplot as plt

    summary, samples = results["summary"], results["samples"]
    fig, (ax_hist, ax_cat, ax_time) = plt.subplots(1, 3, figsize=(15, 4.2))
    accepts = [a for s in samples for t in s["turns"] if "medusa" in t for a in t["medusa"]["accept_lengths"]]
    if accepts:
        ax_hist.hist(accepts, bins=range(1, max(accepts) + 2), align="left", rwidth=0.8)
        ax_hist.set_xticks(range(1, max(accepts) + 1))
    ax_hist.set(title="tokens accepted per step", xlabel="accepted length", ylabel="steps")
    categories = summary.get("per_category", {})
    if categories:
        ax_cat.bar(list(categories), [c["speedup"] for c in categories.values()])
        ax_cat.axhline(summary["speedup"], color="k", ls="--", lw=1, label=f"all {summary['speedup']:.2f}x")
        ax_cat.axhline(1.0, color="grey", lw=0.8)
        ax_cat.legend()
        ax_cat.tick_params(axis="x", rotation=45)
    ax_cat.set(title="speedup per category", ylabel="medusa / base tokens/s")
    stages, seconds = _time_bars(summary)
    ax_time.barh(stages, seconds)
    ax_time.set(title="wall time per sample", xlabel="seconds")
    config = results["config"]
    fig.suptitle(f"{Path(config['output']).stem}  ({results['environment'].get('device')}, "
                 f"{summary['num_samples']} samples x {config['max_new_token']} tokens)")
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return png


def _time_bars(summary):
    stages, seconds = [], []
    n = max(summary["num_samples"], 1)
    if "base" in summary:
        stages.append("base (all)")
        seconds.append(summary["base"]["wall_time"] / n)
    if "medusa" in summary:
        stages.append("medusa (all)")
        seconds.append(summary["medusa"]["wall_time"] / n)
        for stage in STAGES:
            stages.append(f"medusa: {stage}")
            seconds.append(summary["medusa"][f"wall_time_{stage}"])
    return stages[::-1], seconds[::-1]


# ---------------------------------------------------------------- command line
def parse_args(argv=None) -> BenchConfig:
    d = BenchConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--greedy", action="store_true", help="argmax decoding (the default)")
    mode.add_argument("--temperature", type=float, help="sample at this temperature")
    p.add_argument("--top_p", type=float, default=d.top_p)
    p.add_argument("--sampling_mode", choices=["typical", "sample"], default=d.sampling_mode,
                   help="Medusa acceptance when sampling (typical: Medusa-2; sample: lossless)")
    p.add_argument("--posterior_threshold", type=float, default=d.posterior_threshold)
    p.add_argument("--posterior_alpha", type=float, default=d.posterior_alpha)
    p.add_argument("--base_model_path", default="", help="HF folder or .gguf (default: embedded SmolLM2)")
    p.add_argument("--jittor_base_weights", default="", help="converted .pkl (weight_convert.py)")
    p.add_argument("--medusa_weights", default="", help=f"heads .jtr (default: {DEFAULT_HEADS.name})")
    p.add_argument("--medusa_choices", default=d.medusa_choices, help="tree preset name or JSON file")
    p.add_argument("--data_path", default=d.data_path)
    p.add_argument("--data_format", choices=DATA_FORMATS, default=d.data_format)
    p.add_argument("--num_samples", type=int, default=d.num_samples)
    p.add_argument("--max_new_token", type=int, default=d.max_new_token)
    p.add_argument("--seed", type=int, default=d.seed)
    only = p.add_mutually_exclusive_group()
    only.add_argument("--base_only", action="store_true")
    only.add_argument("--medusa_only", action="store_true")
    p.add_argument("--output", default="", help="results JSON (default: results/<model>_<family>_<tree>_<mode>.json)")
    p.add_argument("--resume", action="store_true", help="continue the samples missing from --output")
    p.add_argument("--warmup_tokens", type=int, default=d.warmup_tokens)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=d.device)
    p.add_argument("--dtype", choices=["", "float16", "float32"], default=d.dtype)
    p.add_argument("--no_plot", dest="plot", action="store_false")
    args = vars(p.parse_args(argv))
    args["greedy"] = args["temperature"] is None
    args["temperature"] = args["temperature"] or 0.0
    return BenchConfig(**args)


def print_summary(summary, out=sys.stdout):
    for side in SIDES:
        if side in summary:
            s = summary[side]
            extra = f", compression {s['compression_ratio']:.2f}" if side == "medusa" else ""
            print(f"{side:>6}: {s['tokens_per_second']:.2f} tokens/s ({s['new_tokens']} tokens{extra})", file=out)
    if "speedup" in summary:
        print(f"speedup {summary['speedup']:.2f}x", file=out)
    if "identical_outputs" in summary:
        print(f"identical outputs {summary['identical_outputs']}/{summary['num_samples']}", file=out)


def main(argv=None):
    cfg = parse_args(argv)
    try:
        results, out = run(cfg)
    except KeyboardInterrupt:
        print("interrupted: finished samples are saved; rerun with --resume to continue", file=sys.stderr)
        sys.exit(130)
    print_summary(results["summary"])
    print(f"wrote {out}")
