"""Run a sweep: every point of a sweep config is one `python -m lm.main` in its own workdir.

    python -m experiments.sweep --config=experiments/sweeps/isoflop_cpu.py --sweep_dir=DIR [--dry_run] [--parallel=N]
    python -m experiments.sweep --status --sweep_dir=DIR       # each point's state, and nothing else

A sweep config (experiments/sweep/plan.py lists its fields) is a grid of models x token budgets
or an IsoFLOP set (for each FLOP budget C, every model with D = C / flops-per-token). Its fields
can be overridden like lm.main's: --config.budgets="(1e12, 3e12)". Each point runs as a separate
process (a crash or divergence of one cannot take down the others), one at a time or --parallel
at once, with its output in SWEEP_DIR/<point>/log.txt; results.csv is rewritten as points end.
With --parallel=N each running point is pinned to its own 1/N of the host's cores (its affinity
mask; --nopin_cores to share them): XLA:CPU sizes its thread pool by the mask, and lm measures
its peak FLOP/s, hence its MFU, on the cores it was given (lm/flops.py:device_key).

Relaunch = the same command. Finished and diverged points are skipped; every other point (never
started, preempted, failed, or killed together with an earlier runner) runs again, and lm.main
resumes it from its last checkpoint. A relaunch whose config would change what an existing point
computes is refused (new --sweep_dir, or delete that point's directory). One runner per sweep
directory (sweep.lock). SIGTERM or Ctrl-C: the runner passes SIGTERM to its running points, which
save a checkpoint and stop ('preempted'), records that and exits 0. SIGKILL: the points get
SIGTERM from the kernel (PR_SET_PDEATHSIG) and do the same; the relaunch waits for them to exit.

Multi-host (the launchers run this same command on every host of a slice or SLURM job): each host
runs the same points in the same order, one at a time (--parallel is 1), each point's lm.main
joining the others' in one jax.distributed job, so the hosts move in lockstep: a point starts
when every host has started it (jax.distributed.initialize waits for all processes). Which points
run is decided once at start from the points' summary.json files (shared storage), so every host
decides the same. Only process 0 takes the lock and writes sweep-level files (sweep.json,
status.json, point.json, results.csv); host i > 0 logs to <point>/log.host<i>.txt. The process
index comes from --process_id (passed on to lm.main with --coordinator_address and
--num_processes), SLURM_PROCID, or on a Cloud TPU VM TPU_WORKER_ID or the metadata server's
agent-worker-number (what jax.distributed reads there). Multi-slice (Megascale) jobs are not supported.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time

from absl import app
from absl import flags
from ml_collections import config_flags

from experiments.sweep import dry_run
from experiments.sweep import plan as sweep_plan
from experiments.sweep import status as status_lib
from lm import distributed  # --coordinator_address, --num_processes, --process_id: passed on to every point

_CONFIG = config_flags.DEFINE_config_file("config", None, "Sweep config file, e.g. experiments/sweeps/isoflop_cpu.py.")
_SWEEP_DIR = flags.DEFINE_string("sweep_dir", None, "Directory of the sweep: one workdir per point, status, results.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the plan (N, D, C, steps, memory, estimated time); run nothing.")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "Points run at once on this host (1 on a multi-host sweep).")
_STATUS = flags.DEFINE_bool("status", False, "Print each point's state and exit.")
_PROBE = flags.DEFINE_bool("probe", True, "Dry run: time a few train steps of each model shape.")
_PIN = flags.DEFINE_bool("pin_cores", True, "With --parallel > 1: give each running point its own share of this "
                         "host's cores (its affinity mask), which XLA:CPU sizes its thread pool by and lm measures "
                         "its peak and MFU against.")
flags.mark_flags_as_required(["sweep_dir"])

POLL_S = 0.2
ORPHAN_WAIT_S = 600  # a previous runner's point, told to stop, may take this long to checkpoint


def host_role() -> tuple[int, int]:
  """(process index, process count) of this host in a multi-host sweep; (0, 1) alone."""
  given = distributed.process_flags()
  if given["process_id"] is not None:
    return given["process_id"], given["num_processes"] or 1
  cluster = distributed.detected_cluster()
  if cluster == "slurm":
    return int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"])
  if cluster == "tpu":
    hosts = [h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
    if hosts and os.environ.get("TPU_WORKER_ID", "").isdigit():
      return int(os.environ["TPU_WORKER_ID"]), len(hosts)
    worker, endpoints = _tpu_metadata("agent-worker-number"), _tpu_metadata("worker-network-endpoints")
    if worker is not None and worker.strip().isdigit() and endpoints:  # what jax.distributed reads on a TPU VM
      return int(worker), len(endpoints.split(","))
    raise SystemExit("experiments.sweep: on a Cloud TPU VM, but neither TPU_WORKER_ID nor the metadata server "
                     "says which host this is; pass --process_id and --num_processes.")
  return 0, 1


def _tpu_metadata(key: str) -> str | None:
  """A Cloud TPU VM's instance attribute (agent-worker-number, worker-network-endpoints)."""
  import urllib.request
  request = urllib.request.Request(
      f"http://metadata.google.internal/computeMetadata/v1/instance/attributes/{key}",
      headers={"Metadata-Flavor": "Google"})
  try:
    with urllib.request.urlopen(request, timeout=5) as response:
      return response.read().decode()
  except OSError:
    return None


