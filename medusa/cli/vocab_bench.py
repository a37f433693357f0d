"""`medusa vocab-bench`: a full and a reduced-vocabulary model side by side (vocab/bench.py)."""
import json

from medusa import cli
from medusa.runtime.files import json_default
from medusa.vocab.bench import VocabBenchArgs, run
from medusa.vocab.bench import __doc__ as bench_doc


def main(argv=None):
    (args,) = cli.parse(argv, (VocabBenchArgs,), bench_doc)
    results = run(args)
    print(json.dumps(results["summary"], indent=1, default=json_default)[:3000])


if __name__ == "__main__":
    cli.start(main)
