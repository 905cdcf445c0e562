"""Run lm (one run, or a whole sweep) on a SLURM GPU cluster: write an sbatch script and submit it.

    python -m experiments.launch.slurm --nodes=2 --gpus_per_node=8 --time=24:00:00 --partition=gpu \
        --run="--config=configs/ladder.py:p1b --workdir=/shared/runs/p1b"
    python -m experiments.launch.slurm ... --sweep="--config=experiments/sweeps/x.py --sweep_dir=/shared/sweeps/x"
    ... --dry_run      prints the install command, the script and the sbatch command, runs none

Run it on the cluster's login node, from a checkout of lm on the shared filesystem. It
  1. installs lm into a venv beside the checkout (`pip install -e .` plus --extra_install), here,
     because compute nodes often have no internet; the venv is on the shared filesystem too;
  2. writes <log_dir>/<job_name>.sbatch: one task per node (one JAX process driving all of the
     node's GPUs), `srun` of the same command on every node, the environment jax.distributed needs;
  3. submits it with sbatch and prints the job id and where its log goes.

The workdir (or sweep_dir) must be on a filesystem that every node sees: orbax writes each host's
shards into the same checkpoint directory, and process 0 writes metrics.jsonl, summary.json and
config.json with plain file I/O. A relative one is relative to the checkout.

Preemption and time limits: the job is requeued when it is preempted or its node fails
(--requeue; SLURM sends SIGTERM first and lm checkpoints if the cluster's grace time allows).
--signal_s before the time limit the script sends SIGTERM to lm (which checkpoints and exits with
status 'preempted') and requeues itself, at most --max_restarts times. The log is appended to
(--open-mode=append), so a job keeps one log across its restarts. Every start resumes from the
latest checkpoint; a sweep skips its finished points.

Every value that reaches the script is quoted (shlex in shell lines, sbatch's own quoting in
#SBATCH lines: sbatch_option) or refused (a line break anywhere; --job_name outside
[A-Za-z0-9_.-]). --setup lines and --extra_install are shell commands by design.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from experiments.launch import common
from experiments.launch import slurm_sweep
from experiments.launch.common import LaunchError
from experiments.launch.slurm_script import JOB_NAME, batch_script, check_line, install_command

NODE_LOCAL = ("/tmp", "/var/tmp", "/dev/shm")  # never shared between nodes
def parse_args(argv: list[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m experiments.launch.slurm", description=__doc__.split("\n")[0],
                              epilog="Full description: the docstring of experiments/launch/slurm.py.")
  p.add_argument("--nodes", type=int, help="Hosts; one JAX process (SLURM task) on each (with --per_point: "
                 "each job's own, by the size of its points).")
  p.add_argument("--gpus_per_node", type=int, required=True, help="GPUs each host contributes.")
  p.add_argument("--time", help="Time limit, e.g. 24:00:00 (default: the partition's).")
  p.add_argument("--partition")
  p.add_argument("--account")
  p.add_argument("--qos")
  p.add_argument("--cpus_per_task", type=int, help="CPU cores per host for the process (data pipeline threads).")
  p.add_argument("--mem", help="Memory per node, e.g. 200G (default: the cluster's).")
  p.add_argument("--sbatch_arg", action="append", default=[], metavar="FLAG",
                 help="Extra #SBATCH line, e.g. --sbatch_arg=--constraint=h100 (repeatable).")
  p.add_argument("--job_name", help="Default: lm-<basename of the workdir or sweep_dir>.")
  p.add_argument("--venv", help="Virtual environment on the shared filesystem (default: <checkout>/.venv).")
  p.add_argument("--extra_install", default='pip install -U "jax[cuda12]"',
                 help="Accelerator-specific install after `pip install -e .` (default: %(default)s; use what the "
                 "cluster's docs say).")
  p.add_argument("--skip_install", action="store_true", help="Use the venv as it is.")
  p.add_argument("--setup", action="append", default=[], metavar="LINE",
                 help="Shell line run in the job before srun, e.g. --setup='module load cuda/12.4' (repeatable).")
  p.add_argument("--signal_s", type=int, default=300,
                 help="Seconds before the time limit at which lm is told to checkpoint (default: %(default)s).")
  p.add_argument("--max_restarts", type=int, default=5, help="Self-requeues at the time limit (default: %(default)s).")
  p.add_argument("--shared_fs", action="append", default=[], metavar="DIR",
                 help="The cluster's shared filesystem(s): the workdir must be under one (repeatable; optional).")
  p.add_argument("--log_dir", help="Batch script and job logs, on the shared filesystem "
                 "(default: <checkout>/slurm_logs).")
  p.add_argument("--dry_run", action="store_true", help="Print the commands and the script, run none.")
  per = p.add_argument_group("one job per point (--sweep only): experiments/launch/slurm_sweep.py")
  per.add_argument("--per_point", action="store_true", help="A job array whose task i runs point i alone.")
  per.add_argument("--max_running", type=int, default=8, help="At most this many points at once, over all of "
                   "the sweep's jobs (the arrays' %%N; default: %(default)s).")
  per.add_argument("--gpus_per_point", type=int, help="GPUs of every point (default: by each point's memory).")
  per.add_argument("--gpu_memory_gb", type=float, default=80, help="Memory of one GPU, for the sizing rule "
                   "(default: %(default)s).")
  per.add_argument("--wait", action="store_true", help="Stay until no job of the sweep is queued or running, then "
                   "print the points' table, their cost and SLURM's allocation.")
  per.add_argument("--poll_s", type=float, default=60, help="Seconds between squeue polls with --wait.")
  per.add_argument("--plan_python", help="The python that plans the sweep here (default: the venv's).")
  common.add_job_flags(p)
  flags, rest = common.split_argv(argv)
  args = p.parse_args(flags)
  args.rest = rest
  return args


def plan(args: argparse.Namespace, repo: Path | None = None):
  """Check the flags and build (job, name, log dir, script path, script text, install argv) before anything runs."""
  repo = repo or common.REPO
  job = common.parse_job(args.run, args.sweep, args.rest, repo)
  env = common.parse_env(args.env)
  if args.per_point:
    if job.kind != "sweep":
      raise LaunchError("--per_point runs the points of a sweep: give --sweep='<sweep args>'.")
    if args.nodes is not None:
      raise LaunchError("--per_point sizes each job by its points; drop --nodes (--gpus_per_point fixes the GPUs).")
    if args.max_running < 1 or (args.gpus_per_point or 1) < 1 or args.poll_s <= 0:
      raise LaunchError("--max_running and --gpus_per_point must be at least 1, --poll_s > 0.")
  elif args.nodes is None:
    raise LaunchError("--nodes is required (except with --per_point).")
  if (args.nodes is not None and args.nodes < 1) or args.gpus_per_node < 1:
    raise LaunchError("--nodes and --gpus_per_node must be at least 1.")
  if args.signal_s < 1 or args.max_restarts < 0:
    raise LaunchError("--signal_s must be >= 1 and --max_restarts >= 0.")
  if args.time and not re.fullmatch(r"(\d+-)?\d+(:\d+){0,2}", args.time):
    raise LaunchError(f"--time={args.time}: expected minutes, MM:SS, HH:MM:SS, D-HH or D-HH:MM:SS.")
  flag = "--workdir" if job.kind == "run" else "--sweep_dir"
  out = os.path.normpath(os.path.join(repo, job.output_dir))  # the job runs in the checkout
  if os.path.isabs(job.output_dir) and any(common.is_under(out, d) for d in NODE_LOCAL):
    raise LaunchError(f"{flag}={job.output_dir} is node-local storage; every node must see the workdir: put it on "
                      "the cluster's shared filesystem.")
  if args.shared_fs and not any(common.is_under(out, d) for d in args.shared_fs):
    raise LaunchError(f"{flag}={job.output_dir} ({out}) is not under the shared filesystem "
                      f"({', '.join(args.shared_fs)}); every node must see it.")
  if args.job_name is not None and not JOB_NAME.fullmatch(args.job_name):
    raise LaunchError(f"--job_name={args.job_name!r}: use letters, digits, '_', '.' and '-' (it names the script "
                      "file and the log, %x).")
  for flag, value in (("--partition", args.partition), ("--account", args.account), ("--qos", args.qos),
                      ("--mem", args.mem), ("--log_dir", args.log_dir), ("--venv", args.venv), ("the checkout", str(repo)),
                      *(("--sbatch_arg", a) for a in args.sbatch_arg)):
    check_line(value, flag)
  name = args.job_name or "lm-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", os.path.basename(out))
  log_dir = os.path.abspath(args.log_dir or os.path.join(repo, "slurm_logs"))
  venv = os.path.abspath(args.venv or os.path.join(repo, ".venv"))
  path = os.path.join(log_dir, f"{name}.sbatch")
  args.settings = dict(time=args.time, partition=args.partition, account=args.account, qos=args.qos,
                       cpus_per_task=args.cpus_per_task, mem=args.mem, sbatch_args=args.sbatch_arg, log_dir=log_dir,
                       repo=str(repo), venv=venv, setup=args.setup, env=env, signal_s=args.signal_s,
                       max_restarts=args.max_restarts)
  script = None if args.per_point else batch_script(job, job_name=name, nodes=args.nodes,
                                                    gpus_per_node=args.gpus_per_node, path=path, **args.settings)
  install = None if args.skip_install else install_command(str(repo), venv, args.extra_install)
  return job, name, log_dir, path, script, install


def main(argv: list[str], out=None) -> int:
  try:
    args = parse_args(argv)
    job, name, log_dir, path, script, install = plan(args)
  except LaunchError as e:
    print(f"launch_slurm: {e}", file=sys.stderr)
    return 2
  runner = common.Runner(args.dry_run, log_dir, out)
  if args.per_point:
    runner.say(f"sweep on SLURM, one job per point: at most {args.max_running} at once, up to "
               f"{args.gpus_per_node} GPU(s) a node; jobs {name}-<n>; scripts and logs in {log_dir}")
  else:
    runner.say(f"{job.kind} on SLURM: {args.nodes} node(s) x {args.gpus_per_node} GPU(s), job {name}; "
               f"script and logs in {log_dir}")
  if install:
    runner.say("install lm into the venv, here: compute nodes often have no internet")
    if runner.run(install, "install", stream=True) != 0:
      return 1
  runner.say("write the batch script" + ("s" if args.per_point else ""))
  if runner.run(["mkdir", "-p", log_dir], "mkdir") != 0:
    return 1
  if args.per_point:
    return slurm_sweep.launch(args, job, runner, args.settings, name, common.REPO)
  runner.write(Path(path), script)
  runner.say("submit it")
  rc, job_id = runner.poll(["sbatch", "--parsable", path], first=True, dry_reply="JOBID")
  if rc != 0:
    runner.say(f"sbatch failed (exit status {rc}):\n{job_id}")
    return 1
  job_id = job_id.split(";")[0]  # --parsable prints "id" or "id;cluster"
  runner.say(f"job {job_id}; follow it with: squeue -j {job_id}; tail -f {log_dir}/{name}-{job_id}.out")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
