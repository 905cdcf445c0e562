"""Deprecated name of `python -m experiments.bench.inference` (experiments/bench/inference.py)."""

from experiments.moved import forward

forward("experiments.bench_inference", "experiments.bench.inference", __name__)
