"""A sweep on SLURM with one job per point: `python -m experiments.launch.slurm --per_point ...`.

    python -m experiments.launch.slurm --per_point --max_running=16 --gpus_per_node=8 --time=4:00:00 \
        --sweep="--config=experiments/sweeps/isoflop.py --sweep_dir=/shared/sweeps/iso" [--wait] [--dry_run]

After slurm.py's install, on the login node:
  plan       `<venv>/bin/python -m experiments.sweep <sweep args> --plan_json` (--plan_python to use
             another python): the points, their sizes and their states, from the sweep_dir. It only
             reads, so a dry run runs it too.
  in flight  `squeue` for this sweep's earlier jobs (SWEEP_DIR/slurm/<job>.json names the point of
             every task): a point queued or running there is not submitted again
  size       each point's GPUs by the rule below; one job array per GPU count, whose task i runs
             point i alone (`experiments.sweep --point`); points that need more than one node
             fall back to slurm.py's multi-node job, which runs them one after another
             (`experiments.sweep --points=...`)
  submit     for each job: SWEEP_DIR/slurm/<job>.json (before sbatch, so a launcher killed right
             after sbatch still knows its job by name), the script <log_dir>/<job>.sbatch, sbatch
  wait       (--wait) poll squeue until none of this sweep's jobs is queued or running; then the
             points' table and lm's own cost (`experiments.sweep --status`) and what SLURM allocated
             (sacct: each task attempt's elapsed time x its GPUs, requeued attempts included)

GPUs per point: the smallest power of two g whose memory holds the point's training memory
(lm.flops.train_memory: parameters, optimizer state, gradients and one step's activations, as
--plan_json reports it) with MEMORY_HEADROOM to spare: memory <= g x --gpu_memory_gb x 0.7,
at least 1 (or --gpus_per_point for every point). A ladder's small points thus take one GPU
each, rather than sharding a 4 MB model over eight. g <= --gpus_per_node: an array task on one
node; otherwise ceil(g / gpus_per_node) whole nodes.

The cap, --max_running=N: at most N points run at once over all of this sweep's jobs. Each
array's %cap is its share of N by its number of points, at least 1 (a multi-node job counts as
one), after what this sweep's earlier jobs still hold (min(their cap, their tasks in flight)).
When those hold all of it, nothing new is submitted: run the same command when they end.

Relaunch = the same command: finished and diverged points are skipped, points queued or running
in SLURM are left alone, every other point (never submitted, failed, cancelled, out of restarts)
is submitted again and resumes from its checkpoint. Within a job, slurm.py's script handles the
time limit and preemption (a requeued task resumes its point from its checkpoint).
"""

from __future__ import annotations

import datetime
import getpass
import json
import math
import os
import re
from pathlib import Path

from experiments.launch import common
from experiments.launch.common import LaunchError
from experiments.launch.slurm_script import batch_script

MEMORY_HEADROOM = 0.7  # of a GPU's memory: XLA's workspace, fragmentation, the data pipeline's buffers


def gpus_for(memory_bytes: float, gpu_memory_gb: float, fixed: int | None = None) -> int:
  if fixed:
    return fixed
  need = memory_bytes / (gpu_memory_gb * 2**30 * MEMORY_HEADROOM)
  return 1 if need <= 1 else 2 ** math.ceil(math.log2(need))


def jobs_for(points: list[dict], gpus_per_node: int, gpu_memory_gb: float, fixed: int | None) -> list[dict]:
  """[{kind: 'array' | 'nodes', gpus_per_node, nodes, points}], arrays by GPU count, then one multi-node job
  per node count; points longest first (by FLOPs) within each, the shortest makespan of list scheduling."""
  by_size: dict[tuple[str, int, int], list[str]] = {}
  for p in sorted(points, key=lambda p: p["flops"], reverse=True):
    g = gpus_for(p["memory_bytes"], gpu_memory_gb, fixed)
    key = ("array", g, 1) if g <= gpus_per_node else ("nodes", gpus_per_node, math.ceil(g / gpus_per_node))
    by_size.setdefault(key, []).append(p["name"])
  return [{"kind": k, "gpus_per_node": g, "nodes": n, "points": names}
          for (k, g, n), names in sorted(by_size.items(), key=lambda kv: (kv[0][0], kv[0][1] * kv[0][2]))]


