"""The state of every point of a sweep directory, and the files that record it.

    SWEEP_DIR/
      sweep.json            the sweep config and each launch (time, host, command)
      status.json           the runner's record per point: state, attempt, pid, host, start, end, message,
                            and its cost so far (wall_s_spent, device_s_spent: experiments/sweep/cost.py)
      sweep.lock            held (flock) by the live runner; names its pid, host and start time
      results.csv           the results table (experiments/sweep/collect.py), rewritten as points end
      estimate.json         the dry run's estimate of every point (experiments/sweep/cost.py)
      <point>/point.json    what the point computes (config + overrides) and its plan
      <point>/record.json   the record of a point run on its own (--point: a SLURM array task, a TPU
                            slice of a pool), with a heartbeat while it runs
      <point>/point.lock    held (flock) by whoever runs the point: one runner per point
      <point>/...           the point's lm.main workdir: config.json, metrics.jsonl, checkpoints/, summary.json
      <point>/log.txt       the point's output, appended over attempts (log.host<i>.txt on other hosts)

States: pending (never started), running, preempted (stopped with a checkpoint; or its runner
died: it resumes), finished, diverged, failed. finished and diverged are final: a relaunch
skips them. A process that exits non-zero is never finished, whatever its summary.json says
(it is failed, and runs again). Every other point is run again and lm.main resumes it from its last checkpoint.
A point's summary.json (written by lm.main) is the truth about its outcome; status.json adds
what summary.json cannot say (running, a failure before training started, the attempt count).
Only the runner that holds sweep.lock (process 0 of a multi-host sweep) writes the sweep-level
files; a point run on its own (--point) writes only its record.json, and results.csv under
results.lock. A point's record is the newer of status.json's and its record.json (by start), so
--status and collect read the same whatever ran the points. A running record.json is alive while
its heartbeat is younger than STALE_S; a running status.json record while sweep.lock is held.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
import time

STATES = ("pending", "running", "preempted", "finished", "diverged", "failed")
FINAL = ("finished", "diverged")
RECORD = "record.json"
HEARTBEAT_S = 30.0          # a point run on its own rewrites its record.json this often
STALE_S = 4 * HEARTBEAT_S   # ... and is taken for dead (its task or slice gone) after this long without


def now() -> str:
  return datetime.datetime.now().isoformat(timespec="seconds")


def read_json(path: str) -> dict | None:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def write_json(path: str, obj) -> None:
  """Atomic: a reader (or a runner killed mid-write) sees the old file or the new one."""
  tmp = f"{path}.{socket.gethostname()}.{os.getpid()}.tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)


def summary(point_dir: str) -> dict | None:
  return read_json(os.path.join(point_dir, "summary.json"))


def summary_time(point_dir: str) -> float:
  try:
    return os.path.getmtime(os.path.join(point_dir, "summary.json"))
  except OSError:
    return 0.0


def point_state(point_dir: str, record: dict | None, runner_alive: bool) -> str:
  """The state of one point from its summary.json and the runner's record of it."""
  s = summary(point_dir)
  record = record or {}
  started = record.get("started_ts", 0.0)
  if record.get("state") == "running":
    if heartbeat_alive(record) if "heartbeat_ts" in record else runner_alive:
      return "running"
    if s and summary_time(point_dir) >= started:
      return s["status"]  # its runner died; the point itself stopped and said how (SIGTERM: preempted)
    return "preempted"     # killed with its runner: it resumes from its last checkpoint
  if exited_badly(record):
    return "failed"
  if s and summary_time(point_dir) >= started:
    return s["status"]
  return record.get("state") or ("preempted" if s else "pending")


def heartbeat_alive(record: dict) -> bool:
  return time.time() - record.get("heartbeat_ts", 0.0) < STALE_S


def exited_badly(record: dict | None) -> bool:
  """The last attempt's process failed (non-zero exit), whatever summary.json says."""
  return bool(record) and record.get("state") == "failed" and record.get("returncode") not in (0, None)


def should_run(point_dir: str, record: dict | None = None) -> bool:
  """The relaunch rule: from summary.json and the last attempt's record (status.json, which
  every host of a multi-host sweep reads before any of them starts a point, so all agree)."""
  s = summary(point_dir)
  return exited_badly(record) or not (s and s.get("status") in FINAL)


def pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _cmdline(pid) -> list[str]:
  try:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
      return f.read().decode(errors="replace").split("\0")
  except OSError:
    return []


def _parent(pid) -> int:
  try:
    with open(f"/proc/{pid}/stat") as f:
      return int(f.read().rsplit(")", 1)[1].split()[1])  # the field after the state
  except (OSError, ValueError, IndexError):
    return 0


def orphans(sweep_dir: str) -> list[tuple[int, str]]:
  """(pid, point) of lm.main processes on this host in this sweep's workdirs whose runner is
  gone (their parent is no experiments.sweep: they were re-parented when it died). Points
  of a live runner, e.g. another host's of a multi-host sweep simulated on one machine, are not."""
  found, prefix = [], f"--workdir={os.path.abspath(sweep_dir)}{os.sep}"
  for pid in filter(str.isdigit, os.listdir("/proc") if os.path.isdir("/proc") else []):
    args = _cmdline(pid)
    workdir = next((a[len(prefix):] for a in args if a.startswith(prefix)), None)
    if "lm.main" in args and workdir and "experiments.sweep" not in _cmdline(_parent(pid)):
      found.append((int(pid), workdir))
  return found


