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
    summary      `results.summarize(samples, greedy)`: computed only from `samples`, so anyone
                 can redo it

and is rewritten atomically after every sample, so an interrupted run keeps what it finished and
`--resume` goes on from there. A PNG beside it shows the accepted-length histogram, per-category
speedup and the time breakdown. Prompt sets are read by prompt_sets.py, result files written,
summarised and plotted by results.py. References: FasterDecoding/Medusa llm_judge/gen_model_answer_medusa.py
(MT-bench answers), the experiment report's wall_time_* / compression_ratio / tokens_per_second.
"""
import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

from medusa.data import chat_prompt_ids
from medusa.prompt_sets import DATA_FORMATS, DEFAULT_PROMPTS, BenchPrompt, load_prompt_set, spread_over_categories
from medusa.results import (SIDES, STAGES, environment, plot_results, print_summary, start_results,
                            write_results)

TRAINED_DIR = Path(__file__).parent / "trained"
DEFAULT_HEADS = TRAINED_DIR / "smollm2_medusa.jtr"
RESULTS_DIR = Path("results")


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
    num_samples: int = 10              # 10 x 96 tokens: 9 min on the shared 2-core CPU at load 4
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


def run_sample(setup: Setup, cfg: BenchConfig, prompt: BenchPrompt, index):
    """Every turn of one prompt for each side; each side's own replies become its history."""
    history = {side: [{"role": "system", "content": prompt.system}] if prompt.system else []
               for side in cfg.sides}
    turns = []
    for turn, user in enumerate(prompt.turns):
        record = {"prompt": user}
        for side in cfg.sides:
            history[side].append({"role": "user", "content": user})
            ids = chat_prompt_ids(setup.tokenizer, history[side])
            record[side] = decode_turn(side, setup, cfg, ids, cfg.max_new_token, cfg.seed + 1000 * index + turn)
            record[side]["prompt_tokens"] = len(ids)
            history[side].append({"role": "assistant", "content": record[side]["text"]})
        turns.append(record)
    return {"id": prompt.id, "category": prompt.category, "turns": turns}


def warm_up(setup: Setup, cfg: BenchConfig, prompt: BenchPrompt):
    """Decode once per side, untimed, so kernel compilation stays out of the measurements."""
    if cfg.warmup_tokens > 0:
        ids = chat_prompt_ids(setup.tokenizer, [{"role": "user", "content": prompt.turns[0]}])
        for side in cfg.sides:
            decode_turn(side, setup, cfg, ids, cfg.warmup_tokens, cfg.seed)


def run(cfg: BenchConfig, setup: Setup = None, progress=True):
    """Run the benchmark; returns (results dict, output path). Writes after every sample."""
    prompts = spread_over_categories(load_prompt_set(cfg.data_path, cfg.data_format), cfg.num_samples)
    setup = setup or load_setup(cfg)
    out = Path(cfg.output) if cfg.output else default_output(cfg, setup)
    config = {**dataclasses.asdict(cfg), **setup.resolved, "output": str(out)}
    results = start_results(out, config, cfg.resume)
    done = {str(s["id"]) for s in results["samples"]}
    todo = [(i, p) for i, p in enumerate(prompts) if str(p.id) not in done]
    if todo and results["samples"]:
        results.setdefault("resumed", []).append(environment())   # where the later samples ran
    if todo:
        warm_up(setup, cfg, todo[0][1])
    bar = tqdm(todo, desc=out.stem, unit="sample", disable=not progress)
    for index, prompt in bar:
        sample = run_sample(setup, cfg, prompt, index)
        if hasattr(os, "getloadavg"):
            sample["load_average_1m"] = os.getloadavg()[0]
        results["samples"].append(sample)
        write_results(out, results)
        if "speedup" in results["summary"]:
            bar.set_postfix(speedup=f"{results['summary']['speedup']:.2f}")
    if not todo:
        write_results(out, results)
    if cfg.plot:
        plot_results(results, out.with_suffix(".png"))
    return results, out


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


def main(argv=None):
    cfg = parse_args(argv)
    try:
        results, out = run(cfg)
    except KeyboardInterrupt:
        print("interrupted: finished samples are saved; rerun with --resume to continue", file=sys.stderr)
        sys.exit(130)
    print_summary(results["summary"])
    print(f"wrote {out}")