def passthrough_flags() -> list[str]:
  return [f"--{name}={value}" for name, value in distributed.process_flags().items() if value is not None]


def core_shares(cores: list[int], parallel: int) -> list[list[int]] | None:
  """`parallel` disjoint, contiguous shares of `cores` (the first ones one larger when they do not
  divide), or None when there are fewer cores than points (they then share all of them)."""
  if parallel <= 1 or len(cores) < parallel:
    return None
  size, extra = divmod(len(cores), parallel)
  bounds = [i * size + min(i, extra) for i in range(parallel + 1)]
  return [cores[bounds[i]:bounds[i + 1]] for i in range(parallel)]


def _in_child(parent: int, cores: list[int] | None):
  """In the child before exec: its share of the cores, and SIGTERM when the runner dies, even by
  SIGKILL (Linux). XLA:CPU sizes its Eigen pool by the affinity mask (tf_XLAEigen threads: 2 on
  this 2-core host, 1 under a 1-core mask, measured 2026-12, jax 0.10.2), and the kernel keeps
  every other thread (grain, numpy) inside it."""
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


def wait_for_orphans(sweep_dir: str, log) -> None:
  left = status_lib.orphans(sweep_dir)
  if not left:
    return
  log(f"waiting for {len(left)} point(s) of an earlier runner to save a checkpoint and exit: "
      + ", ".join(f"{name} (pid {pid})" for pid, name in left))
  for pid, _ in left:
    os.kill(pid, signal.SIGTERM)  # what the kernel sent when their runner died; lm.main stops once
  deadline = time.time() + ORPHAN_WAIT_S
  while status_lib.orphans(sweep_dir) and time.time() < deadline:
    time.sleep(1)
  for pid, name in status_lib.orphans(sweep_dir):
    log(f"{name} (pid {pid}) did not exit in {ORPHAN_WAIT_S} s: SIGKILL (it resumes from its last checkpoint)")
    os.kill(pid, signal.SIGKILL)


