"""Deprecated name of `python -m experiments.bench.data` (experiments/bench/data.py)."""

from experiments.moved import forward

forward("experiments.bench_data", "experiments.bench.data", __name__)
