"""The sbatch scripts of experiments/launch/slurm.py: one job of every node, or a job array of points.

  batch_script    the script: #SBATCH lines, the environment, srun of the command, the pre-time-limit
                  checkpoint and self-requeue; with `array`, task i runs point i of a sweep alone
  sbatch_option   an #SBATCH option written so that sbatch reads back exactly the value given
  check_line      refuses a value that would end its line of the script
  install_command the venv install, run on the login node

Every value that reaches a script is quoted (shlex in shell lines, sbatch's own quoting in
#SBATCH lines) or refused (a line break anywhere; a job name outside [A-Za-z0-9_.-]).
"""

from __future__ import annotations

import re
import shlex

from experiments.launch import common
from experiments.launch.common import LaunchError

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
                 setup: list[str], env: dict[str, str], signal_s: int, max_restarts: int, path: str,
                 array: tuple[list[str], int] | None = None) -> str:
  """The batch script of one job; with `array` = (points, cap), a job array whose task i runs
  points[i] alone (`--point`), at most `cap` tasks at once (%cap), each on one node."""
  sbatch = [f"--job-name={job_name}", f"--nodes={nodes}", "--ntasks-per-node=1", f"--gpus-per-node={gpus_per_node}"]
  if array:
    sbatch.insert(1, f"--array=0-{len(array[0]) - 1}%{array[1]}")
  sbatch += [f"--{k}={v}" for k, v in (("cpus-per-task", cpus_per_task), ("mem", mem), ("time", time),
                                      ("partition", partition), ("account", account), ("qos", qos)) if v]
  sbatch += [f"--output={log_dir}/%x-{'%A_%a' if array else '%j'}.out", "--open-mode=append", "--requeue",
             f"--signal=B:USR1@{signal_s}"]
  sbatch += sbatch_args
  sbatch = [sbatch_option(a) for a in sbatch]
  devices = ",".join(str(i) for i in range(gpus_per_node))
  if array:
    about = [f"# A job array of lm: one point of a sweep per task, written by experiments/launch/slurm.py --per_point.",
             f"# Task i runs points[i] alone (experiments.sweep --point), at most {array[1]} at once (%{array[1]});",
             "# each point's state is in its directory of the sweep_dir, whatever ran it. Submit it again with",
             f"# sbatch {path}: finished points are skipped.",
             "#",
             "# The sweep_dir must be on a filesystem that every node sees, and so must this checkout and its venv."]
  else:
    about = [
        f"# A {job.kind} of lm on SLURM, written by experiments/launch/slurm.py. Submit it again with: sbatch {path}",
        "#",
        "# One task per node: each task is one JAX process that drives all of its node's GPUs; jax.distributed",
        "# finds the others from what srun sets for each task (SLURM_JOB_ID, SLURM_NTASKS, SLURM_PROCID,",
        "# SLURM_LOCALID, SLURM_STEP_NODELIST). The workdir must be on a filesystem that every node sees",
        "# (orbax writes each host's shards into the same checkpoint directory; process 0 writes",
        "# metrics.jsonl, summary.json and config.json), and so must this checkout and its venv."]
  if array:
    select = ["",
              f"export LM_SWEEP_DEVICES={nodes * gpus_per_node}  # the allocation, for the point's record",
              "points=(" + " ".join(shlex.quote(n) for n in array[0]) + ")",
              'point="${points[$SLURM_ARRAY_TASK_ID]}"']
    hello = ('echo "[launch_slurm] array task ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}: point $point, '
             'start $((${SLURM_RESTART_COUNT:-0} + 1)), nodes $SLURM_JOB_NODELIST, $(date)"')
    command = f'{job.command} --point="$point"'
  else:
    select = []
    hello = ('echo "[launch_slurm] job $SLURM_JOB_ID, start $((${SLURM_RESTART_COUNT:-0} + 1)), '
             'nodes $SLURM_JOB_NODELIST, $(date)"')
    command = job.command
  return "\n".join([
      "#!/bin/bash",
      *about,
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
      *select,
      "",
      hello,
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
      f"srun --kill-on-bad-exit=1 {command} &",
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


