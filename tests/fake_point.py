"""A stand-in for `python -m experiments.sweep ... --point=NAME` in the fast launcher tests: it
writes what a point run on its own writes (point.json, record.json, summary.json) after
FAKE_POINT_S seconds (a point started while the file $FAKE_POINT_HOLD exists: never), or a
'preempted' summary and exit status 75 on SIGTERM, and appends
'start NAME T' and 'end NAME T STATE' to $FAKE_POINTS_LOG so a test can count the points that
ran at once. The real per-point runner is tested with real training in tests/test_cluster_sweeps.py."""

import json
import os
import signal
import sys
import time


def flag(name: str) -> str:
  return next(a.split("=", 1)[1] for a in sys.argv if a.startswith(f"--{name}="))


def main() -> int:
  sweep_dir, name = flag("sweep_dir"), flag("point")
  d = os.path.join(sweep_dir, name)
  os.makedirs(d, exist_ok=True)
  record_path = os.path.join(d, "record.json")
  record = json.load(open(record_path)) if os.path.exists(record_path) else {}
  summary_path = os.path.join(d, "summary.json")
  if os.path.exists(summary_path) and json.load(open(summary_path))["status"] == "finished":
    return 0
  devices = int(os.environ.get("LM_SWEEP_DEVICES", "1"))
  with open(os.environ["FAKE_POINT_RECORDS"]) as f:  # what the real runner writes: the plan's record
    plan = json.load(f)[name]
  with open(os.path.join(d, "point.json"), "w") as f:
    json.dump(plan, f)
  start = time.time()
  record.update(state="running", attempt=record.get("attempt", 0) + 1, started_ts=start, heartbeat_ts=start,
                devices=devices, slurm_job=os.environ.get("SLURM_JOB_ID"), tpu_slice=os.environ.get("LM_SWEEP_SLICE"))
  json.dump(record, open(record_path, "w"))
  stopped = []
  signal.signal(signal.SIGTERM, lambda *_: stopped.append(1))
  deadline = start + float(os.environ.get("FAKE_POINT_S", "1"))
  held = os.path.exists(os.environ.get("FAKE_POINT_HOLD", "/nonexistent"))  # then it ends only on SIGTERM
  log = open(os.environ["FAKE_POINTS_LOG"], "a")
  log.write(f"start {name} {start}\n" + (f"held {name} {start}\n" if held else ""))
  log.flush()
  while (time.time() < deadline or held) and not stopped:
    time.sleep(0.02)
  state = "preempted" if stopped else "finished"
  end = time.time()
  with open(summary_path, "w") as f:
    json.dump({"status": state, "steps": plan["steps"] if not stopped else 1, "wall_s": end - start,
               "device_count": devices, "device_kind": "fake"}, f)
  record.update(state=state, returncode=75 if stopped else 0, ended_ts=end, closed_ts=start,
                wall_s_spent=record.get("wall_s_spent", 0.0) + end - start,
                device_s_spent=record.get("device_s_spent", 0.0) + (end - start) * devices)
  record.pop("heartbeat_ts")
  json.dump(record, open(record_path, "w"))
  log.write(f"end {name} {end} {state}\n")
  return 75 if stopped else 0


if __name__ == "__main__":
  sys.exit(main())
