"""`medusa bench` (test_medusa_benchmark.py): plain against Medusa decoding on the same prompts (bench/benchmark.py)."""
from medusa import cli
from medusa.app.results import print_summary
from medusa.app.settings import GenerationSettings, ModelArgs
from medusa.bench.benchmark import Bench, BenchArgs, run
from medusa.bench.benchmark import __doc__ as benchmark_doc


def parse_args(argv=None) -> Bench:
    return Bench(*cli.parse(argv, (ModelArgs, GenerationSettings, BenchArgs), benchmark_doc))

def main(argv=None):
    results, out = run(parse_args(argv))
    print_summary(results["summary"])
    print(f"wrote {out}")


if __name__ == "__main__":
    cli.start(main)
