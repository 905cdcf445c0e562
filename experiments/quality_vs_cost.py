"""Deprecated name of `python -m experiments.studies.quality_vs_cost` (experiments/studies/quality_vs_cost.py)."""

from experiments.moved import forward

forward("experiments.quality_vs_cost", "experiments.studies.quality_vs_cost", __name__)
