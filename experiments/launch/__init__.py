"""Launchers: one lm run or one sweep on every host of a Cloud TPU slice or a SLURM job, or a
sweep with one job per point (a SLURM job array, a pool of TPU slices).

    python -m experiments.launch.tpu --zone=... --accelerator_type=v5litepod-16 --bucket=gs://B --run="..." | --sweep="..."
    python -m experiments.launch.slurm --nodes=2 --gpus_per_node=8 --run="..." | --sweep="..."
    python -m experiments.launch.slurm --per_point --max_running=16 --gpus_per_node=8 --sweep="..." [--wait]
    python -m experiments.launch.tpu --per_point --max_slices=8 --accelerator_type=v5litepod-8 ... --sweep="..."

  common.py       the job, the command runner (and its --dry_run), packing the working tree
  tpu.py          one slice: ship, install, run on every worker, restart after preemption (the command)
  tpu_slice.py    a slice's gcloud commands, setup and run scripts, and its states
  tpu_pool.py     --per_point: at most N slices, each running one point at a time
  slurm.py        an sbatch script (one task per node, requeue at the time limit) and its submission (the command)
  slurm_script.py the batch scripts, with sbatch's own quoting
  slurm_sweep.py  --per_point: job arrays of points, sized by memory, capped, relaunched by squeue

Standard library only, here and in experiments/__init__.py: a login node's system python3
runs them without lm's dependencies installed (--per_point plans the sweep with lm's python:
--plan_python).
"""
