"""Deprecated name of `python -m experiments.bench.train_step` (experiments/bench/train_step.py)."""

from experiments.moved import forward

forward("experiments.bench_train_step", "experiments.bench.train_step", __name__)
