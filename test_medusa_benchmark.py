"""Benchmark the base model against Medusa: `python test_medusa_benchmark.py --greedy`.

A script, not a pytest file (pytest collects tests/ only); everything is in medusa/bench.py,
see its docstring or `--help` for the flags and the results format.
"""
from medusa import cli
from medusa.bench import main

if __name__ == "__main__":
    cli.run(main)
