"""A sweep on Cloud TPU as a pool of slices, one point at a time on each: `launch.tpu --per_point`.

    python -m experiments.launch.tpu --per_point --max_slices=8 --zone=us-west4-a --accelerator_type=v5litepod-8 \
        --spot --bucket=gs://my-lm --sweep="--config=experiments/sweeps/isoflop.py --sweep_dir=/mnt/my-lm/sweeps/iso"

  plan     `--plan_python -m experiments.sweep <sweep args> --plan_json`, here (so lm must be installed
           where the launcher runs): the points and their sizes; their states too when the sweep_dir
           is readable here (else the slices' runs skip final points themselves, in seconds)
  pool     at most --max_slices slices at once, one thread each. A slice takes the next pending
           point, runs it alone (`experiments.sweep --point`, on every worker of the slice), then
           takes the next one; it is deleted and another created when the next point needs
           another slice type. Each slice is one queued resource, created, shipped and set up as
           tpu.py does for a single run (spot, reserved or on-demand).
  preempt  a point whose run ends in exit status 75 (lm checkpointed on SIGTERM) or whose slice
           leaves ACTIVE goes on a new slice and resumes from its checkpoint, at most
           --max_restarts times; a lost ssh connection on a slice still ACTIVE reruns it there
  the end  every slice is deleted: when the points are done, on any error, on Ctrl-C or SIGTERM
           (the running points are told to stop first). A launcher killed outright leaves its
           slices up, billed: its ledger (<log_dir>/pool.json) lists them, and the next launch
           deletes them before it starts
  cost     chip-hours of every slice from ACTIVE to deleted (what Cloud TPU bills), and how many
           of them ran points; the points' own device-seconds are in the sweep_dir (--status)

Slice type per point: the smallest slice of --accelerator_type's generation whose HBM holds the
point's training memory (--plan_json's memory_bytes: parameters, optimizer state, gradients,
one step's activations) with MEMORY_HEADROOM to spare, and no larger than --accelerator_type
(a point that needs more is refused before anything is created); --fixed_size puts every point
on --accelerator_type. Sizes: v5litepod and v6e -1, -4, -8, -16, ... (chips; -1 to -8 are one
host), v4 and v5p -8, -16, ... (TensorCores, 2 a chip). Relaunch = the same command: points the
ledger or the sweep_dir says are final are skipped.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import threading
import time
from pathlib import Path

from experiments.launch import common
from experiments.launch.common import LaunchError
from experiments.launch.tpu_slice import ACTIVE, LOST, REMOTE_TAR, SSH_LOST, Tpu, wait_active

MEMORY_HEADROOM = 0.7
EXIT_PREEMPTED = 75  # experiments.sweep --point: stopped with a checkpoint
# generation -> (chips per unit of the size suffix, HBM GiB per chip, the sizes offered)
GENERATIONS = {"v6e": (1.0, 32, (1, 4, 8, 16, 32, 64, 128, 256)),
               "v5litepod": (1.0, 16, (1, 4, 8, 16, 32, 64, 128, 256)),
               "v5p": (0.5, 95, (8, 16, 32, 64, 128, 256, 512)),
               "v4": (0.5, 32, (8, 16, 32, 64, 128, 256, 512))}


def slice_for(memory_bytes: float, largest: str, fixed: bool = False) -> tuple[str, int]:
  """(accelerator type, chips) of a point: the smallest size whose HBM x MEMORY_HEADROOM holds it."""
  generation, size = largest.rsplit("-", 1)
  if generation not in GENERATIONS:
    raise LaunchError(f"--per_point sizes slices of {', '.join(GENERATIONS)}; --accelerator_type={largest} is not one.")
  per_unit, hbm, sizes = GENERATIONS[generation]
  if fixed:
    return largest, int(int(size) * per_unit)
  for s in sizes:
    if s <= int(size) and memory_bytes <= s * per_unit * hbm * 2**30 * MEMORY_HEADROOM:
      return f"{generation}-{s}", int(s * per_unit)
  raise LaunchError(f"a point needs {memory_bytes / 2**30:.0f} GiB of HBM, more than {largest} holds with "
                    f"{1 - MEMORY_HEADROOM:.0%} to spare: raise --accelerator_type.")


class Ledger:
  """<log_dir>/pool.json: each point's outcome here, and each slice's life (for cleanup and the cost)."""

  def __init__(self, path: Path, dry_run: bool):
    self.path, self.dry_run = path, dry_run
    self.lock = threading.Lock()
    self.data = json.loads(path.read_text()) if path.exists() else {"points": {}, "slices": {}, "runs": []}

  def update(self, fn):
    with self.lock:
      fn(self.data)
      if not self.dry_run:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.path)

  def alive(self) -> list[str]:
    return [n for n, s in self.data["slices"].items() if s.get("deleted_ts") is None]


class Pool:
  """Threads, one per slice; the queue of points; Ctrl-C stops the runs and deletes every slice."""

  def __init__(self, base, runner: common.Runner, ledger: Ledger, job: common.Job, env: dict[str, str],
               setup: str, code: str, sizes: dict[str, tuple[str, int]], max_restarts: int, poll_s: float,
               run_script):
    self.base, self.runner, self.ledger, self.job, self.env = base, runner, ledger, job, env
    self.setup, self.code, self.sizes, self.max_restarts, self.poll_s = setup, code, sizes, max_restarts, poll_s
    self.run_script = run_script
    self.queue: list[str] = []
    self.lock = threading.Lock()
    self.stop = threading.Event()
    self.failed: list[str] = []

  def say(self, who: str, text: str):
    self.runner.say(f"[{who}] {text}")

  def take(self) -> str | None:
    with self.lock:
      return self.queue.pop(0) if self.queue and not self.stop.is_set() else None

  def slice(self, worker: int, serial: int, kind: str):
    b = self.base
    tpu = Tpu(f"{b.name}-{worker}-{serial}", b.zone, b.project, kind, b.runtime_version, b.provisioning,
              b.create_args)
    self.say(tpu.name, f"create a {kind} slice ({b.provisioning})")
    now = time.time()
    self.ledger.update(lambda d: d["slices"].setdefault(tpu.name, {"type": kind, "created_ts": now}))
    if self.runner.run(tpu.create(), f"{tpu.name}-create") != 0:
      self.ledger.update(lambda d: d["slices"][tpu.name].update(deleted_ts=time.time(), never_created=True))
      return None
    if not wait_active(tpu, self.runner, self.poll_s):
      return tpu  # lost before it was ready: the caller deletes it and tries another
    self.ledger.update(lambda d: d["slices"][tpu.name].update(active_ts=time.time()))
    if (self.runner.run(tpu.scp(self.code, REMOTE_TAR), f"{tpu.name}-ship") or
        self.runner.run(tpu.ssh(self.setup), f"{tpu.name}-setup")):
      return tpu
    tpu.ready = True
    return tpu

  def delete(self, tpu) -> bool:
    self.say(tpu.name, "delete the slice")
    if self.runner.run(tpu.delete(), f"{tpu.name}-delete") != 0:
      return False  # still up: the launch's last step tries again
    self.ledger.update(lambda d: d["slices"][tpu.name].update(deleted_ts=time.time()))
    return True

  def run_point(self, tpu, point: str, chips: int) -> int:
    job = common.Job(self.job.kind, (*self.job.argv, f"--point={point}"), self.job.output_dir)
    env = {**self.env, "LM_SWEEP_SLICE": tpu.name, "LM_SWEEP_DEVICES": str(chips)}
    self.say(tpu.name, f"run {point}")
    start = time.time()
    rc = self.runner.run(tpu.ssh(self.run_script(job, env)), f"{tpu.name}-{point}", stream=False,
                         watch=lambda: tpu.state(self.runner) in LOST, watch_every=max(self.poll_s, 60))
    self.ledger.update(lambda d: d["runs"].append({"slice": tpu.name, "point": point, "start": start,
                                                   "end": time.time(), "rc": rc}))
    return rc

  def worker(self, k: int):
    tpu, serial = None, 0
    try:
      while True:
        point = self.take()
        if point is None:
          return
        kind, chips = self.sizes[point]
        restarts = 0
        while not self.stop.is_set():
          if tpu is not None and (tpu.accelerator_type != kind or not getattr(tpu, "ready", False)):
            self.delete(tpu)
            tpu = None
          if tpu is None:
            serial += 1
            tpu = self.slice(k, serial, kind)
            if tpu is None:  # the create itself failed (quota, a name in use): give up this worker
              self.failed.append(point)
              return
            if not getattr(tpu, "ready", False) or self.stop.is_set():
              continue
          rc = self.run_point(tpu, point, chips)
          if rc == 0:
            self.ledger.update(lambda d: d["points"].__setitem__(point, "final"))
            self.say(tpu.name, f"{point}: final")
            break
          if self.stop.is_set():
            break
          lost = tpu.state(self.runner) != ACTIVE
          if rc not in (EXIT_PREEMPTED, SSH_LOST) and not lost:
            self.say(tpu.name, f"{point} failed (exit status {rc}; its log: {self.job.output_dir}/{point}/log.txt)")
            self.ledger.update(lambda d: d["points"].__setitem__(point, "failed"))
            self.failed.append(point)
            break
          restarts += 1
          what = "its slice was preempted or lost" if lost else (
              "it stopped with a checkpoint" if rc == EXIT_PREEMPTED else "the ssh connection was lost")
          if restarts > self.max_restarts:
            self.say(tpu.name, f"{point}: {what}, and no restarts are left (--max_restarts={self.max_restarts})")
            self.ledger.update(lambda d: d["points"].__setitem__(point, "preempted"))
            break
          self.say(tpu.name, f"{point}: {what}: restart {restarts} of {self.max_restarts}, from its checkpoint")
          if lost:
            self.delete(tpu)
            tpu = None
          elif rc == SSH_LOST:
            tpu.ready = False  # ship and set up again: setup stops the old command first
    finally:
      if tpu is not None:
        self.delete(tpu)

  def run(self, points: list[str], slices: int) -> int:
    self.queue = list(points)
    threads = [threading.Thread(target=self.worker, args=(k,), daemon=True) for k in range(min(slices, len(points)))]
    for t in threads:
      t.start()
    try:
      while any(t.is_alive() for t in threads):
        for t in threads:
          t.join(0.2)
    except KeyboardInterrupt:
      self.stop.set()
      self.runner.say("interrupted: the running points are told to stop, then every slice is deleted")
      deadline = time.time() + 600  # a point's checkpoint, then each worker's delete
      while any(t.is_alive() for t in threads) and time.time() < deadline:
        self.runner.stop_all(lambda argv: "ssh" in argv)  # the runs, again for one a worker started meanwhile
        for t in threads:
          t.join(0.2)
      raise
    return 1 if self.failed or self.queue else 0


def dry_run(pool: Pool, points: list[str], slices: int):
  """What the pool does, printed: the points dealt round-robin to the slices (a real run hands
  each slice the next pending point as it frees)."""
  pool.runner.say(f"at most {slices} slice(s) at once, each taking the next pending point as it frees; below, "
                  "the points dealt round-robin")
  for k in range(min(slices, len(points))):
    mine, tpu = points[k::slices], None
    for point in mine:
      kind, chips = pool.sizes[point]
      if tpu is None or tpu.accelerator_type != kind:
        if tpu is not None:
          pool.delete(tpu)
        tpu = pool.slice(k, 1 if tpu is None else 2, kind)
      pool.run_point(tpu, point, chips)
    pool.runner.say(f"if a slice is preempted: delete it, create another, and resume its point there from its "
                    f"checkpoint (at most {pool.max_restarts} times a point: --max_restarts)")
    pool.delete(tpu)


def cost_lines(ledger: Ledger, chips_of) -> list[str]:
  """Chip-hours billed (ACTIVE to deleted) against those that ran points, from the ledger."""
  slices, runs = ledger.data["slices"], ledger.data["runs"]
  billed = {n: (s["deleted_ts"] - s["active_ts"]) * chips_of(s["type"]) for n, s in slices.items()
            if s.get("active_ts") and s.get("deleted_ts")}
  running = {}
  for r in runs:
    running[r["slice"]] = running.get(r["slice"], 0.0) + (r["end"] - r["start"]) * chips_of(slices[r["slice"]]["type"])
  used = sum(running.get(n, 0.0) for n in billed)
  total = sum(billed.values())
  return [f"cost: {len(billed)} slice(s), {total / 3600:.3g} chip-hours from ACTIVE to deleted (what Cloud TPU "
          f"bills), {used / 3600:.3g} of them running points ({used / total:.0%}), the rest shipping, setting up "
          "and idle" if total else "cost: no slice became ACTIVE"]


def launch(args, base, job: common.Job, env: dict[str, str], setup: str, runner: common.Runner, code: str,
           run_script, repo: Path) -> int:
  """The pool launch of tpu.py's main, after packing the code."""
  ledger = Ledger(runner.log_dir / "pool.json", runner.dry_run)
  stale = ledger.alive()
  if stale:
    runner.say(f"{len(stale)} slice(s) left up by an earlier launch of this pool: delete them first")
    for name in stale:
      s = ledger.data["slices"][name]
      tpu = Tpu(name, base.zone, base.project, s["type"], base.runtime_version, base.provisioning)
      if runner.run(tpu.delete(), f"{name}-delete-stale") != 0:
        runner.say(f"could not delete {name} (gone already, or gcloud failed): check with {shlex.join(tpu.describe())}")
      ledger.update(lambda d: d["slices"][name].update(deleted_ts=time.time()))
  runner.say("the sweep's points (only reads; run in a dry run too)")
  python = args.plan_python
  rc, text = runner.read([python, *job.argv[1:], "--plan_json"], cwd=str(repo))
  if rc != 0:
    runner.say(f"the plan failed (exit status {rc}); no slice created:\n{text.strip()[-3000:]}")
    return 1
  plan = json.loads(text)
  done = {n for n, state in ledger.data["points"].items() if state == "final"}
  todo = [p for p in sorted(plan["points"], key=lambda p: p["flops"], reverse=True)
          if p["run"] and p["name"] not in done]
  sizes = {p["name"]: slice_for(p["memory_bytes"], args.accelerator_type, args.fixed_size) for p in todo}
  runner.say(f"{len(plan['points'])} points: {len(plan['points']) - len(todo)} final (skipped), {len(todo)} to run: "
             + ", ".join(f"{n} on {t}" for n, (t, _) in sizes.items()))
  pool = Pool(base, runner, ledger, job, env, setup, code, sizes, args.max_restarts, args.poll_s, run_script)
  if runner.dry_run:
    dry_run(pool, [p["name"] for p in todo], args.max_slices)
    return 0
  previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM cleans up as Ctrl-C does
  try:
    rc = pool.run([p["name"] for p in todo], args.max_slices)
  except KeyboardInterrupt:
    rc = 130
  finally:
    signal.signal(signal.SIGTERM, previous)
    for name in ledger.alive():  # whatever a worker could not delete
      s = ledger.data["slices"][name]
      tpu = Tpu(name, base.zone, base.project, s["type"], base.runtime_version, base.provisioning)
      if runner.run(tpu.delete(), f"{name}-delete-final") == 0:
        ledger.update(lambda d: d["slices"][name].update(deleted_ts=time.time()))
      else:
        runner.say(f"could not delete {name}; it is billed until you do: {shlex.join(tpu.delete())}")
  chips = lambda kind: int(int(kind.rsplit("-", 1)[1]) * GENERATIONS[kind.rsplit("-", 1)[0]][0])
  for line in cost_lines(ledger, chips):
    runner.say(line)
  sweep_dir = plan["sweep_dir"]
  status = [python, "-m", "experiments.sweep", "--status", f"--sweep_dir={sweep_dir}"]
  if os.path.isdir(sweep_dir):
    runner.run(status, "status", stream=True)
  else:
    runner.say(f"the points' states and their own cost, where the sweep_dir is mounted: {shlex.join(status)}")
  if pool.failed:
    runner.say(f"failed: {', '.join(pool.failed)}; the same command runs them again")
  return rc
