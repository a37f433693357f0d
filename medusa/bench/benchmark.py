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
import dataclasses
import os
import time
from dataclasses import field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from medusa.app import loading
from medusa.app.results import SIDES, STAGES, environment, plot_results, start_results, write_results
from medusa.app.settings import GenerationSettings, ModelArgs
from medusa.data.prompt_sets import DATA_FORMATS, DEFAULT_PROMPTS, BenchPrompt, load_prompt_set, spread_over_categories
from medusa.data.samples import chat_prompt_ids
from medusa.runtime import locks
from medusa.runtime.errors import Interrupted, UsageError

RESULTS_DIR = Path("results")


@dataclasses.dataclass
class BenchArgs:
    data_path: str = field(default=str(DEFAULT_PROMPTS), metadata={"help": "prompt set (JSONL, MT-bench or ShareGPT)"})
    data_format: str = field(default="auto", metadata={"help": "format of --data_path", "choices": DATA_FORMATS})
    num_samples: int = field(default=10, metadata={"help": "prompts, taken round-robin over the categories"})
    base_only: bool = field(default=False, metadata={"help": "run only plain decoding"})
    medusa_only: bool = field(default=False, metadata={"help": "run only Medusa"})
    output: str = field(default="", metadata={"help": "results JSON (default: results/<model>_<family>_<tree>_<mode>.json)"})
    resume: bool = field(default=False, metadata={"help": "continue the samples missing from --output"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing --output (its samples are lost)"})
    warmup_tokens: int = field(default=32, metadata={"help": "untimed tokens per side before timing; 0 = none"})
    plot: bool = field(default=True, metadata={"help": "write a PNG beside the JSON"})

    def __post_init__(self):
        if self.base_only and self.medusa_only:
            raise UsageError("--base_only and --medusa_only exclude each other")
        if self.num_samples < 1:
            raise UsageError(f"--num_samples must be >= 1, got {self.num_samples}")
        if self.warmup_tokens < 0:
            raise UsageError(f"--warmup_tokens must be >= 0, got {self.warmup_tokens}")
        if not Path(self.data_path).is_file():
            raise UsageError(f"--data_path {self.data_path}: no such file")
        if self.resume and self.overwrite:
            raise UsageError("--resume and --overwrite exclude each other")
        if self.output:
            loading.check_writable(self.output, "--output")
            if Path(self.output).exists() and not (self.resume or self.overwrite):
                raise UsageError(f"--output {self.output} exists: pass --resume to continue it or --overwrite "
                                 "to replace it (or choose another --output)")

    @property
    def sides(self):
        return tuple(s for s in SIDES if not (s == "base" and self.medusa_only)
                     and not (s == "medusa" and self.base_only))


@dataclasses.dataclass
class Bench:
    """One benchmark's settings: the model flags, what to generate, how to run."""
    model: ModelArgs = field(default_factory=ModelArgs)
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    args: BenchArgs = field(default_factory=BenchArgs)

    def config(self) -> dict:
        """Every setting, flat (as the results file records it)."""
        return {**dataclasses.asdict(self.model), **dataclasses.asdict(self.generation),
                **dataclasses.asdict(self.args)}


def load_setup(bench: Bench, prompts=()) -> loading.Setup:
    """Plan (everything checked, the first turn of each prompt against the context), then load."""
    plan = loading.plan(bench.model, bench.generation, heads="required" if "medusa" in bench.args.sides else "none")
    for p in prompts:
        ids = chat_prompt_ids(plan.tokenizer, _history(p) + [{"role": "user", "content": p.turns[0]}])
        loading.check_prompt_fits(plan, ids, bench.generation.max_new_tokens, f"{bench.args.data_path}: prompt {p.id}")
    return loading.load(plan)


def default_output(bench: Bench, setup) -> Path:
    """results/<model>_<family>_<tree>_<mode>.json, or with -2, -3, ... when that is taken: a
    run without --output never replaces an earlier one (a fresh clone holds committed results)."""
    family = setup.heads.config.family if setup.heads is not None else "base"
    tree = setup.plan.tree_name if "medusa" in bench.args.sides else "none"
    name = f"{setup.plan.model_name}_{family}_{tree}_{bench.generation.mode_name}".lower()
    path, n = RESULTS_DIR / f"{name}.json", 1
    while path.exists():
        n += 1
        path = RESULTS_DIR / f"{name}-{n}.json"
    return path


def decode_turn(side, setup, settings: GenerationSettings, prompt_ids, max_new_tokens, seed):
    """One reply of `side` ("base" or "medusa") -> its record. wall_time is measured around the
    whole call, prefill included, the same way for both sides; both get the same Sampling."""
    sampling = settings.sampling(seed)
    start = time.perf_counter()
    if side == "base":
        from medusa.decoding.core import generate

        out = generate(setup.model, prompt_ids, max_new_tokens, setup.eos_ids, sampling)
    else:
        from medusa.decoding.loop import medusa_generate

        out = medusa_generate(setup.model, setup.heads, prompt_ids, max_new_tokens, choices=setup.choices,
                              eos_ids=setup.eos_ids, sampling=sampling)
    wall = time.perf_counter() - start
    ids = [int(t) for t in out.output_ids]
    record = {"text": setup.tokenizer.decode(ids, skip_special_tokens=True), "output_ids": ids,
              "new_tokens": len(ids), "wall_time": wall}
    if side == "medusa":
        record.update(steps=int(out.steps), accept_lengths=[int(a) for a in out.accept_lengths],
                      times={stage: float(out.times[stage]) for stage in STAGES})
    return record


def first_divergence(model, prompt_ids, base_ids, medusa_ids):
    """Where greedy Medusa's reply first differs from plain greedy's, and why it may: the plain
    model's logits there (one-token steps along the common prefix, as plain decoding computes
    them) -> {"position", "base_token", "medusa_token", "logit_gap" (base token's logit minus
    Medusa's token's), "top2_margin"}, or None when the replies are equal. In fp16 a gap of a
    few hundredths is a near-tie that the tree step's other rounding can flip; a large gap is a bug."""
    from medusa.decoding.core import forced_logits

    n = min(len(base_ids), len(medusa_ids))
    i = next((k for k in range(n) if base_ids[k] != medusa_ids[k]), n)
    if i == n and len(base_ids) == len(medusa_ids):
        return None
    row = forced_logits(model, prompt_ids, base_ids[:i])[-1]
    top2 = np.sort(row)[-2:]
    out = {"position": i, "top2_margin": float(top2[1] - top2[0])}
    if i < n:
        rows = model.vocab.rows([base_ids[i], medusa_ids[i]])
        out.update(base_token=int(base_ids[i]), medusa_token=int(medusa_ids[i]),
                   logit_gap=float(row[rows[0]] - row[rows[1]]) if (rows >= 0).all() else None)
    return out


def _history(prompt: BenchPrompt):
    return [{"role": "system", "content": prompt.system}] if prompt.system else []


def run_sample(setup, bench: Bench, prompt: BenchPrompt, index):
    """Every turn of one prompt for each side; each side's own replies become its history."""
    sides, settings = bench.args.sides, bench.generation
    history = {side: _history(prompt) for side in sides}
    turns = []
    for turn, user in enumerate(prompt.turns):
        record = {"prompt": user}
        for side in sides:
            history[side].append({"role": "user", "content": user})
            ids = chat_prompt_ids(setup.tokenizer, history[side])
            record[side] = decode_turn(side, setup, settings, ids, settings.max_new_tokens,
                                       settings.seed + 1000 * index + turn)
            record[side]["prompt_tokens"] = len(ids)
            record.setdefault("prompt_ids", {})[side] = ids
            history[side].append({"role": "assistant", "content": record[side]["text"]})
        prompt_ids = record.pop("prompt_ids")
        if settings.greedy and len(sides) == 2 and prompt_ids["base"] == prompt_ids["medusa"]:
            divergence = first_divergence(setup.model, prompt_ids["base"], record["base"]["output_ids"],
                                          record["medusa"]["output_ids"])
            if divergence is not None:
                record["divergence"] = divergence
        turns.append(record)
    return {"id": prompt.id, "category": prompt.category, "turns": turns}


# A prompt of more than this many tokens runs its prefill on other kernels than a shorter one
# (a small model's layer op takes at most 64 rows, kernels/cuda/mma.py MMA_MAX_ROWS); seen on a
# fresh GPU machine: the first 68-token prompt spent 15 s compiling inside a timed sample
LONG_PROMPT = 64


def warm_up(setup, bench: Bench, prompt: BenchPrompt):
    """Decode untimed on each side, so that kernel compilation stays out of the measurements:
    after the first prompt, and after a prompt longer than LONG_PROMPT tokens (the first one's
    ids repeated: a later turn's history can pass that length even where no first turn does)."""
    if bench.args.warmup_tokens <= 0:
        return
    ids = chat_prompt_ids(setup.tokenizer, _history(prompt) + [{"role": "user", "content": prompt.turns[0]}])
    room = setup.model.config.max_position_embeddings - bench.args.warmup_tokens - 64   # the tree's nodes too
    prompts = [ids]
    if len(ids) <= LONG_PROMPT < room:
        prompts.append((ids * (2 * LONG_PROMPT // len(ids) + 1))[:2 * LONG_PROMPT])
    for ids in prompts:
        for side in bench.args.sides:
            decode_turn(side, setup, bench.generation, ids, bench.args.warmup_tokens, bench.generation.seed)


def run(bench: Bench, setup=None, progress=True):
    """Run the benchmark; returns (results dict, output path). Writes after every sample, holding
    the results file's lock."""
    args = bench.args
    # one writer per results file (runtime/locks.py): a second is refused before the model loads
    lock = locks.hold_file(args.output, "--output") if args.output else None
    prompts = spread_over_categories(load_prompt_set(args.data_path, args.data_format), args.num_samples)
    setup = setup or load_setup(bench, prompts)
    out = Path(args.output) if args.output else default_output(bench, setup)
    lock = lock or locks.hold_file(out, "--output")
    # exact: whether greedy Medusa is plain greedy bit for bit here ($MEDUSA_EXACT where it applies)
    config = {**bench.config(), **setup.plan.resolved(), "exact": setup.model.exact_mode(), "output": str(out)}
    results = start_results(out, config, args.resume)
    done = {str(s["id"]) for s in results["samples"]}
    todo = [(i, p) for i, p in enumerate(prompts) if str(p.id) not in done]
    if todo and results["samples"]:
        results.setdefault("resumed", []).append(environment())   # where the later samples ran
    if todo:
        warm_up(setup, bench, todo[0][1])
    bar = tqdm(todo, desc=out.stem, unit="sample", disable=not progress)
    try:
        for index, prompt in bar:
            sample = run_sample(setup, bench, prompt, index)
            if hasattr(os, "getloadavg"):
                sample["load_average_1m"] = os.getloadavg()[0]
            results["samples"].append(sample)
            write_results(out, results)      # atomic: a kill leaves the previous whole file
            if "speedup" in results["summary"]:
                bar.set_postfix(speedup=f"{results['summary']['speedup']:.2f}")
    except KeyboardInterrupt:
        bar.close()
        write_results(out, results)
        raise Interrupted(f"interrupted: {len(results['samples'])} finished sample(s) are saved in {out}; "
                          f"run the same command with --resume --output {out} to continue") from None
    if not todo:
        write_results(out, results)
    if args.plot:
        plot_results(results, out.with_suffix(".png"))
    lock.release()
    return results, out


# ---------------------------------------------------------------- command line
