"""A fake SLURM for the launcher tests: `sbatch`, `squeue`, `sacct`, `scontrol` and `scancel`
on the PATH, all this one file (run as `python3 fake_slurm.py <command> ARGS`), sharing one state
file. It reads a batch script's #SBATCH lines the way sbatch does and runs its tasks as local
processes, at most %N of an array at once; a scripted requeue signals one task and runs it again.

Only what the launchers use: `sbatch --parsable SCRIPT` (--array, --job-name, --output,
--comment), `squeue --noheader --format=%i|%j|%T|%k -u USER` style queries answered from the
state, `sacct` (id, state, elapsed, AllocTRES), `scontrol requeue`, `scancel`.
"""

from __future__ import annotations


def sbatch_arguments(line: str) -> list[str]:
  """The arguments sbatch reads from the text after '#SBATCH', a port of _get_argument in
  SLURM's src/sbatch/opt.c: whitespace separates them, single or double quotes group text
  (the quotes are dropped), a backslash escapes the next character, an unquoted '#' ends the line."""
  args, i, n = [], 0, len(line)
  while True:
    while i < n and line[i].isspace():
      i += 1
    if i >= n:
      return args
    arg, quote, escape = [], None, False
    while i < n and (quote or not line[i].isspace()) and line[i] != "\n":
      c = line[i]
      i += 1
      if escape:
        escape = False
      elif c == "\\":
        escape = True
        continue
      elif quote:
        if c == quote:
          quote = None
          continue
      elif c in "\"'":
        quote = c
        continue
      elif c == "#":
        return args + (["".join(arg)] if arg else [])
      arg.append(c)
    args.append("".join(arg))


def sbatch_options(script: str) -> list[str]:
  """Every argument of the #SBATCH lines of a batch script, up to its first command (as sbatch)."""
  out = []
  for line in script.splitlines()[1:]:
    if line.startswith("#SBATCH"):
      out += sbatch_arguments(line[len("#SBATCH"):])
    elif line.strip() and not line.startswith("#"):
      break
  return out


# ---- the fake scheduler: state, commands and the daemon that runs the tasks ----

import contextlib
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time

LIVE = ("PENDING", "RUNNING")
TICK_S = 0.05


def home() -> str:
  return os.environ["FAKE_SLURM"]


@contextlib.contextmanager
def state():
  """The scheduler's state (jobs, tasks, attempts), locked while a command or the daemon changes it."""
  path = os.path.join(home(), "state.json")
  with open(os.path.join(home(), "state.lock"), "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    s = json.load(open(path)) if os.path.exists(path) else {"next_id": 1000, "jobs": {}}
    yield s
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
      json.dump(s, f, indent=1)
    os.replace(tmp, path)


def option(options: list[str], name: str, default=None):
  for o in options:
    if o.startswith(f"--{name}="):
      default = o.split("=", 1)[1]
  return default


def sbatch(argv: list[str]) -> int:
  script_path = argv[-1]
  script = open(script_path).read()
  options = sbatch_options(script) + [a for a in argv[:-1] if a.startswith("--")]
  array = option(options, "array")
  points = re.search(r"^points=\((.*)\)$", script, re.M)
  with state() as s:
    job_id = s["next_id"]
    s["next_id"] += 100
    tasks = [None]
    cap = None
    if array:
      m = re.fullmatch(r"0-(\d+)(?:%(\d+))?", array)
      tasks, cap = list(range(int(m.group(1)) + 1)), int(m.group(2)) if m.group(2) else None
    s["jobs"][str(job_id)] = {
        "id": job_id, "name": option(options, "job-name"), "script": script_path, "cap": cap,
        "gpus": int(option(options, "gpus-per-node", 0)) * int(option(options, "nodes", 1)),
        "output": option(options, "output", "slurm-%j.out"),
        "points": points.group(1).split() if points else None,
        "tasks": {str(t): {"task": t, "job_id": job_id + (t or 0) + 1 if array else job_id, "state": "PENDING",
                           "restarts": 0, "requeue": False, "cancel": False, "attempts": []} for t in tasks}}
    with open(os.path.join(home(), "calls"), "a") as f:
      f.write(f"sbatch {script_path}\n")
    start_daemon()  # under the state lock: the daemon removes its pid file under it when it goes idle
  print(f"{job_id};fake")
  return 0


def start_daemon():
  pid_file = os.path.join(home(), "daemon.pid")
  if os.path.exists(pid_file):
    return
  proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "daemon"], start_new_session=True,
                          stdout=open(os.path.join(home(), "daemon.log"), "a"), stderr=subprocess.STDOUT)
  open(pid_file, "w").write(str(proc.pid))


