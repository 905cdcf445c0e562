"""Run a sweep: every point of a sweep config is one `python -m lm.main` in its own workdir.

    python -m experiments.sweep --config=experiments/sweeps/isoflop_cpu.py --sweep_dir=DIR [--dry_run] [--parallel=N]
    python -m experiments.sweep --status --sweep_dir=DIR       # each point's state and the cost, nothing else
    python -m experiments.sweep --config=... --sweep_dir=DIR --point=NAME   # one point (a scheduler's task)
    python -m experiments.sweep --config=... --sweep_dir=DIR --points=A,B   # only these points
    python -m experiments.sweep --config=... --sweep_dir=DIR --plan_json    # the points as JSON (for launchers)

A sweep config (experiments/sweep/plan.py lists its fields) is a grid of models x token budgets
or an IsoFLOP set (for each FLOP budget C, every model with D = C / flops-per-token). Its fields
can be overridden like lm.main's: --config.budgets="(1e12, 3e12)". Each point runs as a separate
process (a crash or divergence of one cannot take down the others), one at a time or --parallel
at once, with its output in SWEEP_DIR/<point>/log.txt; results.csv is rewritten as points end.
With --parallel=N each running point is pinned to its own 1/N of the host's cores (its affinity
mask; --nopin_cores to share them), and its MFU is against that share (runner.py says how).

Relaunch = the same command. Finished and diverged points are skipped; every other point (never
started, preempted, failed, or killed together with an earlier runner) runs again, and lm.main
resumes it from its last checkpoint. A relaunch whose config would change what an existing point
computes is refused (new --sweep_dir, or delete that point's directory). One runner per sweep
directory (sweep.lock) and one per point (point.lock). SIGTERM or Ctrl-C: the runner passes
SIGTERM to its running points, which save a checkpoint and stop ('preempted'), records that and
exits 0. SIGKILL: the points get SIGTERM from the kernel (PR_SET_PDEATHSIG) and do the same; the
relaunch waits for them to exit. At the end it prints the device-hours spent against the dry
run's estimate (estimate.json, written by --dry_run; experiments/sweep/cost.py).

One point (--point=NAME), for a cluster's scheduler (experiments/launch/: a SLURM array task,
a TPU slice of a pool): the same rules for that point alone, with its record in
SWEEP_DIR/<point>/record.json instead of status.json, so any number of points run at once on
different machines and --status and collect read them as they read the local runner's. Exit
status: 0 once the point is final (finished or diverged; also when it already was), 75 when it
stopped before that (preempted: run it again to resume) or is a cooldown branch whose stable
point has not finished (run it again after that one), 1 when it failed.
--plan_json prints the points (names, sizes, memory, state, estimate) as one JSON object and
writes nothing; it refuses a changed config as a relaunch does.

Multi-host (the launchers run this same command on every host of a slice or SLURM job): each host
runs the same points in the same order, one at a time (--parallel is 1), each point's lm.main
joining the others' in one jax.distributed job, so the hosts move in lockstep: a point starts
when every host has started it (jax.distributed.initialize waits for all processes). Which points
run is decided once at start from the points' summary.json files and records (shared storage),
so every host decides the same. Only process 0 takes the locks and writes sweep-level files
(sweep.json, status.json, point.json, results.csv); host i > 0 logs to <point>/log.host<i>.txt.
The process index comes from --process_id (passed on to lm.main with --coordinator_address and
--num_processes), SLURM_PROCID, or on a Cloud TPU VM TPU_WORKER_ID or the metadata server's
agent-worker-number (what jax.distributed reads there). Multi-slice (Megascale) jobs are not supported.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import urllib.request

from absl import app
from absl import flags
from ml_collections import config_flags

from experiments.sweep import cost
from experiments.sweep import dry_run
from experiments.sweep import plan as sweep_plan
from experiments.sweep import runner as runner_lib
from experiments.sweep import status as status_lib
from lm import distributed  # --coordinator_address, --num_processes, --process_id
from lm.cli import quiet_logs

_CONFIG = config_flags.DEFINE_config_file("config", None, "Sweep config file, e.g. experiments/sweeps/isoflop_cpu.py.")
_SWEEP_DIR = flags.DEFINE_string("sweep_dir", None, "Directory of the sweep: one workdir per point, status, results.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the plan (N, D, C, steps, memory, estimated time) and record "
                             "the estimate in SWEEP_DIR/estimate.json; run nothing.")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "Points run at once on this host (1 on a multi-host sweep).")
_STATUS = flags.DEFINE_bool("status", False, "Print each point's state and the cost so far, and exit.")
_PROBE = flags.DEFINE_bool("probe", True, "Dry run: time a few train steps of each model shape.")
_PIN = flags.DEFINE_bool("pin_cores", True, "With --parallel > 1: give each running point its own share of this "
                         "host's cores (its affinity mask), which XLA:CPU sizes its thread pool by and lm measures "
                         "its peak and MFU against.")
_POINT = flags.DEFINE_string("point", None, "Run this point only, on its own (a scheduler's task); exit status 0 "
                             "final, 75 preempted, 1 failed.")
_POINTS = flags.DEFINE_list("points", None, "Run only these points (names as --plan_json lists them).")
_PLAN_JSON = flags.DEFINE_bool("plan_json", False, "Print the points as JSON and exit; writes nothing.")
flags.mark_flags_as_required(["sweep_dir"])

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: the point stopped with a checkpoint; the same command resumes it


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
  request = urllib.request.Request(
      f"http://metadata.google.internal/computeMetadata/v1/instance/attributes/{key}",
      headers={"Metadata-Flavor": "Google"})
  try:
    with urllib.request.urlopen(request, timeout=5) as response:
      return response.read().decode()
  except OSError:
    return None


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


def write_plan_files(sweep_dir: str, cfg, points, launch: bool = True) -> None:
  """sweep.json (with this launch appended; without `launch` only if there is none) and each point.json."""
  path = os.path.join(sweep_dir, "sweep.json")
  meta = status_lib.read_json(path)
  if launch or meta is None:
    meta = meta or {"created": status_lib.now(), "launches": []}
    meta.update(name=cfg.name, sweep_config=cfg.to_dict(), points=sorted(set(meta.get("points", [])) |
                                                                         {p.name for p in points}))
    if launch:
      meta["launches"].append({"time": status_lib.now(), "host": socket.gethostname(), "argv": sys.argv})
    status_lib.write_json(path, meta)
  for p in points:
    point_path = os.path.join(sweep_dir, p.name, "point.json")
    os.makedirs(os.path.dirname(point_path), exist_ok=True)
    status_lib.write_json(point_path, {"sweep": cfg.name, **p.record()})


def plan_json(cfg, points, left_out, sweep_dir: str) -> dict:
  """What a launcher needs to place the points: sizes, memory, state, whether to run, the estimate."""
  exists = os.path.isdir(sweep_dir)
  names = [p.name for p in points]
  states = status_lib.states(sweep_dir, names) if exists else {}
  records = status_lib.read_records(sweep_dir) if exists else {}
  estimate = (status_lib.read_json(os.path.join(sweep_dir, cost.ESTIMATE)) or {}).get("points", {})
  return {"sweep": cfg.name, "sweep_dir": os.path.abspath(sweep_dir), "flops_definition": cfg.get(
              "flops_definition", "flops_exact"),
          "points": [{"name": p.name, "model": p.model, "state": states.get(p.name, "pending"),
                      "run": status_lib.should_run(os.path.join(sweep_dir, p.name), records.get(p.name)),
                      "steps": p.steps, "tokens": p.tokens, "flops": p.flops, "params_total": p.params_total,
                      "params_nonembedding": p.params_nonembedding, "memory_bytes": p.memory_bytes,
                      "estimate_s": (estimate.get(p.name) or {}).get("total_s")} for p in points],
          "left_out": [{"name": n, "why": why} for n, why in left_out]}


def select(points, one: str | None, some: list[str] | None):
  wanted = [one] if one else some
  if not wanted:
    return points
  unknown = [n for n in wanted if n not in {p.name for p in points}]
  if unknown:
    sys.exit(f"experiments.sweep: no point {', '.join(unknown)} in this sweep; its points are "
             f"{', '.join(p.name for p in points)}.")
  return [p for p in points if p.name in wanted]


def run_point(cfg, sweep_dir: str, points, p, index: int, log) -> int:
  """--point: one point on its own; exit status 0 final, EXIT_PREEMPTED stopped, 1 failed."""
  d = os.path.join(sweep_dir, p.name)
  if index == 0:
    os.makedirs(d, exist_ok=True)
    write_plan_files(sweep_dir, cfg, [p], launch=False)
  runner_lib.wait_for_orphans(sweep_dir, log, {p.name})
  record = status_lib.read_records(sweep_dir).get(p.name)
  if not status_lib.should_run(d, record):
    log(f"{p.name}: {status_lib.summary(d)['status']} already; nothing to run")
    return 0
  runner = runner_lib.Runner(sweep_dir, points, 1, index, log, per_point=True)
  waiting = runner.waiting_on(p, [])
  if waiting:  # a cooldown branch before its stable run finished: not failed, to be run again later
    log(f"{p.name}: {waiting}; run its stable point first, then this one again")
    return EXIT_PREEMPTED
  runner.run([p])
  if p.name not in runner.ended:  # another runner holds the point
    return 1
  state = runner.records[p.name]["state"]
  if index == 0:
    log(cost.line(cost.totals(sweep_dir, [p.name])))
  return 0 if state in status_lib.FINAL else EXIT_PREEMPTED if state == "preempted" else 1


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}.")
  quiet_logs()
  sweep_dir = _SWEEP_DIR.value
  if _STATUS.value:
    names = status_lib.point_dirs(sweep_dir)
    print(status_lib.table(sweep_dir, names))
    print(cost.line(cost.totals(sweep_dir, names)))
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
  problems = check_unchanged(sweep_dir, points)
  if problems:
    sys.exit(f"Refusing to relaunch: the sweep config now computes {len(problems)} existing point(s) differently "
             f"from what {sweep_dir} holds:\n  " + "\n  ".join(problems)
             + "\nUse a new --sweep_dir, or delete those point directories to run them afresh.")
  if _PLAN_JSON.value:
    print(json.dumps(plan_json(cfg, points, left_out, sweep_dir), indent=1))
    return 0
  selected = select(points, _POINT.value, _POINTS.value)
  index, count = host_role()
  parallel = _PARALLEL.value
  if count > 1 and parallel != 1:
    print(f"experiments.sweep: a {count}-host sweep runs one point at a time on every host; --parallel={parallel} "
          "ignored.", flush=True)
    parallel = 1
  prefix = f"[sweep {cfg.name}{f' host {index}/{count}' if count > 1 else ''}]"
  log = lambda text: print(f"{prefix} {text}", flush=True)
  if _POINT.value:
    return run_point(cfg, sweep_dir, points, selected[0], index, log)
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
  runner_lib.wait_for_orphans(sweep_dir, log)
  records = status_lib.read_records(sweep_dir)  # every host reads the same files: they decide the same
  todo = [p for p in selected if status_lib.should_run(os.path.join(sweep_dir, p.name), records.get(p.name))]
  if parallel > 1:  # longest first: the shortest makespan of list scheduling
    todo.sort(key=lambda p: p.flops_per_token["flops_exact"] * p.steps_run * p.tokens_per_step, reverse=True)
  names = [p.name for p in points] + extra
  log(f"{len(selected)} points, {len(selected) - len(todo)} final (skipped), {len(todo)} to run, {parallel} at a "
      "time" + (f"; left out by min/max_steps: {', '.join(n for n, _ in left_out)}" if left_out else ""))
  if index == 0:
    print(status_lib.table(sweep_dir, names, runner_alive=False), flush=True)
  shares = None
  if parallel > 1 and _PIN.value and hasattr(os, "sched_setaffinity"):
    shares = runner_lib.core_shares(sorted(os.sched_getaffinity(0)), parallel)
    log(f"each running point has its own cores: {' | '.join(','.join(map(str, c)) for c in shares)}" if shares else
        f"fewer cores ({len(os.sched_getaffinity(0))}) than --parallel={parallel}: the points share them, unpinned")
  runner = runner_lib.Runner(sweep_dir, points, parallel, index, log, shares)
  try:
    runner.run(todo)
  finally:
    if index == 0:
      runner.save()
      print(status_lib.table(sweep_dir, names, runner_alive=False), flush=True)
      log(cost.line(cost.totals(sweep_dir, [p.name for p in points])))
      if any(p.role for p in points):
        log(dry_run.branching_line(points, points[0].flops_definition))
      log(f"results: {os.path.join(sweep_dir, 'results.csv')}")
      lock.release()
  final = status_lib.states(sweep_dir, [p.name for p in selected], runner_alive=False)
  if runner.signals:
    log("stopped by a signal; the same command resumes the sweep")
    return 0
  return 1 if any(s == "failed" for s in final.values()) else 0
