"""Sweeps fanned out over a cluster, one point per job, against fake schedulers on the PATH.

SLURM: tests/fake_slurm.py is sbatch, squeue, sacct, scontrol, scancel and srun; it runs each
array task's batch script as a local process, at most %N of an array at once, and requeues or
preempts a task when told. Cloud TPU: a fake gcloud (below) whose queued resources go ACTIVE,
whose ssh runs the command locally in a per-slice home, and which preempts one slice on a script.
The fast tests run stand-in points (tests/fake_point.py) and check the launchers: the cap, what
a relaunch submits, the dry runs' exact scripts and calls, the cost accounting. The slow ones
train the real tiny points through the real per-point runner and compare the final table with
an uninterrupted sweep's.
"""

import io
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from experiments.launch import common
from experiments.launch import slurm as launch_slurm
from experiments.launch import slurm_sweep
from experiments.launch import tpu as launch_tpu
from experiments.launch import tpu_pool
from experiments.sweep import plan as sweep_plan
from tests import fake_gcloud
from tests import fake_slurm
from tests.helpers import child_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = "experiments/sweeps/tiny.py"
TWELVE = ["--config.models=('d16','d32','d48')", "--config.budgets=(8192,16384,24576,32768)"]


def twelve_points():
  cfg = sweep_plan.load_config(TINY)
  cfg.models, cfg.budgets = ("d16", "d32", "d48"), (8192, 16384, 24576, 32768)
  points, _ = sweep_plan.expand(cfg)
  return cfg, points


def sweep_arg(sweep_dir, extra=TWELVE):
  return "--sweep=" + " ".join([f"--config={TINY}", f"--sweep_dir={sweep_dir}", *[f'"{a}"' for a in extra]])


def intervals(log_path):
  """{point: [(start, end), ...]} from the stand-in points' log."""
  out, open_ = {}, {}
  for line in open(log_path).read().splitlines():
    kind, name, t, *_ = line.split()
    if kind == "held":
      continue
    if kind == "start":
      open_[name] = float(t)
    else:
      out.setdefault(name, []).append((open_.pop(name), float(t)))
  return out


def most_at_once(spans):
  events = sorted([(s, 1) for ss in spans.values() for s, _ in ss] + [(e, -1) for ss in spans.values() for _, e in ss],
                  key=lambda x: (x[0], x[1]))
  now = best = 0
  for _, step in events:
    now += step
    best = max(best, now)
  return best


@pytest.fixture
def fake_venv(tmp_path):
  """A venv whose `python` is the stand-in point, and the plan records it copies into point.json."""
  cfg, points = twelve_points()
  records = tmp_path / "plan_records.json"
  records.write_text(json.dumps({p.name: {"sweep": cfg.name, **p.record()} for p in points}))
  venv = tmp_path / "venv"
  (venv / "bin").mkdir(parents=True)
  (venv / "bin" / "activate").write_text(f'export PATH="{venv}/bin:$PATH"\n')
  (venv / "bin" / "python").write_text(f'#!/bin/bash\nexec {sys.executable} {ROOT}/tests/fake_point.py "$@"\n')
  (venv / "bin" / "python").chmod(0o755)
  return venv, records, points


@pytest.fixture
def slurm(tmp_path, monkeypatch, fake_venv):
  venv, records, points = fake_venv
  env = fake_slurm.install(str(tmp_path / "bin"), str(tmp_path / "slurm"))
  env.update(FAKE_POINTS_LOG=str(tmp_path / "points.log"), FAKE_POINT_RECORDS=str(records), FAKE_POINT_S="1")
  for k, v in env.items():
    monkeypatch.setenv(k, v)
  monkeypatch.setattr(launch_slurm, "NODE_LOCAL", ())  # this machine is every node: /tmp is shared
  monkeypatch.setenv("FAKE_POINT_HOLD", str(tmp_path / "hold"))  # absent unless a test holds the points
  (tmp_path / "points.log").touch()
  yield venv, points
  fake_slurm.stop_daemon()


def slurm_argv(tmp_path, venv, *extra):
  return ["--per_point", "--max_running=4", "--gpus_per_node=8", "--skip_install", f"--venv={venv}",
          f"--plan_python={sys.executable}", f"--log_dir={tmp_path / 'logs'}", "--poll_s=0.1", *extra]


def allocation(slurm_home):
  """GPU-seconds the fake SLURM allocated (elapsed x GPUs, whole seconds as sacct reports them), per point."""
  state = json.loads((slurm_home / "state.json").read_text())
  out = {}
  for job in state["jobs"].values():
    for task in job["tasks"].values():
      point = job["points"][task["task"]]
      out[point] = out.get(point, 0) + sum(round(a["end"] - a["start"]) * job["gpus"] for a in task["attempts"])
  return out


