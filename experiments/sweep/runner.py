"""The processes of a sweep: each point is one `python -m lm.main` child, `parallel` at a time.

    runner = Runner(sweep_dir, points, parallel, index, log, shares, per_point)
    runner.run(todo)      # returns when every point of `todo` has ended, or after a signal

A point's output goes to SWEEP_DIR/<point>/log.txt (log.host<i>.txt on host i > 0 of a multi-host
sweep). Only the writer (index 0) records state: the whole sweep's records in status.json, or,
with per_point (one point run on its own by a scheduler's task: --point), that point's
record.json, rewritten every HEARTBEAT_S while it runs so that a reader can tell a live point
from one whose task or slice is gone. Whoever runs a point holds its point.lock (one runner per
point, whatever ran it); a point held by another runner is skipped.

Order: a cooldown branch (plan.py, cooldown_fraction) starts once its stable point has finished
(its checkpoint is what the branch starts from); until then the next ready point goes first. A
branch whose stable point ended otherwise (failed, diverged, or not run now) is not started and
is listed as blocked.

Signals: the first SIGTERM or Ctrl-C is passed to the running points as SIGTERM (lm.main saves
a checkpoint and stops: 'preempted') and no new point starts; a second one sends SIGKILL. If the
runner itself is SIGKILLed its points get SIGTERM from the kernel (PR_SET_PDEATHSIG).

Cores: given `shares` (core_shares), each running point's affinity mask is a share no other
running point holds. XLA:CPU sizes its Eigen pool by that mask (tf_XLAEigen threads: 2 on this
2-core host, 1 under a 1-core mask; measured 2026-12, jax 0.10.2), the kernel keeps every other
thread (grain, numpy) inside it, and lm measures the peak FLOP/s its MFU divides by on the
cores it was given (lm/flops.py:device_key).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time

from experiments.sweep import cost
from experiments.sweep import plan as sweep_plan
from experiments.sweep import status as status_lib
from lm import distributed  # --coordinator_address, --num_processes, --process_id: passed on to every point

POLL_S = 0.2
ORPHAN_WAIT_S = 600  # a previous runner's point, told to stop, may take this long to checkpoint


def passthrough_flags() -> list[str]:
  return [f"--{name}={value}" for name, value in distributed.process_flags().items() if value is not None]


def executor() -> dict:
  """What runs this process, as a record shows it: a SLURM job (array task, restart) or a TPU slice."""
  env = os.environ
  if env.get("SLURM_JOB_ID"):
    job = env.get("SLURM_ARRAY_JOB_ID", env["SLURM_JOB_ID"])
    task = env.get("SLURM_ARRAY_TASK_ID")
    return {"slurm_job": f"{job}_{task}" if task else job, "slurm_restart": int(env.get("SLURM_RESTART_COUNT", 0))}
  if env.get("LM_SWEEP_SLICE"):  # set by experiments/launch/tpu.py's pool
    return {"tpu_slice": env["LM_SWEEP_SLICE"]}
  return {}


def core_shares(cores: list[int], parallel: int) -> list[list[int]] | None:
  """`parallel` disjoint, contiguous shares of `cores` (the first ones one larger when they do not
  divide), or None when there are fewer cores than points (they then share all of them)."""
  if parallel <= 1 or len(cores) < parallel:
    return None
  size, extra = divmod(len(cores), parallel)
  bounds = [i * size + min(i, extra) for i in range(parallel + 1)]
  return [cores[bounds[i]:bounds[i + 1]] for i in range(parallel)]


def _in_child(parent: int, cores: list[int] | None):
  """In the child before exec: its share of the cores, and SIGTERM when the runner dies, even by SIGKILL (Linux)."""
  def hook():
    if cores:
      os.sched_setaffinity(0, cores)
    try:
      ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
      return
    if os.getppid() != parent:  # the runner died before prctl took effect
      os.kill(os.getpid(), signal.SIGTERM)
  return hook


def wait_for_orphans(sweep_dir: str, log, names=None) -> None:
  """SIGTERM the lm.main processes an earlier runner on this host left in these points, and wait."""
  keep = (lambda n: True) if names is None else (lambda n: n in names)
  left = [(pid, n) for pid, n in status_lib.orphans(sweep_dir) if keep(n)]
  if not left:
    return
  log(f"waiting for {len(left)} point(s) of an earlier runner to save a checkpoint and exit: "
      + ", ".join(f"{name} (pid {pid})" for pid, name in left))
  for pid, _ in left:
    os.kill(pid, signal.SIGTERM)  # what the kernel sent when their runner died; lm.main stops once
  deadline = time.time() + ORPHAN_WAIT_S
  while [o for o in status_lib.orphans(sweep_dir) if keep(o[1])] and time.time() < deadline:
    time.sleep(1)
  for pid, name in status_lib.orphans(sweep_dir):
    if keep(name):
      log(f"{name} (pid {pid}) did not exit in {ORPHAN_WAIT_S} s: SIGKILL (it resumes from its last checkpoint)")
      os.kill(pid, signal.SIGKILL)


class Runner:
  """Runs the points that are not final, `parallel` at a time; only the writer records state."""

  def __init__(self, sweep_dir: str, points, parallel: int, index: int, log=print, shares=None,
               per_point: bool = False):
    self.sweep_dir, self.points, self.parallel, self.index = sweep_dir, points, parallel, index
    self.shares = shares  # core_shares(): one per running point, or None (not pinned)
    self.per_point = per_point
    self.writer = index == 0
    self.log = log
    self.records = status_lib.read_records(sweep_dir) if self.writer else {}
    self.running: dict[str, tuple[subprocess.Popen, object]] = {}
    self.cores: dict[str, list[int]] = {}  # the share each running point holds
    self.locks: dict[str, status_lib.Lock] = {}
    self.ended: list[str] = []  # points that ended in this run, in order
    self.signals = 0
    self.beat = time.time()

  def point_dir(self, p) -> str:
    return os.path.join(self.sweep_dir, p.name)

  def log_name(self) -> str:
    return "log.txt" if self.writer else f"log.host{self.index}.txt"

  def save(self, names=()):
    """Write the records (all of them, or with per_point the named points' record.json) and results.csv."""
    if not self.writer:
      return
    from experiments.sweep import collect  # pandas: imported only by the host that writes results.csv
    if self.per_point:
      for n in names:
        status_lib.write_point_record(os.path.join(self.sweep_dir, n), self.records[n])
      with status_lib.results_lock(self.sweep_dir):
        collect.write(self.sweep_dir)
    else:
      status_lib.write_records(self.sweep_dir, self.records)
      collect.write(self.sweep_dir)

  def _on_signal(self, signum, frame):
    del frame
    self.signals += 1
    how = signal.SIGTERM if self.signals == 1 else signal.SIGKILL
    self.log(f"{signal.Signals(signum).name}: {how.name} to {len(self.running)} running point(s); "
             + ("they save a checkpoint and stop; no new points start" if how == signal.SIGTERM else "now"))
    for proc, _ in self.running.values():
      if proc.poll() is None:
        proc.send_signal(how)

  def claim(self, p) -> bool:
    """Take the point's lock (the writer only); False if another live runner holds it."""
    if not self.writer:
      return True
    lock = status_lib.Lock(self.point_dir(p), "point.lock")
    if not lock.acquire():
      owner = lock.owner()
      self.log(f"skip  {p.name}: another runner holds its point.lock (pid {owner.get('pid')} on "
               f"{owner.get('host')} since {owner.get('since')})")
      return False
    self.locks[p.name] = lock
    return True

  def start(self, p):
    d = self.point_dir(p)
    os.makedirs(d, exist_ok=True)
    if not self.claim(p):
      return
    record = self.records.setdefault(p.name, {})
    if record.get("state") == "running":  # its runner died: the attempt ended when the point last wrote
      cost.close_attempt(record, d, cost.last_sign_of_life(d, record))
    attempt = record.get("attempt", 0) + 1
    argv = [sys.executable, *p.argv(os.path.abspath(d)), *passthrough_flags()]
    cores = None
    if self.shares:
      cores = next(c for c in self.shares if c not in self.cores.values())
      self.cores[p.name] = cores
    log = open(os.path.join(d, self.log_name()), "a")
    log.write(f"==== attempt {attempt} on {socket.gethostname()} at {status_lib.now()}: {' '.join(argv)}\n")
    log.flush()
    proc = subprocess.Popen(argv, cwd=sweep_plan.REPO, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True,
                            preexec_fn=_in_child(os.getpid(), cores))
    now = time.time()
    devices = os.environ.get("LM_SWEEP_DEVICES")  # the allocation, as a launcher's script states it
    record.update(state="running", attempt=attempt, pid=proc.pid, host=socket.gethostname(),
                  started=status_lib.now(), started_ts=now, ended=None, returncode=None, message="",
                  cores=cores, **executor(), **({"heartbeat_ts": now} if self.per_point else {}),
                  **({"devices": int(devices)} if devices else {}))
    self.running[p.name] = (proc, log)
    self.log(f"start {p.name} (attempt {attempt}, {p.steps} steps, pid {proc.pid}"
             + (f", cores {','.join(map(str, cores))})" if cores else ")"))
    self.save([p.name])

  def finish(self, p, rc: int):
    proc, log = self.running.pop(p.name)
    self.cores.pop(p.name, None)
    log.close()
    d = self.point_dir(p)
    record = self.records[p.name]
    s = status_lib.summary(d) if status_lib.summary_time(d) >= record["started_ts"] else None
    if s and s["status"] == "finished" and rc != 0:  # finished means the whole process succeeded
      state, message = "failed", (f"exit status {rc} after summary.json said finished: "
                                  + (_last_line(os.path.join(d, self.log_name())) or "no output"))
    elif s:
      state, message = s["status"], s.get("error") or ""
    elif self.signals:
      state, message = "preempted", f"stopped before training began (exit status {rc})"
    else:
      state, message = "failed", _last_line(os.path.join(d, self.log_name())) or f"exit status {rc}"
    cost.close_attempt(record, d, time.time())
    record.pop("heartbeat_ts", None)
    record.update(state=state, ended=status_lib.now(), returncode=rc, message=message)
    self.ended.append(p.name)
    self.log(f"end   {p.name}: {state}" + (f" ({message})" if message else "")
             + (f", eval_loss {s['eval_loss']:.4f}" if s and s.get("eval_loss") is not None else ""))
    self.save([p.name])
    if p.name in self.locks:
      self.locks.pop(p.name).release()

  def heartbeat(self):
    if self.per_point and self.writer and time.time() - self.beat >= status_lib.HEARTBEAT_S:
      self.beat = time.time()
      for name in self.running:
        self.records[name]["heartbeat_ts"] = self.beat
        status_lib.write_point_record(os.path.join(self.sweep_dir, name), self.records[name])

  def waiting_on(self, p, queue) -> str | None:
    """Why a branch cannot start yet ('wait') or at all ('blocked: ...'); None: it can."""
    if not p.after:
      return None
    if p.after in self.running or any(q.name == p.after for q in queue):
      return "wait"
    state = status_lib.states(self.sweep_dir, [p.after], runner_alive=False).get(p.after)
    return None if state == "finished" else f"blocked: its stable point {p.after} is {state}"

  def run(self, todo) -> None:
    previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
      queue = list(todo)
      while queue or self.running:
        while queue and len(self.running) < self.parallel and not self.signals:
          why = {q.name: self.waiting_on(q, queue) for q in queue}
          for q in [q for q in queue if (why[q.name] or "").startswith("blocked")]:
            self.log(f"skip  {q.name}: {why[q.name]}")
            queue.remove(q)
          ready = [q for q in queue if why[q.name] is None]
          if not ready:
            break
          queue.remove(ready[0])
          self.start(ready[0])
        if self.signals:
          queue = []
        for name, (proc, _) in list(self.running.items()):
          rc = proc.poll()
          if rc is not None:
            self.finish(next(p for p in self.points if p.name == name), rc)
        self.heartbeat()
        time.sleep(POLL_S)
    finally:
      for sig, handler in previous.items():
        signal.signal(sig, handler)
      for lock in self.locks.values():
        lock.release()


def _last_line(path: str) -> str:
  try:
    with open(path, errors="replace") as f:
      lines = [l.strip() for l in f.readlines()[-40:] if l.strip() and not l.startswith("====")]
  except OSError:
    return ""
  return lines[-1] if lines else ""