def caps(jobs: list[dict], available: int) -> list[int]:
  """Each job's share of `available` running points (at least len(jobs)): a multi-node job 1, an
  array 1 and then, one at a time, the rest to the array with the most points per share (D'Hondt),
  never more than its points."""
  share = [1] * len(jobs)
  for _ in range(available - len(jobs)):
    open_ = [i for i, j in enumerate(jobs) if j["kind"] == "array" and share[i] < len(j["points"])]
    if not open_:
      break
    share[max(open_, key=lambda i: len(jobs[i]["points"]) / share[i])] += 1
  return share


def read_jobs(sweep_dir: str) -> list[dict]:
  folder = os.path.join(sweep_dir, "slurm")
  if not os.path.isdir(folder):
    return []
  out = []
  for name in sorted(os.listdir(folder)):
    if name.endswith(".json"):
      with open(os.path.join(folder, name)) as f:
        out.append(json.load(f))
  return out


def squeue(names: list[str], user: str) -> list[str]:
  return ["squeue", "--noheader", "--array", f"--user={user}", f"--name={','.join(names)}", "--format=%i|%T|%j"]


def sacct(names: list[str], user: str, since: str) -> list[str]:
  return ["sacct", "--noheader", "--parsable2", "--duplicates", f"--user={user}", f"--name={','.join(names)}",
          f"--starttime={since}", "--format=JobID,JobName,State,ElapsedRaw,AllocTRES"]


def in_flight(lines: str, jobs: list[dict]) -> dict[str, str]:
  """squeue's lines -> {point: 'JOB_TASK STATE'} for the points queued or running."""
  by_name = {j["job_name"]: j for j in jobs}
  out = {}
  for line in filter(None, lines.splitlines()):
    job_id, state, name = line.split("|", 2)
    job = by_name.get(name)
    if job is None:
      continue
    task = re.fullmatch(r"\d+_(\d+)", job_id)
    for point in [job["points"][int(task.group(1))]] if task else job["points"]:
      out[point] = f"{job_id} {state}"
  return out


def allocated(lines: str) -> tuple[float, int]:
  """sacct's lines -> (GPU-seconds allocated, task attempts): ElapsedRaw x gres/gpu of every
  allocation line (steps, JOBID.batch and JOBID.0, are inside their allocation: not counted)."""
  gpu_s, attempts = 0.0, 0
  for line in filter(None, lines.splitlines()):
    job_id, _, _, elapsed, tres = line.split("|")[:5]
    if "." in job_id:
      continue
    gpus = re.search(r"gres/gpu(?::[^=,]+)?=(\d+)", tres)
    gpu_s += int(elapsed or 0) * (int(gpus.group(1)) if gpus else 0)
    attempts += 1
  return gpu_s, attempts