class Runner:
  """Runs the points that are not final, `parallel` at a time; only the writer records state."""

  def __init__(self, sweep_dir: str, points, parallel: int, index: int, log=print, shares=None):
    self.sweep_dir, self.points, self.parallel, self.index = sweep_dir, points, parallel, index
    self.shares = shares  # core_shares(): one per running point, or None (not pinned)
    self.writer = index == 0
    self.log = log
    self.records = status_lib.read_records(sweep_dir) if self.writer else {}
    self.running: dict[str, tuple[subprocess.Popen, object]] = {}
    self.cores: dict[str, list[int]] = {}  # the share each running point holds
    self.signals = 0

  def point_dir(self, p) -> str:
    return os.path.join(self.sweep_dir, p.name)

  def log_name(self) -> str:
    return "log.txt" if self.writer else f"log.host{self.index}.txt"

  def save(self):
    if self.writer:
      status_lib.write_records(self.sweep_dir, self.records)
      from experiments.sweep import collect  # pandas: imported only by the host that writes results.csv
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

  def start(self, p):
    d = self.point_dir(p)
    os.makedirs(d, exist_ok=True)
    record = self.records.setdefault(p.name, {})
    if record.get("state") == "running":  # its runner died: the attempt ended when the point last wrote
      status_lib.close_attempt(record, d, status_lib.last_sign_of_life(d, record["started_ts"]))
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
    record.update(state="running", attempt=attempt, pid=proc.pid, host=socket.gethostname(),
                  started=status_lib.now(), started_ts=time.time(), ended=None, returncode=None, message="",
                  cores=cores)
    self.running[p.name] = (proc, log)
    self.log(f"start {p.name} (attempt {attempt}, {p.steps} steps, pid {proc.pid}"
             + (f", cores {','.join(map(str, cores))})" if cores else ")"))
    self.save()

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
    status_lib.close_attempt(record, d, time.time())
    record.update(state=state, ended=status_lib.now(), returncode=rc, message=message)
    self.log(f"end   {p.name}: {state}" + (f" ({message})" if message else "")
             + (f", eval_loss {s['eval_loss']:.4f}" if s and s.get("eval_loss") is not None else ""))
    self.save()

  def run(self, todo) -> None:
    previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
      queue = list(todo)
      while queue or self.running:
        while queue and len(self.running) < self.parallel and not self.signals:
          self.start(queue.pop(0))
        if self.signals:
          queue = []
        for name, (proc, _) in list(self.running.items()):
          rc = proc.poll()
          if rc is not None:
            self.finish(next(p for p in self.points if p.name == name), rc)
        time.sleep(POLL_S)
    finally:
      for sig, handler in previous.items():
        signal.signal(sig, handler)


def _last_line(path: str) -> str:
  try:
    with open(path, errors="replace") as f:
      lines = [l.strip() for l in f.readlines()[-40:] if l.strip() and not l.startswith("====")]
  except OSError:
    return ""
  return lines[-1] if lines else ""


def check_unchanged(sweep_dir: str, points) -> list[str]:
  """Problems: existing points whose recorded identity differs from what the config now says."""
  problems = []
  for p in points:
    old = status_lib.read_json(os.path.join(sweep_dir, p.name, "point.json"))
    if old is not None and {"config": old.get("config"), "overrides": old.get("overrides")} != p.identity():
      was, now = old.get("overrides", {}), p.identity()["overrides"]
      diff = sorted(k for k in set(was) | set(now) if was.get(k) != now.get(k))
      detail = ", ".join(f"{k}: {was.get(k)!r} -> {now.get(k)!r}" for k in diff)
      if old.get("config") != p.config:
        detail = f"config: {old.get('config')} -> {p.config}" + (f", {detail}" if detail else "")
      problems.append(f"{p.name}: {detail}")
  return problems