def task_label(job: dict, task: dict) -> str:
  return f"{job['id']}_{task['task']}" if task["task"] is not None else str(job["id"])


def squeue(argv: list[str]) -> int:
  names = set((option(argv, "name") or "").split(",")) - {""}
  with state() as s:
    for job in s["jobs"].values():
      if names and job["name"] not in names:
        continue
      for task in job["tasks"].values():
        if task["state"] in LIVE:
          print(f"{task_label(job, task)}|{task['state']}|{job['name']}")
  return 0


def sacct(argv: list[str]) -> int:
  names = set((option(argv, "name") or "").split(",")) - {""}
  with state() as s:
    for job in s["jobs"].values():
      if names and job["name"] not in names:
        continue
      for task in job["tasks"].values():
        for a in task["attempts"]:
          if a.get("end") is None:
            continue
          elapsed = round(a["end"] - a["start"])
          label = task_label(job, task)
          print(f"{label}|{job['name']}|{a['state']}|{elapsed}|billing={job['gpus']},cpu=1,"
                f"gres/gpu={job['gpus']},node=1")
          print(f"{label}.batch|batch|{a['state']}|{elapsed}|cpu=1,mem=1G,node=1")
  return 0


def find_task(s: dict, task_job_id: int):
  for job in s["jobs"].values():
    for task in job["tasks"].values():
      if task["job_id"] == task_job_id or (task["task"] is None and job["id"] == task_job_id):
        return job, task
  raise SystemExit(f"fake slurm: no job {task_job_id}")


def scontrol(argv: list[str]) -> int:
  assert argv[0] == "requeue", argv
  with state() as s:
    find_task(s, int(argv[1]))[1]["requeue"] = True
  return 0


def scancel(argv: list[str]) -> int:
  target = int(argv[-1].split("_")[0])
  if option(argv, "signal"):  # the job's steps (srun's processes), not its batch script
    step = os.path.join(home(), "steps", str(target))
    os.kill(int(open(step).read()), getattr(signal, "SIG" + option(argv, "signal")))
    return 0
  with state() as s:
    for job in s["jobs"].values():
      for task in job["tasks"].values():
        if job["id"] == target or task["job_id"] == target:
          task["cancel"] = True
  return 0


def srun(argv: list[str]) -> int:
  """One task on one node: record this step's pid for scancel --signal, then become the command."""
  while argv and argv[0].startswith("--"):
    argv = argv[1:]
  os.makedirs(os.path.join(home(), "steps"), exist_ok=True)
  open(os.path.join(home(), "steps", os.environ["SLURM_JOB_ID"]), "w").write(str(os.getpid()))
  os.environ.update(SLURM_PROCID="0", SLURM_NTASKS="1", SLURM_LOCALID="0", SLURM_STEP_ID="0")
  os.execvp(argv[0], argv)


