"""`medusa tune`: pick the Medusa tree for given heads on this machine (bench/tune.py)."""
from medusa import cli
from medusa.app import loading
from medusa.app.settings import GenerationSettings, ModelArgs
from medusa.bench.tune import TuneArgs, tune, write_tree
from medusa.bench.tune import __doc__ as tune_doc
from medusa.decoding.tree import tuned_tree_path
from medusa.runtime.errors import UsageError


def main(argv=None):
    margs, settings, args = cli.parse(argv, (ModelArgs, GenerationSettings, TuneArgs), tune_doc)
    if not settings.greedy:
        raise UsageError("tuning measures greedy acceptance: drop --temperature")
    settings.medusa_choices = "chain"      # any tree the heads can draft: only the heads are read here
    plan = loading.plan(margs, settings, heads="required")
    output = args.output or tuned_tree_path(plan.heads_path, plan.device)   # where `--medusa_choices auto` looks
    loading.check_writable(output, "--output")
    report = tune(args, settings, loading.load(plan))
    path, report_path = write_tree(report, output)
    print(f"wrote {path} ({len(report['tree'])} nodes) and {report_path}")


if __name__ == "__main__":
    cli.start(main)