@pytest.mark.slow
def test_twelve_points_with_a_cap_of_four_never_run_more_than_four_and_the_cost_adds_up(tmp_path, slurm):
  venv, points = slurm
  sweep_dir = tmp_path / "sweep"
  out = io.StringIO()
  assert launch_slurm.main(slurm_argv(tmp_path, venv, "--wait", sweep_arg(sweep_dir)), out) == 0, out.getvalue()
  text = out.getvalue()
  spans = intervals(tmp_path / "points.log")
  assert sorted(spans) == sorted(p.name for p in points) and all(len(s) == 1 for s in spans.values())
  assert most_at_once(spans) == 4
  assert "#SBATCH --array=0-11%4" in (tmp_path / "logs" / "lm-sweep-1.sbatch").read_text()
  assert "finished 12" in text
  # SLURM's side: what sacct says the 12 tasks were allocated, summed by the launcher.
  allocated = allocation(tmp_path / "slurm")
  assert f"SLURM allocated {sum(allocated.values()) / 3600:.3g} GPU-hours to 12 task attempt(s)" in text
  # lm's side: the points' own attempts, summed by --status; each inside its task's allocation.
  spent = {p.name: json.loads((sweep_dir / p.name / "record.json").read_text())["device_s_spent"] for p in points}
  assert f"cost: {sum(spent.values()) / 3600:.3g} device-hours spent on 12 points" in text
  assert all(spent[n] <= allocated[n] + 0.5 for n in spent)  # sacct rounds to whole seconds