def daemon() -> int:
  """Runs the tasks: at most an array's %cap at once; a requeued or preempted task runs again with
  SLURM_RESTART_COUNT + 1; FAKE_SLURM_PREEMPT (JSON: [{"point": P, "when": PATH}]) preempts the
  task running point P once PATH exists, as SLURM preempts: SIGTERM to all of the task's processes."""
  procs: dict[str, subprocess.Popen] = {}
  rules = json.loads(os.environ.get("FAKE_SLURM_PREEMPT", "[]"))
  while True:
    with state() as s:
      busy = False
      for job in s["jobs"].values():
        for task in job["tasks"].values():
          key = f"{job['id']}/{task['task']}"
          if task["state"] == "RUNNING":
            proc = procs[key]
            point = job["points"][task["task"]] if job["points"] and task["task"] is not None else None
            for rule in rules:
              if rule.get("done") is None and rule["point"] == point and os.path.exists(rule["when"]):
                rule["done"] = True
                task["requeue"] = True
                task["attempts"][-1]["preempted"] = True
                os.killpg(proc.pid, signal.SIGTERM)
            if task["cancel"] and not task.get("cancel_sent"):
              task["cancel_sent"] = True
              os.killpg(proc.pid, signal.SIGTERM)
            rc = proc.poll()
            if rc is None:
              busy = True
              continue
            attempt = task["attempts"][-1]
            attempt["end"], attempt["rc"] = time.time(), rc
            del procs[key]
            if task["cancel"]:
              attempt["state"] = task["state"] = "CANCELLED"
            elif task["requeue"]:
              attempt["state"] = "PREEMPTED" if attempt.get("preempted") else "REQUEUED"
              task.update(state="PENDING", requeue=False, restarts=task["restarts"] + 1)
            else:
              attempt["state"] = task["state"] = "COMPLETED" if rc == 0 else "FAILED"
          if task["state"] == "PENDING" and task["cancel"]:
            task["state"] = "CANCELLED"
        running = sum(t["state"] == "RUNNING" for t in job["tasks"].values())
        for task in job["tasks"].values():
          if task["state"] != "PENDING":
            continue
          busy = True
          if job["cap"] is not None and running >= job["cap"]:
            break
          running += 1
          procs[f"{job['id']}/{task['task']}"] = run_task(job, task)
          task["state"], task["pid"] = "RUNNING", procs[f"{job['id']}/{task['task']}"].pid
          task["attempts"].append({"start": time.time(), "end": None, "state": "RUNNING"})
      if not busy and not procs:
        os.remove(os.path.join(home(), "daemon.pid"))
        return 0
    time.sleep(TICK_S)


def run_task(job: dict, task: dict) -> subprocess.Popen:
  label = task_label(job, task)
  out = (job["output"].replace("%x", job["name"] or "").replace("%A", str(job["id"]))
         .replace("%a", str(task["task"])).replace("%j", str(task["job_id"])))
  env = {**os.environ, "SLURM_JOB_ID": str(task["job_id"]), "SLURM_JOB_NAME": job["name"] or "",
         "SLURM_RESTART_COUNT": str(task["restarts"]), "SLURM_JOB_NODELIST": "fake-node"}
  if task["task"] is not None:
    env.update(SLURM_ARRAY_JOB_ID=str(job["id"]), SLURM_ARRAY_TASK_ID=str(task["task"]))
  with open(os.path.join(home(), "calls"), "a") as f:
    f.write(f"start {label} restart {task['restarts']}\n")
  return subprocess.Popen(["bash", job["script"]], env=env, stdout=open(out, "a"), stderr=subprocess.STDOUT,
                          start_new_session=True)


COMMANDS = {"sbatch": sbatch, "squeue": squeue, "sacct": sacct, "scontrol": scontrol, "scancel": scancel,
            "srun": srun}


def install(bin_dir, fake_home) -> dict[str, str]:
  """Executables sbatch, squeue, ... in bin_dir that run this file; the env a test puts them in."""
  os.makedirs(bin_dir, exist_ok=True)
  os.makedirs(fake_home, exist_ok=True)
  for name in COMMANDS:
    path = os.path.join(bin_dir, name)
    with open(path, "w") as f:
      f.write(f'#!/bin/bash\nexec {sys.executable} {os.path.abspath(__file__)} {name} "$@"\n')
    os.chmod(path, 0o755)
  return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_SLURM": str(fake_home)}


def wait_idle(timeout: float = 120) -> None:
  """Until the daemon has run every task (it exits when idle)."""
  deadline = time.time() + timeout
  while os.path.exists(os.path.join(home(), "daemon.pid")):
    if time.time() > deadline:
      raise TimeoutError("the fake SLURM still runs tasks")
    time.sleep(TICK_S)


def stop_daemon() -> None:
  """A test's cleanup: the daemon and the tasks it runs, by their process ids."""
  pid_file = os.path.join(home(), "daemon.pid")
  if os.path.exists(pid_file):
    with contextlib.suppress(ProcessLookupError, ValueError):
      os.kill(int(open(pid_file).read()), signal.SIGKILL)
  with contextlib.suppress(FileNotFoundError), state() as s:
    for job in s["jobs"].values():
      for task in job["tasks"].values():
        if task.get("pid"):
          with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(task["pid"], signal.SIGKILL)


if __name__ == "__main__":
  if sys.argv[1] == "daemon":
    sys.exit(daemon())
  sys.exit(COMMANDS[sys.argv[1]](sys.argv[2:]))
