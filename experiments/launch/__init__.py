"""Launchers: one lm run or one sweep on every host of a Cloud TPU slice or a SLURM job.

    python -m experiments.launch.tpu --zone=... --accelerator_type=v5litepod-16 --bucket=gs://B --run="..." | --sweep="..."
    python -m experiments.launch.slurm --nodes=2 --gpus_per_node=8 --run="..." | --sweep="..."

  common.py   the job, the command runner (and its --dry_run), packing the working tree
  tpu.py      queued resources, ship, install, run on every worker, restart after preemption
  slurm.py    an sbatch script (one task per node, requeue at the time limit) and its submission

Standard library only, here and in experiments/__init__.py: a login node's system python3
runs them without lm's dependencies installed.
"""
