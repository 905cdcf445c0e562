"""Deprecated name of `python -m experiments.launch.tpu` (experiments/launch/tpu.py)."""

from experiments.moved import forward

forward("experiments.launch_tpu", "experiments.launch.tpu", __name__)
