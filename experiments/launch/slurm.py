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
import shlex
import sys
from pathlib import Path

from experiments.launch import common
from experiments.launch.common import LaunchError

NODE_LOCAL = ("/tmp", "/var/tmp", "/dev/shm")  # never shared between nodes
JOB_NAME = re.compile(r"[A-Za-z0-9_.-]+")  # also a file name (<log_dir>/<job_name>.sbatch) and %x of --output
PLAIN = re.compile(r"[A-Za-z0-9_.,:=@%/+-]*")  # what sbatch reads from an #SBATCH line as it is written


def sbatch_option(option: str) -> str:
  """'--output=/a b/%x.out' as an #SBATCH line must write it. sbatch splits such a line at
  whitespace, groups quoted text, drops backslashes and ends the line at an unquoted '#'
  (src/sbatch/opt.c, _get_argument); a value with any of these is written in double quotes
  with its quotes and backslashes escaped. A line break cannot be written: check_line refuses it."""
  flag, sep, value = option.partition("=")
  if not sep or PLAIN.fullmatch(value):
    return option
  return f'{flag}="' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def check_line(value: str | None, flag: str) -> None:
  """A value that reaches the script (an #SBATCH line, a comment) must not end its line."""
  if value is not None and any(ord(c) < 32 or ord(c) == 127 for c in value):
    raise LaunchError(f"{flag}={value!r} contains a line break or control character, which would end its line "
                      "of the batch script and start another: remove it.")


def batch_script(job: common.Job, *, job_name: str, nodes: int, gpus_per_node: int, time: str | None,
                 partition: str | None, account: str | None, qos: str | None, cpus_per_task: int | None,
                 mem: str | None, sbatch_args: list[str], log_dir: str, repo: str, venv: str,
                 setup: list[str], env: dict[str, str], signal_s: int, max_restarts: int, path: str) -> str:
  sbatch = [f"--job-name={job_name}", f"--nodes={nodes}", "--ntasks-per-node=1", f"--gpus-per-node={gpus_per_node}"]
  sbatch += [f"--{k}={v}" for k, v in (("cpus-per-task", cpus_per_task), ("mem", mem), ("time", time),
                                      ("partition", partition), ("account", account), ("qos", qos)) if v]
  sbatch += [f"--output={log_dir}/%x-%j.out", "--open-mode=append", "--requeue", f"--signal=B:USR1@{signal_s}"]
  sbatch += sbatch_args
  sbatch = [sbatch_option(a) for a in sbatch]
  devices = ",".join(str(i) for i in range(gpus_per_node))
  return "\n".join([
      "#!/bin/bash",
      f"# A {job.kind} of lm on SLURM, written by experiments/launch/slurm.py. Submit it again with: sbatch {path}",
      "#",
      "# One task per node: each task is one JAX process that drives all of its node's GPUs; jax.distributed",
      "# finds the others from what srun sets for each task (SLURM_JOB_ID, SLURM_NTASKS, SLURM_PROCID,",
      "# SLURM_LOCALID, SLURM_STEP_NODELIST). The workdir must be on a filesystem that every node sees",
      "# (orbax writes each host's shards into the same checkpoint directory; process 0 writes",
      "# metrics.jsonl, summary.json and config.json), and so must this checkout and its venv.",
      "#",
      "# --requeue: a preempted job (or one whose node failed) goes back to the queue and resumes from its",
      "# checkpoint. --open-mode=append: it keeps one log across restarts. --signal: see on_time_limit.",
      *[f"#SBATCH {a}" for a in sbatch],
      "",
      f"cd {shlex.quote(repo)}",
      *setup,
      f"source {shlex.quote(venv)}/bin/activate",
      "# jax.distributed gives each SLURM task one GPU (number SLURM_LOCALID) unless told which;",
      f"# this task drives all {gpus_per_node}.",
      f"export JAX_LOCAL_DEVICE_IDS={devices}",
      *common.export_lines(env),
      "",
      'echo "[launch_slurm] job $SLURM_JOB_ID, start $((${SLURM_RESTART_COUNT:-0} + 1)), '
      'nodes $SLURM_JOB_NODELIST, $(date)"',
      "",
      f"# {signal_s} s before the time limit SLURM sends this script USR1 (--signal). SIGTERM goes to the job steps:",
      "# lm saves a checkpoint at the next step and exits with status 'preempted'; then the job requeues",
      f"# itself and its next start resumes from that checkpoint (at most {max_restarts} times: --max_restarts).",
      "requeue=0",
      "on_time_limit() {",
      f'  echo "[launch_slurm] time limit in {signal_s} s: SIGTERM to lm, then requeue"',
      "  requeue=1",
      '  scancel --signal=TERM "$SLURM_JOB_ID"',
      "}",
      "# Preemption or scancel: SLURM sends SIGTERM to every process of the job. Stay alive while lm saves its",
      "# checkpoint; SLURM itself requeues a preempted job, and a cancelled one stays cancelled.",
      "on_term() {",
      '  echo "[launch_slurm] SIGTERM: waiting for lm to save a checkpoint"',
      "}",
      "trap on_time_limit USR1",
      "trap on_term TERM",
      "",
      "# In the background: bash runs a trap only between commands, so it waits with `wait`, which a signal",
      "# interrupts; it keeps waiting until srun has exited, then takes srun's exit status.",
      f"srun --kill-on-bad-exit=1 {job.command} &",
      "srun_pid=$!",
      'while kill -0 "$srun_pid" 2>/dev/null; do wait "$srun_pid"; done',
      'wait "$srun_pid"; status=$?',
      'echo "[launch_slurm] srun exit status $status, $(date)"',
      "",
      'if [ "$requeue" = 1 ]; then',
      f'  if [ "${{SLURM_RESTART_COUNT:-0}}" -lt {max_restarts} ]; then',
      '    scontrol requeue "$SLURM_JOB_ID"',
      "  else",
      f'    echo "[launch_slurm] not requeued: {max_restarts} restarts used; submit the script again to continue"',
      "  fi",
      "fi",
      'exit "$status"',
      "",
  ])


