"""What a sweep's points cost in device-time, against what its dry run estimated.

  an attempt   close_attempt: its process's lifetime (wall_s_spent) and lifetime x its devices
               (device_s_spent), added to the point's record when the attempt ends, or, if its
               runner died with it, at the point's last write (last_sign_of_life)
  a point      device_s = summary.json's wall_s x device_count: lm's own training clock, which a
               resumed run carries over from its checkpoint, so it is what an uninterrupted run
               of the point costs; device_s_spent - device_s is what start-ups, compilation,
               the unigram baseline and work lost after the last checkpoint added
  estimate     estimate.json, written by --dry_run: each point's estimated seconds (the probe's
               arithmetic, dry_run.py) and the devices the probe ran on
  totals       over the sweep's points: printed by the runner at the end and by --status
Device-seconds are the devices' time, not money: a scheduler bills what it allocated (SLURM:
the GPUs of a task for its elapsed time; Cloud TPU: a slice's chips from ACTIVE to deleted),
which the launchers report beside these (experiments/launch/).
"""

from __future__ import annotations

import os
import socket

from experiments.sweep import status as status_lib

ESTIMATE = "estimate.json"


def close_attempt(record: dict, point_dir: str, ended_ts: float) -> None:
  """Add the attempt that began at record['started_ts'] to the point's cost: wall_s_spent (its
  process's lifetime) and device_s_spent (lifetime x devices). The devices are those its
  summary.json names if it wrote one, else the last known (record['devices']: a scheduler's
  allocation, or an earlier attempt's); an attempt with none known adds no device-seconds."""
  started = record.get("started_ts")
  if started is None or record.get("closed_ts") == started:
    return  # not started, or counted already
  s = status_lib.summary(point_dir)
  if s and status_lib.summary_time(point_dir) >= started and s.get("device_count"):
    record["devices"], record["device_kind"] = s["device_count"], s.get("device_kind")
  duration = max(0.0, ended_ts - started)
  record["wall_s_spent"] = record.get("wall_s_spent", 0.0) + duration
  if record.get("devices"):
    record["device_s_spent"] = record.get("device_s_spent", 0.0) + duration * record["devices"]
  record["ended_ts"], record["closed_ts"] = ended_ts, started


def last_sign_of_life(point_dir: str, record: dict) -> float:
  """When an attempt whose runner died (no end recorded) last wrote anything: its log, metrics,
  summary or heartbeat."""
  times = [record["started_ts"], record.get("heartbeat_ts", 0.0)]
  for name in os.listdir(point_dir) if os.path.isdir(point_dir) else []:
    if name.startswith("log") or name in ("summary.json", "metrics.jsonl"):
      times.append(os.path.getmtime(os.path.join(point_dir, name)))
  return max(times)


def write_estimate(sweep_dir: str, times: dict[str, dict], devices: int, device_kind: str) -> str:
  """estimate.json: point -> estimated seconds and device-seconds on the dry run's devices."""
  os.makedirs(sweep_dir, exist_ok=True)
  path = os.path.join(sweep_dir, ESTIMATE)
  points = {name: {"total_s": t["total_s"], "devices": devices,
                   "device_s": t["total_s"] * devices if t["total_s"] is not None else None}
            for name, t in times.items()}
  status_lib.write_json(path, {"created": status_lib.now(), "host": socket.gethostname(),
                               "device_kind": device_kind, "devices": devices, "points": points})
  return path


def totals(sweep_dir: str, names: list[str], records: dict[str, dict] | None = None) -> dict:
  """Sums over `names`: device_s_spent (the attempts), device_s (lm's clocks), the estimate."""
  records = status_lib.read_records(sweep_dir) if records is None else records
  estimate = (status_lib.read_json(os.path.join(sweep_dir, ESTIMATE)) or {}).get("points", {})
  out = {"points": len(names), "device_s_spent": 0.0, "device_s": 0.0, "estimate_device_s": 0.0,
         "estimated": 0, "unknown_devices": 0}
  for n in names:
    r, s = records.get(n, {}), status_lib.summary(os.path.join(sweep_dir, n)) or {}
    out["device_s_spent"] += r.get("device_s_spent", 0.0)
    out["unknown_devices"] += bool(r.get("wall_s_spent")) and not r.get("devices")
    if s.get("wall_s") is not None and s.get("device_count"):
      out["device_s"] += s["wall_s"] * s["device_count"]
    if (estimate.get(n) or {}).get("device_s") is not None:
      out["estimate_device_s"] += estimate[n]["device_s"]
      out["estimated"] += 1
  return out


def line(t: dict) -> str:
  """'cost: 0.012 device-hours spent on 12 points (0.010 in lm's training clocks); the dry run estimated 0.011'."""
  text = (f"cost: {t['device_s_spent'] / 3600:.3g} device-hours spent on {t['points']} points "
          f"({t['device_s'] / 3600:.3g} in lm's training clocks)")
  if t["unknown_devices"]:
    text += f"; {t['unknown_devices']} point(s) failed before lm said its devices: not counted"
  if t["estimated"]:
    text += f"; the dry run estimated {t['estimate_device_s'] / 3600:.3g} for {t['estimated']} of them"
  else:
    text += "; no dry-run estimate (--dry_run with this --sweep_dir records one)"
  return text