def launch(args, job: common.Job, runner: common.Runner, settings: dict, base: str, repo: Path) -> int:
  """The per-point launch after the install (slurm.py:main); exit status of the launcher."""
  venv_python = os.path.join(settings["venv"], "bin", "python")
  python = args.plan_python or venv_python
  runner.say("the sweep's points and their states (only reads; run in a dry run too)")
  rc, text = runner.read([python, *job.argv[1:], "--plan_json"], cwd=str(repo))
  if rc != 0:
    runner.say(f"the plan failed (exit status {rc}); nothing submitted:\n{text.strip()[-3000:]}")
    return 1
  plan = json.loads(text)
  sweep_dir, user = plan["sweep_dir"], getpass.getuser()
  earlier = read_jobs(sweep_dir)
  names = [j["job_name"] for j in earlier]
  live: dict[str, str] = {}
  if earlier:
    runner.say(f"points of this sweep's {len(earlier)} earlier job(s) still queued or running in SLURM")
    rc, lines = runner.poll(squeue(names, user), first=True, dry_reply="")
    if rc != 0:
      runner.say(f"squeue failed (exit status {rc}), so which points are queued is unknown; nothing submitted:\n"
                 f"{lines}")
      return 1
    live = in_flight(lines, earlier)
  final = [p["name"] for p in plan["points"] if not p["run"]]
  todo = [p for p in plan["points"] if p["run"] and p["name"] not in live]
  runner.say(f"{len(plan['points'])} points: {len(final)} final (skipped), {len(live)} queued or running in SLURM "
             f"(left alone), {len(todo)} to submit"
             + (f"; left out by min/max_steps: {', '.join(p['name'] for p in plan['left_out'])}" if plan["left_out"]
                else ""))
  jobs = jobs_for(todo, args.gpus_per_node, args.gpu_memory_gb, args.gpus_per_point)
  held = sum(min(j["cap"], sum(1 for v in live if v in j["points"])) for j in earlier)
  available = args.max_running - held
  if jobs and available < len(jobs):
    runner.say(f"earlier jobs hold {held} of --max_running={args.max_running} running points, which leaves too "
               f"few for {len(jobs)} new job(s): nothing submitted now; run the same command when they end")
    jobs = []
  for j, cap in zip(jobs, caps(jobs, available)):
    j["cap"] = cap
    j["job_name"] = name = f"{base}-{len(earlier) + 1}"
    j["submitted"] = datetime.datetime.now().isoformat(timespec="seconds")
    earlier.append(j)
    names.append(name)
    path = os.path.join(settings["log_dir"], f"{name}.sbatch")
    if j["kind"] == "array":
      runner.say(f"job {name}: an array of {len(j['points'])} point(s), {j['gpus_per_node']} GPU(s) each, "
                 f"at most {cap} at once")
      script = batch_script(job, job_name=name, nodes=1, gpus_per_node=j["gpus_per_node"], path=path,
                            array=(j["points"], cap), **settings)
    else:
      runner.say(f"job {name}: {len(j['points'])} point(s) that need {j['nodes']} nodes, one after another")
      multi = common.Job(job.kind, (*job.argv, f"--points={','.join(j['points'])}"), job.output_dir)
      env = {**settings["env"], "LM_SWEEP_DEVICES": str(j["nodes"] * j["gpus_per_node"])}
      script = batch_script(multi, job_name=name, nodes=j["nodes"], gpus_per_node=j["gpus_per_node"], path=path,
                            **{**settings, "env": env})
    runner.write(Path(sweep_dir) / "slurm" / f"{name}.json", json.dumps(j, indent=1) + "\n")
    runner.write(Path(path), script)
    rc, job_id = runner.poll(["sbatch", "--parsable", path], first=True, dry_reply="JOBID")
    if rc != 0:
      runner.say(f"sbatch failed (exit status {rc}):\n{job_id}")
      return 1
    runner.say(f"job {job_id.split(';')[0]}: logs in {settings['log_dir']}/{name}-*.out")
  if not args.wait:
    runner.say(f"follow it with: squeue --user={user} --name={','.join(names)}; the points: "
               f"{python} -m experiments.sweep --status --sweep_dir={sweep_dir}")
    return 0
  return wait(runner, names, user, args.poll_s, [python, "-m", "experiments.sweep", "--status",
                                                 f"--sweep_dir={sweep_dir}"], earlier)


def wait(runner: common.Runner, names: list[str], user: str, poll_s: float, status: list[str],
         jobs: list[dict]) -> int:
  """Until nothing of this sweep is queued or running; then lm's table and cost, and SLURM's allocation."""
  runner.say(f"wait until no job of this sweep is queued or running (squeue every {poll_s:g} s)")
  first, last, failures = True, None, 0
  while names:
    rc, lines = runner.poll(squeue(names, user), first, dry_reply="")
    first = False
    if rc != 0:
      failures += 1
      if failures >= 10:
        runner.say(f"squeue failed 10 times in a row (exit status {rc}): stopped waiting\n{lines}")
        return 1
      runner.sleep(poll_s)
      continue
    failures = 0
    states = [line.split("|")[1] for line in filter(None, lines.splitlines())]
    counts = (states.count("RUNNING"), len(states) - states.count("RUNNING"))
    if counts != last and not runner.dry_run:
      runner.say(f"{counts[0]} task(s) running, {counts[1]} queued")
      last = counts
    if not states:
      break
    runner.sleep(poll_s)
  runner.say("the points, and what they spent by lm's own clocks")
  rc = runner.run(status, "status", stream=True)
  since = min(j["submitted"] for j in jobs)
  rc_sacct, lines = runner.poll(sacct(names, user, since), first=True, dry_reply="")
  if rc_sacct == 0:
    gpu_s, attempts = allocated(lines)
    runner.say(f"SLURM allocated {gpu_s / 3600:.3g} GPU-hours to {attempts} task attempt(s) of this sweep "
               "(sacct: elapsed x GPUs, requeued attempts included)")
  else:
    runner.say(f"sacct failed (exit status {rc_sacct}); no allocation figure:\n{lines}")
  return rc
