"""`medusa step-profile`: where a greedy Medusa step's time goes on this machine (bench/step_profile.py)."""
from pathlib import Path

from medusa import cli
from medusa.app import loading
from medusa.app.settings import BaseModelArgs
from medusa.bench import step_profile
from medusa.runtime.backend import jt


def main(argv=None):
    base, args = cli.parse(argv, (BaseModelArgs, step_profile.ProfileArgs), step_profile.__doc__)
    if args.output:
        loading.check_writable(args.output, "--output")
    result = step_profile.run(base, args)
    device = "cuda" if jt.flags.use_cuda else "cpu"
    output = Path(args.output or f"results/step_profile_{device}.json")
    step_profile.write(result, output)
    for r in result["runs"]:
        stages = "  ".join(f"{s} {r['stages'][s]['ms']:.2f}" for s in step_profile.STAGES)
        print(f"{r['heads']:>16} {r['tree']:<22} step {r['step_ms']:6.2f} ms = {r['step_over_decode']:.2f}x decode "
              f"({r['decode_ms']:.2f})   {stages}")
    print(f"wrote {output} and {output.with_suffix('.png')}")


if __name__ == "__main__":
    cli.start(main)