@pytest.mark.slow
def test_a_relaunch_submits_only_the_points_neither_finished_nor_in_flight(tmp_path, slurm):
  venv, points = slurm
  sweep_dir = tmp_path / "sweep"
  argv = slurm_argv(tmp_path, venv, "--wait", sweep_arg(sweep_dir))
  code = ("import sys; from experiments.launch import slurm; slurm.NODE_LOCAL = (); "  # /tmp is shared here
          "sys.exit(slurm.main(sys.argv[1:]))")
  launcher = subprocess.Popen([sys.executable, "-c", code, *argv], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
  hold = tmp_path / "hold"
  deadline = time.time() + 120
  while (tmp_path / "points.log").read_text().count("end ") < 2:
    assert launcher.poll() is None and time.time() < deadline, launcher.stdout.read()
    time.sleep(0.02)
  hold.touch()  # the points running now, and those started later, stay up until the array is cancelled
  launcher.send_signal(signal.SIGKILL)  # the jobs it submitted stay in SLURM
  launcher.communicate()
  # 1. While the first array is queued or running, a relaunch submits nothing.
  out = io.StringIO()
  assert launch_slurm.main(slurm_argv(tmp_path, venv, sweep_arg(sweep_dir)), out) == 0, out.getvalue()
  assert ", 0 to submit" in out.getvalue()
  assert (tmp_path / "slurm" / "calls").read_text().count("sbatch ") == 1
  # 2. The array is cancelled (its running points stop with a checkpoint); a relaunch submits the rest.
  first = json.loads((tmp_path / "slurm" / "state.json").read_text())["jobs"]
  subprocess.run(["scancel", next(iter(first))], check=True)
  fake_slurm.wait_idle()
  hold.unlink()
  summaries = {p.name: sweep_dir / p.name / "summary.json" for p in points}
  finished = {n for n, f in summaries.items() if f.exists() and json.loads(f.read_text())["status"] == "finished"}
  assert 2 <= len(finished) < 12
  out = io.StringIO()
  assert launch_slurm.main(slurm_argv(tmp_path, venv, "--wait", sweep_arg(sweep_dir)), out) == 0, out.getvalue()
  second = json.loads((sweep_dir / "slurm" / "lm-sweep-2.json").read_text())
  assert sorted(second["points"]) == sorted({p.name for p in points} - finished)
  assert "finished 12" in out.getvalue()
  spans = intervals(tmp_path / "points.log")
  assert all(len(spans[n]) == 1 for n in finished)  # no finished point ran twice
  assert most_at_once(spans) <= 4


def test_sizing_rule_and_the_cap_split_over_jobs():
  gib = 2**30
  assert [slurm_sweep.gpus_for(m * gib, 80) for m in (0.001, 56, 57, 200, 500)] == [1, 1, 2, 4, 16]
  assert slurm_sweep.gpus_for(500 * gib, 80, fixed=2) == 2
  points = [{"name": n, "flops": f, "memory_bytes": m * gib} for n, f, m in
            (("a", 1, 1), ("b", 3, 1), ("c", 2, 100), ("d", 9, 500), ("e", 8, 600))]
  jobs = slurm_sweep.jobs_for(points, 8, 80, None)
  assert [(j["kind"], j["gpus_per_node"], j["nodes"], j["points"]) for j in jobs] == [
      ("array", 1, 1, ["b", "a"]), ("array", 2, 1, ["c"]), ("nodes", 8, 2, ["d", "e"])]
  assert slurm_sweep.caps(jobs, 3) == [1, 1, 1] and slurm_sweep.caps(jobs, 16) == [2, 1, 1]
  lines = ("1000_0|lm-x-1|COMPLETED|100|billing=2,cpu=8,gres/gpu=2,gres/gpu:h100=2,node=1\n"
           "1000_0.batch|batch|COMPLETED|100|cpu=8,mem=64G,node=1\n"
           "1000_1|lm-x-1|PREEMPTED|30|billing=2,cpu=8,gres/gpu:h100=2,node=1\n1000_1|lm-x-1|COMPLETED|70|gres/gpu=2\n")
  assert slurm_sweep.allocated(lines) == (400, 3)  # GPU-seconds of the allocations, requeued attempts included
  many = [{"kind": "array", "points": list(range(n))} for n in (10, 1, 3)]
  assert slurm_sweep.caps(many, 6) == [4, 1, 1] and sum(slurm_sweep.caps(many, 9)) == 9


# ---- Cloud TPU: a pool of slices ----

@pytest.fixture
def gcloud(tmp_path, monkeypatch, fake_venv):
  venv, records, points = fake_venv
  env = fake_gcloud.install(str(tmp_path / "bin"), str(tmp_path / "gcloud"), str(venv))
  env.update(FAKE_POINTS_LOG=str(tmp_path / "points.log"), FAKE_POINT_RECORDS=str(records), FAKE_POINT_S="1",
             FAKE_POINT_HOLD=str(tmp_path / "hold"))
  for k, v in env.items():
    monkeypatch.setenv(k, v)
  (tmp_path / "points.log").touch()
  yield points
  fake_gcloud.cleanup()


def pool_argv(tmp_path, sweep_dir, slices=4, extra=TWELVE):
  return ["--per_point", f"--max_slices={slices}", "--zone=z", "--accelerator_type=v5litepod-8", "--spot",
          f"--shared_dir={tmp_path}", f"--plan_python={sys.executable}", f"--log_dir={tmp_path / 'launch'}",
          "--poll_s=0.05", sweep_arg(sweep_dir, extra)]


def gcloud_calls(tmp_path, verb):
  return [line.split()[-1] for line in (tmp_path / "gcloud" / "calls").read_text().splitlines()
          if line.startswith(verb + " ")]


def slices_up(tmp_path):
  return json.loads((tmp_path / "gcloud" / "state.json").read_text())["resources"]


def finished_points(sweep_dir, points):
  files = {p.name: sweep_dir / p.name / "summary.json" for p in points}
  return {n for n, f in files.items() if f.exists() and json.loads(f.read_text())["status"] == "finished"}


@pytest.mark.slow
def test_a_pool_of_four_slices_runs_twelve_points_four_at_a_time_and_deletes_every_slice(tmp_path, gcloud):
  points = gcloud
  sweep_dir = tmp_path / "sweep"
  out = io.StringIO()
  assert launch_tpu.main(pool_argv(tmp_path, sweep_dir), out) == 0, out.getvalue()
  spans = intervals(tmp_path / "points.log")
  assert sorted(spans) == sorted(p.name for p in points) and all(len(s) == 1 for s in spans.values())
  assert most_at_once(spans) == 4
  assert len(gcloud_calls(tmp_path, "create")) == 4 and len(gcloud_calls(tmp_path, "setup")) == 4  # slices reused
  assert sorted(gcloud_calls(tmp_path, "delete")) == sorted(gcloud_calls(tmp_path, "create")) and not slices_up(tmp_path)
  # The cost: every slice's chips from ACTIVE to deleted, of which its runs; within the fake's own record of
  # each slice's life (created to deleted).
  ledger = json.loads((tmp_path / "launch" / "pool.json").read_text())
  billed = sum(s["deleted_ts"] - s["active_ts"] for s in ledger["slices"].values())  # v5litepod-1: 1 chip
  running = sum(r["end"] - r["start"] for r in ledger["runs"])
  lives = sum(h["deleted"] - h["created"] for h in json.loads((tmp_path / "gcloud" / "state.json").read_text())
              ["history"])
  assert running <= billed <= lives
  assert (f"cost: 4 slice(s), {billed / 3600:.3g} chip-hours from ACTIVE to deleted (what Cloud TPU bills), "
          f"{running / 3600:.3g} of them running points") in out.getvalue()
  assert "finished 12" in out.getvalue()


def pool_process(tmp_path, sweep_dir):
  code = "import sys; from experiments.launch import tpu; sys.exit(tpu.main(sys.argv[1:]))"
  return subprocess.Popen([sys.executable, "-c", code, *pool_argv(tmp_path, sweep_dir)], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def hold_points_once_some_finished(tmp_path, proc):
  """Wait for two points to end, then hold the rest (and those that start next) until told otherwise."""
  deadline = time.time() + 120
  while (tmp_path / "points.log").read_text().count("end ") < 2:
    assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
    time.sleep(0.02)
  (tmp_path / "hold").touch()
  while len(gcloud_calls(tmp_path, "run")) < 6:  # the next points have started on their slices
    assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
    time.sleep(0.02)


def settle(tmp_path, every_run_starts: bool, timeout=60):
  """Until every point that started has ended or is held (only SIGTERM ends it), and with
  every_run_starts (no one stops the runs) every run the slices were given has started its point."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    kinds = [line.split()[:2] for line in (tmp_path / "points.log").read_text().splitlines()]
    starts = [n for k, n in kinds if k == "start"]
    if ((len(starts) >= len(gcloud_calls(tmp_path, "run")) or not every_run_starts)
        and all(["end", n] in kinds or ["held", n] in kinds for n in starts)):
      time.sleep(0.5)  # and nothing new after a while: the launcher is gone
      if [line.split()[:2] for line in (tmp_path / "points.log").read_text().splitlines()] == kinds:
        return
    time.sleep(0.05)
  raise TimeoutError("the points did not settle")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["ctrl-c", "sigkill"])
def test_a_stopped_or_killed_pool_leaves_no_slice_and_a_relaunch_runs_only_the_unfinished(tmp_path, gcloud, how):
  points = gcloud
  sweep_dir = tmp_path / "sweep"
  proc = pool_process(tmp_path, sweep_dir)
  hold_points_once_some_finished(tmp_path, proc)
  proc.send_signal(signal.SIGINT if how == "ctrl-c" else signal.SIGKILL)
  text, _ = proc.communicate(timeout=120)
  if how == "ctrl-c":  # the running points stopped, every slice deleted
    assert proc.returncode == 130 and not slices_up(tmp_path), text
    assert "interrupted: the running points are told to stop, then every slice is deleted" in text
  else:  # a launcher killed outright leaves its slices up; its ledger names them
    assert len(slices_up(tmp_path)) == 4
  settle(tmp_path, every_run_starts=how == "sigkill")
  (tmp_path / "hold").unlink()
  finished = finished_points(sweep_dir, points)
  assert 2 <= len(finished) < 12
  started_before = len(gcloud_calls(tmp_path, "run"))
  out = io.StringIO()
  assert launch_tpu.main(pool_argv(tmp_path, sweep_dir), out) == 0, out.getvalue()
  if how == "sigkill":
    assert "4 slice(s) left up by an earlier launch of this pool: delete them first" in out.getvalue()
  rerun = [line.split()[1] for line in (tmp_path / "gcloud" / "calls").read_text().splitlines()
           if line.startswith("run ")][started_before:]  # 'run POINT SLICE'
  assert sorted(rerun) == sorted({p.name for p in points} - finished)  # each unfinished point once, no other
  assert finished_points(sweep_dir, points) == {p.name for p in points} and not slices_up(tmp_path)
  spans = intervals(tmp_path / "points.log")
  assert all(len(spans[n]) == 1 for n in finished)


def test_slice_types_follow_the_points_memory():
  gib = 2**30
  assert tpu_pool.slice_for(1 * gib, "v5litepod-8") == ("v5litepod-1", 1)
  assert tpu_pool.slice_for(12 * gib, "v5litepod-8") == ("v5litepod-4", 4)  # 11.2 GiB usable a v5e chip
  assert tpu_pool.slice_for(60 * gib, "v5litepod-8") == ("v5litepod-8", 8)
  assert tpu_pool.slice_for(60 * gib, "v5p-32") == ("v5p-8", 4)  # v5p-8: 4 chips of 95 GiB
  assert tpu_pool.slice_for(1 * gib, "v6e-8", fixed=True) == ("v6e-8", 8)
  with pytest.raises(common.LaunchError, match="needs 200 GiB of HBM, more than v5litepod-8 holds"):
    tpu_pool.slice_for(200 * gib, "v5litepod-8")


FAKE_PLAN = {"sweep": "iso", "sweep_dir": "/shared/sweeps/iso", "flops_definition": "flops_exact", "left_out": [],
             "points": [{"name": "C1e18-p100m", "flops": 1e18, "memory_bytes": 2 * 2**30, "run": True},
                        {"name": "C1e18-p300m", "flops": 1e18, "memory_bytes": 30 * 2**30, "run": True},
                        {"name": "C1e18-p50m", "flops": 1e18, "memory_bytes": 1 * 2**30, "run": False},
                        {"name": "C1e20-p7b", "flops": 1e20, "memory_bytes": 700 * 2**30, "run": True}]}


def test_slurm_per_point_dry_run_prints_every_script_and_command(tmp_path, monkeypatch):
  monkeypatch.setattr(common, "REPO", tmp_path / "repo")
  (tmp_path / "repo" / "experiments" / "sweeps").mkdir(parents=True)
  (tmp_path / "repo" / "experiments" / "sweeps" / "isoflop.py").write_text("")
  planner = tmp_path / "plan.sh"
  planner.write_text(f"#!/bin/bash\ncat <<'EOF'\n{json.dumps(FAKE_PLAN)}\nEOF\n")
  planner.chmod(0o755)
  argv = ["--per_point", "--max_running=16", "--gpus_per_node=8", "--time=4:00:00", "--partition=gpu",
          "--skip_install", "--venv=/shared/venvs/lm", f"--plan_python={planner}", "--log_dir=/shared/logs",
          "--shared_fs=/shared", "--dry_run", "--sweep=--config=experiments/sweeps/isoflop.py "
          "--sweep_dir=/shared/sweeps/iso"]
  out = io.StringIO()
  assert launch_slurm.main(argv, out) == 0
  text = out.getvalue().replace(str(tmp_path / "repo"), "<REPO>").replace(str(planner), "<PLAN>")
  text = re.sub(r'"submitted": "[0-9T:-]+"', '"submitted": "<TIME>"', text)
  assert not os.path.exists("/shared")  # a dry run writes nothing
  assert text == SLURM_PER_POINT_DRY_RUN


def test_tpu_pool_dry_run_prints_every_gcloud_call(tmp_path, monkeypatch):
  monkeypatch.setattr(common, "REPO", tmp_path / "repo")
  monkeypatch.chdir(tmp_path)
  (tmp_path / "repo" / "experiments" / "sweeps").mkdir(parents=True)
  (tmp_path / "repo" / "experiments" / "sweeps" / "isoflop.py").write_text("")
  plan = {**FAKE_PLAN, "sweep_dir": "/mnt/nfs/sweeps/iso"}
  plan["points"] = [{**p, "memory_bytes": {"C1e20-p7b": 60 * 2**30, "C1e18-p300m": 30 * 2**30}.get(
      p["name"], p["memory_bytes"]), "name": p["name"].replace("C1e20-p7b", "C1e19-p1b")} for p in plan["points"]]
  planner = tmp_path / "plan.sh"
  planner.write_text(f"#!/bin/bash\ncat <<'EOF'\n{json.dumps(plan)}\nEOF\n")
  planner.chmod(0o755)
  argv = ["--per_point", "--max_slices=2", "--zone=us-west4-a", "--accelerator_type=v5litepod-8", "--spot",
          "--shared_dir=/mnt/nfs", f"--plan_python={planner}", "--log_dir=logs/iso", "--dry_run",
          "--sweep=--config=experiments/sweeps/isoflop.py --sweep_dir=/mnt/nfs/sweeps/iso"]
  out = io.StringIO()
  assert launch_tpu.main(argv, out) == 0
  text = out.getvalue().replace(str(tmp_path / "repo"), "<REPO>").replace(str(planner), "<PLAN>")
  assert not (tmp_path / "logs").exists()  # a dry run writes nothing, the ledger included
  assert text == TPU_POOL_DRY_RUN


TPU_POOL_DRY_RUN = r"""
# sweep on a pool of at most 2 Cloud TPU slice(s) of up to v5litepod-8 (spot), lm-iso-<k>-<n>, in us-west4-a, runtime v2-alpha-tpuv5-lite; logs in logs/iso
# pack the working tree of <REPO> (tracked and untracked files, not ignored ones) into logs/iso/code.tar.gz
# the sweep's points (only reads; run in a dry run too)
cd <REPO> && <PLAN> -m experiments.sweep --config=experiments/sweeps/isoflop.py --sweep_dir=/mnt/nfs/sweeps/iso --plan_json
# 4 points: 1 final (skipped), 3 to run: C1e19-p1b on v5litepod-8, C1e18-p100m on v5litepod-1, C1e18-p300m on v5litepod-4
# at most 2 slice(s) at once, each taking the next pending point as it frees; below, the points dealt round-robin
# [lm-iso-0-1] create a v5litepod-8 slice (spot)
gcloud compute tpus queued-resources create lm-iso-0-1 --node-id=lm-iso-0-1 --zone=us-west4-a --accelerator-type=v5litepod-8 --runtime-version=v2-alpha-tpuv5-lite --spot
# wait until it is ACTIVE (polled every 30 s)
gcloud compute tpus queued-resources describe lm-iso-0-1 --zone=us-west4-a '--format=value(state.state)'
gcloud compute tpus tpu-vm scp logs/iso/code.tar.gz lm-iso-0-1:lm-code.tar.gz --worker=all --zone=us-west4-a --quiet
gcloud compute tpus tpu-vm ssh lm-iso-0-1 --worker=all --zone=us-west4-a --quiet '--command=set -e
if [ -f ~/lm-run.pid ] && kill -TERM "$(cat ~/lm-run.pid)" 2>/dev/null; then
  while kill -0 "$(cat ~/lm-run.pid)" 2>/dev/null; do sleep 5; done
fi
rm -rf ~/lm && mkdir -p ~/lm && tar -xzf ~/lm-code.tar.gz -C ~/lm
python3 -m venv ~/lm-venv 2>/dev/null || { sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv && python3 -m venv --clear ~/lm-venv; }
. ~/lm-venv/bin/activate && cd ~/lm
pip install -q -U pip && pip install -q -e .
pip install -U "jax[tpu]"
test -d /mnt/nfs || { printf '"'"'%s is not mounted on %s\n'"'"' /mnt/nfs "$(hostname)" >&2; exit 1; }'
# [lm-iso-0-1] run C1e19-p1b
gcloud compute tpus tpu-vm ssh lm-iso-0-1 --worker=all --zone=us-west4-a --quiet '--command=echo $$ > ~/lm-run.pid
. ~/lm-venv/bin/activate && cd ~/lm
export LM_SWEEP_SLICE=lm-iso-0-1
export LM_SWEEP_DEVICES=8
exec python -m experiments.sweep --config=experiments/sweeps/isoflop.py --sweep_dir=/mnt/nfs/sweeps/iso --point=C1e19-p1b'
# [lm-iso-0-1] delete the slice
gcloud compute tpus queued-resources delete lm-iso-0-1 --zone=us-west4-a --force --quiet
# [lm-iso-0-2] create a v5litepod-4 slice (spot)
gcloud compute tpus queued-resources create lm-iso-0-2 --node-id=lm-iso-0-2 --zone=us-west4-a --accelerator-type=v5litepod-4 --runtime-version=v2-alpha-tpuv5-lite --spot
# wait until it is ACTIVE (polled every 30 s)
gcloud compute tpus queued-resources describe lm-iso-0-2 --zone=us-west4-a '--format=value(state.state)'
gcloud compute tpus tpu-vm scp logs/iso/code.tar.gz lm-iso-0-2:lm-code.tar.gz --worker=all --zone=us-west4-a --quiet
gcloud compute tpus tpu-vm ssh lm-iso-0-2 --worker=all --zone=us-west4-a --quiet '--command=set -e
if [ -f ~/lm-run.pid ] && kill -TERM "$(cat ~/lm-run.pid)" 2>/dev/null; then
  while kill -0 "$(cat ~/lm-run.pid)" 2>/dev/null; do sleep 5; done
fi
rm -rf ~/lm && mkdir -p ~/lm && tar -xzf ~/lm-code.tar.gz -C ~/lm
python3 -m venv ~/lm-venv 2>/dev/null || { sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv && python3 -m venv --clear ~/lm-venv; }
. ~/lm-venv/bin/activate && cd ~/lm
pip install -q -U pip && pip install -q -e .
pip install -U "jax[tpu]"
test -d /mnt/nfs || { printf '"'"'%s is not mounted on %s\n'"'"' /mnt/nfs "$(hostname)" >&2; exit 1; }'
# [lm-iso-0-2] run C1e18-p300m
gcloud compute tpus tpu-vm ssh lm-iso-0-2 --worker=all --zone=us-west4-a --quiet '--command=echo $$ > ~/lm-run.pid
. ~/lm-venv/bin/activate && cd ~/lm
export LM_SWEEP_SLICE=lm-iso-0-2
export LM_SWEEP_DEVICES=4
exec python -m experiments.sweep --config=experiments/sweeps/isoflop.py --sweep_dir=/mnt/nfs/sweeps/iso --point=C1e18-p300m'
# if a slice is preempted: delete it, create another, and resume its point there from its checkpoint (at most 5 times a point: --max_restarts)
# [lm-iso-0-2] delete the slice
gcloud compute tpus queued-resources delete lm-iso-0-2 --zone=us-west4-a --force --quiet
# [lm-iso-1-1] create a v5litepod-1 slice (spot)
gcloud compute tpus queued-resources create lm-iso-1-1 --node-id=lm-iso-1-1 --zone=us-west4-a --accelerator-type=v5litepod-1 --runtime-version=v2-alpha-tpuv5-lite --spot
# wait until it is ACTIVE (polled every 30 s)
gcloud compute tpus queued-resources describe lm-iso-1-1 --zone=us-west4-a '--format=value(state.state)'
gcloud compute tpus tpu-vm scp logs/iso/code.tar.gz lm-iso-1-1:lm-code.tar.gz --worker=all --zone=us-west4-a --quiet
gcloud compute tpus tpu-vm ssh lm-iso-1-1 --worker=all --zone=us-west4-a --quiet '--command=set -e
if [ -f ~/lm-run.pid ] && kill -TERM "$(cat ~/lm-run.pid)" 2>/dev/null; then
  while kill -0 "$(cat ~/lm-run.pid)" 2>/dev/null; do sleep 5; done
fi
rm -rf ~/lm && mkdir -p ~/lm && tar -xzf ~/lm-code.tar.gz -C ~/lm
python3 -m venv ~/lm-venv 2>/dev/null || { sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv && python3 -m venv --clear ~/lm-venv; }
. ~/lm-venv/bin/activate && cd ~/lm
pip install -q -U pip && pip install -q -e .
pip install -U "jax[tpu]"
test -d /mnt/nfs || { printf '"'"'%s is not mounted on %s\n'"'"' /mnt/nfs "$(hostname)" >&2; exit 1; }'
# [lm-iso-1-1] run C1e18-p100m
gcloud compute tpus tpu-vm ssh lm-iso-1-1 --worker=all --zone=us-west4-a --quiet '--command=echo $$ > ~/lm-run.pid
. ~/lm-venv/bin/activate && cd ~/lm
export LM_SWEEP_SLICE=lm-iso-1-1
export LM_SWEEP_DEVICES=1
exec python -m experiments.sweep --config=experiments/sweeps/isoflop.py --sweep_dir=/mnt/nfs/sweeps/iso --point=C1e18-p100m'
# if a slice is preempted: delete it, create another, and resume its point there from its checkpoint (at most 5 times a point: --max_restarts)
# [lm-iso-1-1] delete the slice
gcloud compute tpus queued-resources delete lm-iso-1-1 --zone=us-west4-a --force --quiet
""".lstrip("\n")


SLURM_PER_POINT_DRY_RUN = """\
# sweep on SLURM, one job per point: at most 16 at once, up to 8 GPU(s) a node; jobs lm-iso-<n>; scripts and logs in /shared/logs
# write the batch scripts
mkdir -p /shared/logs
# the sweep's points and their states (only reads; run in a dry run too)
cd <REPO> && <PLAN> -m experiments.sweep --config=experiments/sweeps/isoflop.py --sweep_dir=/shared/sweeps/iso --plan_json
# 4 points: 1 final (skipped), 0 queued or running in SLURM (left alone), 3 to submit
# job lm-iso-1: an array of 2 point(s), 1 GPU(s) each, at most 2 at once
cat > /shared/sweeps/iso/slurm/lm-iso-1.json <<'EOF'
{
 "kind": "array",
 "gpus_per_node": 1,
 "nodes": 1,
 "points": [
  "C1e18-p100m",
  "C1e18-p300m"
 ],
 "cap": 2,
 "job_name": "lm-iso-1",
 "submitted": "<TIME>"
}
EOF
cat > /shared/logs/lm-iso-1.sbatch <<'EOF'
#!/bin/bash
# A job array of lm: one point of a sweep per task, written by experiments/launch/slurm.py --per_point.
# Task i runs points[i] alone (experiments.sweep --point), at most 2 at once (%2);
# each point's state is in its directory of the sweep_dir, whatever ran it. Submit it again with
# sbatch /shared/logs/lm-iso-1.sbatch: finished points are skipped.
#
# The sweep_dir must be on a filesystem that every node sees, and so must this checkout and its venv.
#
# --requeue: a preempted job (or one whose node failed) goes back to the queue and resumes from its
# checkpoint. --open-mode=append: it keeps one log across restarts. --signal: see on_time_limit.
#SBATCH --job-name=lm-iso-1
#SBATCH --array=0-1%2
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --time=4:00:00
#SBATCH --partition=gpu
#SBATCH --output=/shared/logs/%x-%A_%a.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@300

cd <REPO>
source /shared/venvs/lm/bin/activate
# jax.distributed gives each SLURM task one GPU (number SLURM_LOCALID) unless told which;
# this task drives all 1.
export JAX_LOCAL_DEVICE_IDS=0

export LM_SWEEP_DEVICES=1  # the allocation, for the point's record
points=(C1e18-p100m C1e18-p300m)
point="${points[$SLURM_ARRAY_TASK_ID]}"

echo "[launch_slurm] array task ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}: point $point, start $((${SLURM_RESTART_COUNT:-0} + 1)), nodes $SLURM_JOB_NODELIST, $(date)"

# 300 s before the time limit SLURM sends this script USR1 (--signal). SIGTERM goes to the job steps:
# lm saves a checkpoint at the next step and exits with status 'preempted'; then the job requeues
# itself and its next start resumes from that checkpoint (at most 5 times: --max_restarts).
requeue=0
on_time_limit() {
  echo "[launch_slurm] time limit in 300 s: SIGTERM to lm, then requeue"
  requeue=1
  scancel --signal=TERM "$SLURM_JOB_ID"
}
# Preemption or scancel: SLURM sends SIGTERM to every process of the job. Stay alive while lm saves its
# checkpoint; SLURM itself requeues a preempted job, and a cancelled one stays cancelled.
on_term() {
  echo "[launch_slurm] SIGTERM: waiting for lm to save a checkpoint"
}
trap on_time_limit USR1
trap on_term TERM

# In the background: bash runs a trap only between commands, so it waits with `wait`, which a signal
# interrupts; it keeps waiting until srun has exited, then takes srun's exit status.
srun --kill-on-bad-exit=1 python -m experiments.sweep --config=experiments/sweeps/isoflop.py --sweep_dir=/shared/sweeps/iso --point="$point" &
srun_pid=$!
while kill -0 "$srun_pid" 2>/dev/null; do wait "$srun_pid"; done
wait "$srun_pid"; status=$?
echo "[launch_slurm] srun exit status $status, $(date)"

if [ "$requeue" = 1 ]; then
  if [ "${SLURM_RESTART_COUNT:-0}" -lt 5 ]; then
    scontrol requeue "$SLURM_JOB_ID"
  else
    echo "[launch_slurm] not requeued: 5 restarts used; submit the script again to continue"
  fi
fi
exit "$status"
EOF
sbatch --parsable /shared/logs/lm-iso-1.sbatch
# job JOBID: logs in /shared/logs/lm-iso-1-*.out
# job lm-iso-2: 1 point(s) that need 2 nodes, one after another
cat > /shared/sweeps/iso/slurm/lm-iso-2.json <<'EOF'
{
 "kind": "nodes",
 "gpus_per_node": 8,
 "nodes": 2,
 "points": [
  "C1e20-p7b"
 ],
 "cap": 1,
 "job_name": "lm-iso-2",
 "submitted": "<TIME>"
}
EOF
cat > /shared/logs/lm-iso-2.sbatch <<'EOF'
#!/bin/bash
# A sweep of lm on SLURM, written by experiments/launch/slurm.py. Submit it again with: sbatch /shared/logs/lm-iso-2.sbatch
#
# One task per node: each task is one JAX process that drives all of its node's GPUs; jax.distributed
# finds the others from what srun sets for each task (SLURM_JOB_ID, SLURM_NTASKS, SLURM_PROCID,
# SLURM_LOCALID, SLURM_STEP_NODELIST). The workdir must be on a filesystem that every node sees
# (orbax writes each host's shards into the same checkpoint directory; process 0 writes
# metrics.jsonl, summary.json and config.json), and so must this checkout and its venv.
#
# --requeue: a preempted job (or one whose node failed) goes back to the queue and resumes from its
# checkpoint. --open-mode=append: it keeps one log across restarts. --signal: see on_time_limit.
#SBATCH --job-name=lm-iso-2
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --time=4:00:00
#SBATCH --partition=gpu
#SBATCH --output=/shared/logs/%x-%j.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@300

cd <REPO>
source /shared/venvs/lm/bin/activate
# jax.distributed gives each SLURM task one GPU (number SLURM_LOCALID) unless told which;
# this task drives all 8.
export JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7
export LM_SWEEP_DEVICES=16

echo "[launch_slurm] job $SLURM_JOB_ID, start $((${SLURM_RESTART_COUNT:-0} + 1)), nodes $SLURM_JOB_NODELIST, $(date)"

# 300 s before the time limit SLURM sends this script USR1 (--signal). SIGTERM goes to the job steps:
# lm saves a checkpoint at the next step and exits with status 'preempted'; then the job requeues
# itself and its next start resumes from that checkpoint (at most 5 times: --max_restarts).
requeue=0
on_time_limit() {
  echo "[launch_slurm] time limit in 300 s: SIGTERM to lm, then requeue"
  requeue=1
  scancel --signal=TERM "$SLURM_JOB_ID"
}
# Preemption or scancel: SLURM sends SIGTERM to every process of the job. Stay alive while lm saves its
# checkpoint; SLURM itself requeues a preempted job, and a cancelled one stays cancelled.
on_term() {
  echo "[launch_slurm] SIGTERM: waiting for lm to save a checkpoint"
}
trap on_time_limit USR1
trap on_term TERM

# In the background: bash runs a trap only between commands, so it waits with `wait`, which a signal
# interrupts; it keeps waiting until srun has exited, then takes srun's exit status.
srun --kill-on-bad-exit=1 python -m experiments.sweep --config=experiments/sweeps/isoflop.py --sweep_dir=/shared/sweeps/iso --points=C1e20-p7b &
srun_pid=$!
while kill -0 "$srun_pid" 2>/dev/null; do wait "$srun_pid"; done
wait "$srun_pid"; status=$?
echo "[launch_slurm] srun exit status $status, $(date)"

if [ "$requeue" = 1 ]; then
  if [ "${SLURM_RESTART_COUNT:-0}" -lt 5 ]; then
    scontrol requeue "$SLURM_JOB_ID"
  else
    echo "[launch_slurm] not requeued: 5 restarts used; submit the script again to continue"
  fi
fi
exit "$status"
EOF
sbatch --parsable /shared/logs/lm-iso-2.sbatch
# job JOBID: logs in /shared/logs/lm-iso-2-*.out
# follow it with: squeue --user=root --name=lm-iso-1,lm-iso-2; the points: <PLAN> -m experiments.sweep --status --sweep_dir=/shared/sweeps/iso
"""


# ---- real training: a requeued task, a preempted slice ----

COMPARED = ["point", "status", "steps", "train_loss", "eval_loss", "eval_bpb"]
ONE_DEVICE = child_env(inherit=False)  # every point on one CPU device, as the reference


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  from tests.helpers import shared_data_dir
  return shared_data_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir):
  """tiny:grid (two points of 128 steps) run by the local runner without interruption."""
  import pandas as pd
  sweep_dir = tmp_path_factory.mktemp("reference") / "sweep"
  result = subprocess.run([sys.executable, "-m", "experiments.sweep", f"--config={TINY}", f"--sweep_dir={sweep_dir}",
                           f"--config.overrides.data.data_dir={data_dir}", "--parallel=2"], cwd=ROOT,
                          env={**os.environ, **ONE_DEVICE}, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  return pd.read_csv(sweep_dir / "results.csv")[COMPARED]


def equal_to_reference(sweep_dir, reference):
  import pandas as pd
  from experiments.sweep import collect
  got = collect.collect(str(sweep_dir))[COMPARED]
  pd.testing.assert_frame_equal(got.reset_index(drop=True), reference.reset_index(drop=True), check_exact=True,
                                check_dtype=False)  # bitwise: lm resumes exactly


PREEMPTED_POINT = "D32.768K-d32"


@pytest.mark.slow
def test_a_requeued_array_task_resumes_its_point_and_the_table_equals_an_uninterrupted_one(
    tmp_path, monkeypatch, reference, data_dir):
  sweep_dir = tmp_path / "sweep"
  env = fake_slurm.install(str(tmp_path / "bin"), str(tmp_path / "slurm"))
  preempt = [{"point": PREEMPTED_POINT, "when": str(sweep_dir / PREEMPTED_POINT / "checkpoints" / "32")}]
  for k, v in {**env, **ONE_DEVICE, "FAKE_SLURM_PREEMPT": json.dumps(preempt)}.items():
    monkeypatch.setenv(k, v)
  monkeypatch.setattr(launch_slurm, "NODE_LOCAL", ())
  argv = ["--per_point", "--max_running=2", "--gpus_per_node=1", "--skip_install", f"--venv={sys.prefix}",
          f"--plan_python={sys.executable}", f"--log_dir={tmp_path / 'logs'}", "--poll_s=0.2", "--wait",
          sweep_arg(sweep_dir, [f"--config.overrides.data.data_dir={data_dir}"])]
  out = io.StringIO()
  try:
    assert launch_slurm.main(argv, out) == 0, out.getvalue()
  finally:
    fake_slurm.stop_daemon()
  calls = (tmp_path / "slurm" / "calls").read_text()
  assert "restart 1" in calls  # the preempted task ran again
  record = json.loads((sweep_dir / PREEMPTED_POINT / "record.json").read_text())
  assert record["attempt"] == 2 and record["slurm_restart"] == 1 and record["state"] == "finished"
  assert "Resumed from the checkpoint" in (sweep_dir / PREEMPTED_POINT / "log.txt").read_text()
  equal_to_reference(sweep_dir, reference)
  assert "finished 2" in out.getvalue()


@pytest.mark.slow
def test_a_preempted_slice_point_resumes_on_the_next_slice_and_the_table_equals_an_uninterrupted_one(
    tmp_path, monkeypatch, reference, data_dir):
  sweep_dir = tmp_path / "sweep"
  env = fake_gcloud.install(str(tmp_path / "bin"), str(tmp_path / "gcloud"), sys.prefix)
  preempt = [{"point": PREEMPTED_POINT, "when": str(sweep_dir / PREEMPTED_POINT / "checkpoints" / "32")}]
  for k, v in {**env, **ONE_DEVICE, "FAKE_GCLOUD_PREEMPT": json.dumps(preempt)}.items():
    monkeypatch.setenv(k, v)
  out = io.StringIO()
  try:
    rc = launch_tpu.main(pool_argv(tmp_path, sweep_dir, slices=2,
                                   extra=[f"--config.overrides.data.data_dir={data_dir}"]), out)
  finally:
    fake_gcloud.cleanup()
  assert rc == 0, out.getvalue()
  assert gcloud_calls(tmp_path, "preempt") and len(gcloud_calls(tmp_path, "create")) == 3 and not slices_up(tmp_path)
  assert f"{PREEMPTED_POINT}: its slice was preempted or lost: restart 1 of 5, from its checkpoint" in out.getvalue()
  record = json.loads((sweep_dir / PREEMPTED_POINT / "record.json").read_text())
  assert record["attempt"] == 2 and record["state"] == "finished" and record["tpu_slice"].endswith("-2")
  assert "Resumed from the checkpoint" in (sweep_dir / PREEMPTED_POINT / "log.txt").read_text()
  equal_to_reference(sweep_dir, reference)