def install_command(repo: str, venv: str, extra_install: str) -> list[str]:
  v, r = shlex.quote(venv), shlex.quote(repo)
  steps = [f"[ -x {v}/bin/python ] || python3 -m venv {v}", f". {v}/bin/activate && cd {r} && pip install -e ."]
  if extra_install:
    steps[-1] += f" && {extra_install}"
  return ["bash", "-c", "; ".join(steps)]


def parse_args(argv: list[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m experiments.launch.slurm", description=__doc__.split("\n")[0],
                              epilog="Full description: the docstring of experiments/launch/slurm.py.")
  p.add_argument("--nodes", type=int, required=True, help="Hosts; one JAX process (SLURM task) on each.")
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
  if args.nodes < 1 or args.gpus_per_node < 1:
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
  script = batch_script(job, job_name=name, nodes=args.nodes, gpus_per_node=args.gpus_per_node, time=args.time,
                        partition=args.partition, account=args.account, qos=args.qos,
                        cpus_per_task=args.cpus_per_task, mem=args.mem, sbatch_args=args.sbatch_arg,
                        log_dir=log_dir, repo=str(repo), venv=venv, setup=args.setup, env=env,
                        signal_s=args.signal_s, max_restarts=args.max_restarts, path=path)
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
  runner.say(f"{job.kind} on SLURM: {args.nodes} node(s) x {args.gpus_per_node} GPU(s), job {name}; "
             f"script and logs in {log_dir}")
  if install:
    runner.say("install lm into the venv, here: compute nodes often have no internet")
    if runner.run(install, "install", stream=True) != 0:
      return 1
  runner.say("write the batch script")
  if runner.run(["mkdir", "-p", log_dir], "mkdir") != 0:
    return 1
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