def write_plan_files(sweep_dir: str, cfg, points) -> None:
  meta = status_lib.read_json(os.path.join(sweep_dir, "sweep.json")) or {"created": status_lib.now(), "launches": []}
  meta.update(name=cfg.name, sweep_config=cfg.to_dict(), points=[p.name for p in points])
  meta["launches"].append({"time": status_lib.now(), "host": socket.gethostname(), "argv": sys.argv})
  status_lib.write_json(os.path.join(sweep_dir, "sweep.json"), meta)
  for p in points:
    path = os.path.join(sweep_dir, p.name, "point.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    status_lib.write_json(path, {"sweep": cfg.name, **p.record()})


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}.")
  from lm.cli import quiet_logs
  quiet_logs()
  sweep_dir = _SWEEP_DIR.value
  if _STATUS.value:
    names = status_lib.point_dirs(sweep_dir)
    print(status_lib.table(sweep_dir, names))
    return 0
  if _CONFIG.value is None:
    raise app.UsageError("--config=experiments/sweeps/<sweep>.py is required (except with --status).")
  cfg = _CONFIG.value
  try:
    points, left_out = sweep_plan.expand(cfg)
  except sweep_plan.SweepError as e:
    sys.exit(f"Sweep config error: {e}")
  if _DRY_RUN.value:
    print(dry_run.report(cfg, points, left_out, sweep_dir, _PARALLEL.value, _PROBE.value))
    return 0
  index, count = host_role()
  parallel = _PARALLEL.value
  if count > 1 and parallel != 1:
    print(f"experiments.sweep: a {count}-host sweep runs one point at a time on every host; --parallel={parallel} "
          "ignored.", flush=True)
    parallel = 1
  prefix = f"[sweep {cfg.name}{f' host {index}/{count}' if count > 1 else ''}]"
  log = lambda text: print(f"{prefix} {text}", flush=True)
  problems = check_unchanged(sweep_dir, points)
  if problems:
    sys.exit(f"Refusing to relaunch: the sweep config now computes {len(problems)} existing point(s) differently "
             f"from what {sweep_dir} holds:\n  " + "\n  ".join(problems)
             + "\nUse a new --sweep_dir, or delete those point directories to run them afresh.")
  os.makedirs(sweep_dir, exist_ok=True)
  lock = status_lib.Lock(sweep_dir)
  if index == 0:
    if not lock.acquire():
      owner = lock.owner()
      sys.exit(f"Another sweep runner holds {lock.path} (pid {owner.get('pid')} on {owner.get('host')} since "
               f"{owner.get('since')}); one runner per sweep directory.")
    if lock.unsupported is not None:
      log(f"cannot lock {lock.path} ({lock.unsupported}); make sure no other runner uses this sweep directory")
    write_plan_files(sweep_dir, cfg, points)
  extra = sorted(set(status_lib.point_dirs(sweep_dir)) - {p.name for p in points})
  if extra and index == 0:
    log(f"{len(extra)} point directories are not in the config (left in place, still collected): {', '.join(extra)}")
  wait_for_orphans(sweep_dir, log)
  records = status_lib.read_records(sweep_dir)  # every host reads the same file: they decide the same
  todo = [p for p in points if status_lib.should_run(os.path.join(sweep_dir, p.name), records.get(p.name))]
  if parallel > 1:  # longest first: the shortest makespan of list scheduling
    todo.sort(key=lambda p: p.flops_per_token["flops_exact"] * p.tokens, reverse=True)
  names = [p.name for p in points] + extra
  log(f"{len(points)} points, {len(points) - len(todo)} final (skipped), {len(todo)} to run, {parallel} at a time"
      + (f"; left out by min/max_steps: {', '.join(n for n, _ in left_out)}" if left_out else ""))
  if index == 0:
    print(status_lib.table(sweep_dir, names, runner_alive=False), flush=True)
  shares = None
  if parallel > 1 and _PIN.value and hasattr(os, "sched_setaffinity"):
    shares = core_shares(sorted(os.sched_getaffinity(0)), parallel)
    log(f"each running point has its own cores: {' | '.join(','.join(map(str, c)) for c in shares)}" if shares else
        f"fewer cores ({len(os.sched_getaffinity(0))}) than --parallel={parallel}: the points share them, unpinned")
  runner = Runner(sweep_dir, points, parallel, index, log, shares)
  try:
    runner.run(todo)
  finally:
    if index == 0:
      runner.save()
      print(status_lib.table(sweep_dir, names, runner_alive=False), flush=True)
      log(f"results: {os.path.join(sweep_dir, 'results.csv')}")
      lock.release()
  final = status_lib.states(sweep_dir, [p.name for p in points], runner_alive=False)
  if runner.signals:
    log("stopped by a signal; the same command resumes the sweep")
    return 0
  return 1 if any(s == "failed" for s in final.values()) else 0
