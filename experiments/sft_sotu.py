"""Deprecated name of `python -m experiments.studies.sft_sotu` (experiments/studies/sft_sotu.py)."""

from experiments.moved import forward

forward("experiments.sft_sotu", "experiments.studies.sft_sotu", __name__)
