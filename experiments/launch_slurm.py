"""Deprecated name of `python -m experiments.launch.slurm` (experiments/launch/slurm.py)."""

from experiments.moved import forward

forward("experiments.launch_slurm", "experiments.launch.slurm", __name__)
