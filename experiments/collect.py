"""Deprecated name of `python -m experiments.sweep.collect` (experiments/sweep/collect.py)."""

from experiments.moved import forward

forward("experiments.collect", "experiments.sweep.collect", __name__)
