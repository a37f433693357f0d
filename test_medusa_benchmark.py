"""Benchmark the base model against Medusa: `python test_medusa_benchmark.py --greedy`.

A script, not a pytest file (pytest collects tests/ only); the same as `medusa bench` (medusa/cli/bench.py, medusa/bench/benchmark.py);
see its docstring or `--help` for the flags and the results format.
"""
from medusa import cli
from medusa.cli.bench import main

if __name__ == "__main__":
    cli.start(main)