class Lock:
  """An exclusive flock on SWEEP_DIR/sweep.lock: one runner per sweep directory. The kernel
  drops it when its holder dies, however it dies, so a lock left behind is never stale.
  On a filesystem without locks (gcsfuse) the runner goes on without one, and says so."""

  def __init__(self, directory: str, name: str = "sweep.lock"):
    self.path = os.path.join(directory, name)
    self._f = None
    self.unsupported = None  # the OSError of a filesystem that cannot lock

  def _try(self, f) -> bool:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
      return True
    except BlockingIOError:
      return False
    except OSError as e:  # ENOLCK, ENOSYS, EOPNOTSUPP: no locks here
      self.unsupported = e
      return True

  def acquire(self) -> bool:
    f = open(self.path, "a+")
    if not self._try(f):
      f.close()
      return False
    f.seek(0)
    f.truncate()
    f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": now()}) + "\n")
    f.flush()
    self._f = f
    return True

  def held_elsewhere(self) -> bool:
    """True while another live runner holds it (checked by taking it for a moment)."""
    if self._f is not None or not os.path.exists(self.path):
      return False
    with open(self.path) as f:
      free = self._try(f)
      if free and self.unsupported is None:
        fcntl.flock(f, fcntl.LOCK_UN)
    return not free

  def owner(self) -> dict:
    try:
      with open(self.path) as f:
        return json.loads(f.read() or "{}")
    except (OSError, ValueError):
      return {}

  def release(self) -> None:
    if self._f is not None:
      if self.unsupported is None:
        fcntl.flock(self._f, fcntl.LOCK_UN)
      self._f.close()
      self._f = None


def status_path(sweep_dir: str) -> str:
  return os.path.join(sweep_dir, "status.json")


def read_records(sweep_dir: str) -> dict[str, dict]:
  """point -> its last attempt's record: status.json's or the point's record.json, the later started."""
  records = (read_json(status_path(sweep_dir)) or {}).get("points", {})
  for name in point_dirs(sweep_dir):
    own = read_json(os.path.join(sweep_dir, name, RECORD))
    if own and own.get("started_ts", 0.0) >= records.get(name, {}).get("started_ts", 0.0):
      records[name] = own
  return records


def write_point_record(point_dir: str, record: dict) -> None:
  write_json(os.path.join(point_dir, RECORD), record)


@contextlib.contextmanager
def results_lock(sweep_dir: str):
  """Serialises rewrites of results.csv by runners of single points on many hosts: each takes
  the lock after its point's summary.json is written, so the last to take it sees every point."""
  with open(os.path.join(sweep_dir, "results.lock"), "a") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX)
    except OSError:  # no locks on this filesystem (gcsfuse): `collect` rebuilds the table any time
      pass
    yield


def write_records(sweep_dir: str, records: dict[str, dict]) -> None:
  write_json(status_path(sweep_dir), {"updated": now(), "points": records})


def point_dirs(sweep_dir: str) -> list[str]:
  """Names of the point directories (those with a point.json) in a sweep directory."""
  if not os.path.isdir(sweep_dir):
    return []
  return sorted(n for n in os.listdir(sweep_dir) if os.path.isfile(os.path.join(sweep_dir, n, "point.json")))


def states(sweep_dir: str, names: list[str], runner_alive: bool | None = None) -> dict[str, str]:
  if runner_alive is None:
    runner_alive = Lock(sweep_dir).held_elsewhere()
  records = read_records(sweep_dir)
  return {n: point_state(os.path.join(sweep_dir, n), records.get(n), runner_alive) for n in names}


def table(sweep_dir: str, names: list[str], runner_alive: bool | None = None) -> str:
  """One line per point: state, steps reached / planned, attempts, eval loss, wall time, note."""
  from configs.ladder import human
  records = read_records(sweep_dir)
  st = states(sweep_dir, names, runner_alive)
  rows = [("point", "state", "steps", "tries", "N", "eval_loss", "wall_s", "note")]
  for n in names:
    d = os.path.join(sweep_dir, n)
    plan, s, r = read_json(os.path.join(d, "point.json")) or {}, summary(d) or {}, records.get(n, {})
    done = s.get("steps") if s else 0
    rows.append((n, st[n], f"{done}/{plan.get('steps', '?')}", str(r.get("attempt", 0)),
                 human(plan["params_nonembedding"]) if plan.get("params_nonembedding") else "",
                 f"{s['eval_loss']:.4f}" if s.get("eval_loss") is not None else "",
                 f"{s['wall_s']:.0f}" if s.get("wall_s") is not None else "", r.get("message", "")[:60]))
  widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
  lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
  counts = {k: list(st.values()).count(k) for k in STATES if k in st.values()}
  lines.append("  ".join(f"{k} {v}" for k, v in counts.items()) or "no points")
  return "\n".join(lines)
