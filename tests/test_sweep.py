"""experiments.sweep: plans (grid, IsoFLOP), the dry run, point states, and the runner as a user
runs it: failures recorded without stopping the sweep, a changed config refused, final points
skipped, and a sweep stopped by SIGTERM then SIGKILL that finishes with the same table as an
uninterrupted one. The runner tests run real `python -m experiments.sweep` processes on
experiments/sweeps/tiny.py (points of 128 steps, a few seconds each, most of it start-up)."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from experiments.sweep import collect
from experiments.sweep import plan as sweep_plan
from experiments.sweep import status as status_lib
from lm import flops as flops_lib
from lm.metrics import SCHEMA
from tests.helpers import child_env, shared_data_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = child_env()  # one CPU device per process
TINY = "experiments/sweeps/tiny.py"
COMPARED = ["point", "status", "steps", "train_loss", "eval_loss", "eval_bpb"]


def tiny_sweep(variant="grid", **fields):
  cfg = sweep_plan.load_config(f"{TINY}:{variant}")
  cfg.update(fields)
  return cfg


def sweep_cmd(sweep_dir, data_dir, variant="faults", *flags):
  return [sys.executable, "-m", "experiments.sweep", f"--config={TINY}:{variant}", f"--sweep_dir={sweep_dir}",
          f"--config.overrides.data.data_dir={data_dir}", *flags]


def run(cmd):
  return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)


def table(sweep_dir):
  return pd.read_csv(os.path.join(sweep_dir, "results.csv"))


def wait_for(predicate, proc, what, timeout=120):
  deadline = time.time() + timeout
  while not predicate():
    assert proc.poll() is None, f"the sweep ended before {what}: {proc.stdout.read()[-3000:]}"
    assert time.time() < deadline, f"no {what} in {timeout} s"
    time.sleep(0.02)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return shared_data_dir(tmp_path_factory)


# ---- plans ----

def test_isoflop_points_spend_their_budget_in_the_stated_flop_definition():
  points, left_out = sweep_plan.expand(tiny_sweep("isoflop"))
  assert [p.name for p in points] == [f"C{c}-{m}" for c in ("3e9", "6e9") for m in ("d16", "d32", "d48")]
  for p in points:
    mcfg = sweep_plan.model_config(p.cfg)
    per_token = flops_lib.flops_exact(mcfg, p.cfg.data.seq_len)
    assert p.tokens_per_step == 8 * 32 and p.cfg.train.steps == p.steps
    assert p.steps == round(p.budget / (per_token * 256)) and p.flops_budget == p.budget
    assert abs(p.flops / p.budget - 1) < 0.5 / p.steps + 1e-9  # off only by the rounding of steps
    assert p.params_nonembedding == flops_lib.params_nonembedding(mcfg)
    assert p.overrides["optim.warmup_steps"] == max(1, round(0.1 * p.steps))
    assert p.overrides["train.eval_every"] == p.steps and p.overrides["train.checkpoint_every"] == math.ceil(p.steps / 4)
  assert not left_out
  six_n, _ = sweep_plan.expand(tiny_sweep("isoflop", flops_definition="flops_6n"))
  for a, b in zip(six_n, points):  # 6N counts fewer FLOPs a token here, so the same C buys more steps
    assert a.steps == round(a.budget / (6 * a.params_nonembedding * 256)) > b.steps
  fewer, left_out = sweep_plan.expand(tiny_sweep("isoflop", min_steps=60, max_steps=200))
  assert {p.name for p in fewer} | {n for n, _ in left_out} == {p.name for p in points}
  assert all(60 <= p.steps <= 200 for p in fewer) and left_out


def test_grid_points_and_what_identifies_them():
  points, _ = sweep_plan.expand(tiny_sweep("grid"))
  assert [(p.name, p.steps) for p in points] == [("D32.768K-d16", 128), ("D32.768K-d32", 128)]
  p = points[1]
  assert p.flops_budget == flops_lib.flops_exact(sweep_plan.model_config(p.cfg), 32) * 128 * 256
  p.overrides["data.data_dir"] = "/somewhere"
  assert "data.data_dir" not in p.identity()["overrides"] and "logging.tensorboard" not in p.identity()["overrides"]
  argv = p.argv("/w")
  assert argv[:4] == ["-m", "lm.main", "--config=configs/tiny.py", "--workdir=/w"]
  assert "--config.train.steps=128" in argv and "--config.logging.tensorboard=false" in argv


def test_points_logging_to_wandb_share_a_group_named_after_the_sweep():
  quiet, _ = sweep_plan.expand(tiny_sweep("grid"))
  assert not any("wandb_group" in a for a in quiet[0].argv("/sweeps/iso1/D32.768K-d16"))
  logged, _ = sweep_plan.expand(tiny_sweep("grid", overrides={"logging": {"wandb": True}}))
  assert [a for a in logged[0].argv("/sweeps/iso1/D32.768K-d16") if "wandb_group" in a] == [
      "--config.logging.wandb_group=iso1"]
  named, _ = sweep_plan.expand(tiny_sweep("grid", overrides={"logging": {"wandb": True, "wandb_group": "mine"}}))
  assert [a for a in named[0].argv("/sweeps/iso1/x") if "wandb_group" in a] == ["--config.logging.wandb_group=mine"]


def test_the_committed_cpu_isoflop_experiment_brackets_every_budget():
  cfg = sweep_plan.load_config("experiments/sweeps/isoflop_cpu.py")
  points, _ = sweep_plan.expand(cfg)
  per_budget = {b: [p for p in points if p.budget == b] for b in cfg.budgets}
  assert len(per_budget) >= 3 and all(len(ps) >= 4 for ps in per_budget.values())
  assert all(p.flops_definition == "flops_exact" and p.steps >= cfg.min_steps for p in points)


def test_point_names_write_the_budget_exactly_so_no_two_share_a_workdir():
  """32,768 and 32,800 tokens were both 'D32.8K' (3 digits): two lm.main on one workdir."""
  points, _ = sweep_plan.expand(tiny_sweep("grid", budgets=(32768, 32800, 2e6), models=("d16",)))
  assert [p.name for p in points] == ["D32.768K-d16", "D32.8K-d16", "D2M-d16"]
  assert [sweep_plan.budget_label("isoflop", c) for c in (3e12, 2.5e13, 32768, 32800)] == [
      "C3e12", "C2.5e13", "C3.2768e4", "C3.28e4"]
  with pytest.raises(sweep_plan.SweepError, match=r"lists 32768 twice; two points would share one workdir"):
    sweep_plan.expand(tiny_sweep("grid", budgets=(32768, 32768)))


@pytest.mark.parametrize("fields,message", [
    (dict(kind="sideways"), "kind='sideways' is not one of"),
    (dict(budgets=(0.0,)), "must be positive"),
    (dict(flops_definition="flops_7n"), "flops_definition='flops_7n'"),
    (dict(models=("d32", "d99")), "models 'd32' and 'd99' are the same config"),
    (dict(config="configs/ladder.py", models=("p50k", "p3k"), shapes={}), "model 'p3k'.*unknown ladder rung"),
    (dict(shapes={"d16": {"model": {"n_kv_heads": 3}}}), "model 'd16'.*n_kv_heads=3"),
    (dict(shapes={"d16": {"model": {"d_modle": 3}}}), "no field 'model.d_modle'"),
])
def test_bad_sweep_configs_name_the_problem(fields, message):
  with pytest.raises(sweep_plan.SweepError, match=message):
    sweep_plan.expand(tiny_sweep("grid", **fields))


def test_point_states_from_summary_and_record(tmp_path):
  def point(name, summary=None, record=None):
    d = tmp_path / name
    d.mkdir()
    if summary:
      (d / "summary.json").write_text(json.dumps({"status": summary}))
    return str(d), record
  started = time.time() + 60  # a record newer than any summary here
  cases = {
      "pending": point("a"), "finished": point("b", "finished"), "diverged": point("c", "diverged"),
      "preempted": point("d", None, {"state": "running", "started_ts": started}),  # its runner died
      "failed": point("e", "preempted", {"state": "failed", "started_ts": started}),  # failed before training
  }
  for want, (d, record) in cases.items():
    assert status_lib.point_state(d, record, runner_alive=False) == want
  assert status_lib.point_state(*cases["preempted"], runner_alive=True) == "running"
  assert [status_lib.should_run(d) for d, _ in cases.values()] == [True, False, False, True, True]


def test_collect_tabulates_any_folder_of_runs_for_a_fit(tmp_path):
  """Standalone workdirs at any depth (not a sweep) -> one row each, with device-seconds, and a
  table lm.scaling groups into budgets by FLOPs; a run's own subdirectories are not searched."""
  from lm import scaling
  runs = {}
  for c in (1e12, 1e13, 1e14):
    for n in (1e4, 3e4, 1e5):
      d = tmp_path / f"budget{c:.0e}" / f"n{n:.0e}"
      d.mkdir(parents=True)
      tokens = c / (6 * n)
      row = {k: None for k in SCHEMA} | {"run_id": d.name, "status": "finished", "params_nonembedding": n,
                                         "tokens": tokens, "flops_6n": c, "flops_exact": c,
                                         "eval_loss": 1.7 + 400 / n**0.35 + 400 / tokens**0.3,
                                         "wall_s": 10.0, "device_count": 4, "device_kind": "cpu"}
      (d / "summary.json").write_text(json.dumps(row))
      runs[str(d.relative_to(tmp_path))] = row
  (tmp_path / "budget1e+12" / "n1e+04" / "checkpoints").mkdir()  # a stray summary inside a run: not a run
  (tmp_path / "budget1e+12" / "n1e+04" / "checkpoints" / "summary.json").write_text("{}")
  result = subprocess.run([sys.executable, "-m", "experiments.collect", f"--sweep_dir={tmp_path}"], cwd=ROOT,
                          env=ENV, capture_output=True, text=True)  # the old name, as issue 14 ran it
  assert result.returncode == 0, result.stderr
  assert f"wrote {tmp_path}/results.csv: 9 runs (finished 9)" in result.stdout
  t = table(tmp_path)
  assert sorted(t["point"]) == sorted(runs) and (t["state"] == "finished").all()
  assert (t["device_s"] == 40.0).all() and t["sweep"].isna().all() and t["attempts"].isna().all()
  fit_input = scaling.load_results(str(tmp_path / "results.csv"), flops="flops_6n")  # with N non-embedding
  assert len(fit_input) == 9 and sorted(fit_input.groupby("budget").size()) == [3, 3, 3]


# ---- the runner ----

def test_parallel_points_get_disjoint_shares_of_the_cores(tmp_path, monkeypatch):
  """--parallel: each running point's affinity mask is a share no running point holds; lm keys
  its measured peak (hence MFU) by that mask. Fake points report their mask and stay up a while."""
  from experiments.sweep import runner as runner_lib
  assert runner_lib.core_shares(list(range(8)), 3) == [[0, 1, 2], [3, 4, 5], [6, 7]]
  assert runner_lib.core_shares([0, 1], 4) is None and runner_lib.core_shares([0, 1], 1) is None
  monkeypatch.setattr(runner_lib, "passthrough_flags", lambda: [])
  monkeypatch.setattr(runner_lib, "POLL_S", 0.01)
  report = ("import json, os, sys, time; t = time.time(); time.sleep(0.3); "
            "json.dump({'status': 'finished', 'cores': sorted(os.sched_getaffinity(0)), 'start': t, "
            "'end': time.time()}, open(os.path.join(sys.argv[1], 'summary.json'), 'w'))")
  points = [sweep_plan.Point(f"p{i}", "m", "c", {}, 1.0, 1.0, "flops_exact", 1, 1, 1, 1, {"flops_exact": 1.0}, 0)
            for i in range(5)]
  for p in points:
    p.argv = lambda workdir: ["-c", report, workdir]
  cores = sorted(os.sched_getaffinity(0))
  shares = runner_lib.core_shares(cores, 2)
  runner = runner_lib.Runner(str(tmp_path), points, 2, 0, log=lambda text: None, shares=shares)
  runner.run(points)
  got = [json.loads((tmp_path / p.name / "summary.json").read_text()) for p in points]
  assert all(g["cores"] in shares for g in got)
  for a in got:  # points that overlapped in time held different shares
    assert all(a["cores"] != b["cores"] for b in got if b is not a and b["start"] < a["end"] and a["start"] < b["end"])
  main_thread = os.sched_getaffinity(0)
  try:
    os.sched_setaffinity(0, shares[0])
    assert flops_lib.device_key().endswith(f" x{len(shares[0])}")
  finally:
    os.sched_setaffinity(0, main_thread)
  assert flops_lib.device_key().endswith(f" x{len(cores)}")

def test_a_non_zero_exit_is_never_recorded_finished(tmp_path):
  """A process that exits 1 after a summary.json saying finished (another process's, when two
  points shared a workdir) is failed: in the record, the table, the relaunch and the exit status."""
  from experiments.sweep import runner as runner_lib
  point = sweep_plan.expand(tiny_sweep("grid"))[0][0]
  d = tmp_path / point.name
  d.mkdir()
  (d / "log.txt").write_text("Traceback ...\nOSError: the other process's checkpoint\n")
  runner = runner_lib.Runner(str(tmp_path), [point], 1, 0, log=lambda text: None)
  runner.records[point.name] = {"state": "running", "attempt": 1, "started_ts": time.time() - 1}
  runner.running[point.name] = (None, open(os.devnull, "w"))
  (d / "summary.json").write_text(json.dumps({"status": "finished", "steps": 128}))
  runner.finish(point, 1)
  record = status_lib.read_records(str(tmp_path))[point.name]
  assert (record["state"], record["returncode"]) == ("failed", 1)
  assert record["message"] == ("exit status 1 after summary.json said finished: "
                               "OSError: the other process's checkpoint")
  assert status_lib.point_state(str(d), record, runner_alive=False) == "failed"
  assert status_lib.should_run(str(d), record)

@pytest.mark.slow
def test_dry_run_prints_the_plan_with_measured_estimates(data_dir, tmp_path):
  sweep_dir = tmp_path / "sweep"
  result = run(sweep_cmd(sweep_dir, data_dir, "isoflop", "--dry_run", "--parallel=2",
                         "--config.models=('d16',)", "--config.min_steps=150"))
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  assert "probe: d16: compile" in out and "C counts flops_exact" in out
  for column in ("N_total", "C (flops_exact)", "steps", "D/N", "memory", "est. time"):
    assert column in out
  assert "C6e9-d16" in out and "left out: C3e9-d16 (129 steps" in out
  assert "1 points, 1 to run" in out and "with --parallel=2" in out
  assert os.listdir(sweep_dir) == ["estimate.json"]  # the only file a dry run writes: what the sweep compares with
  estimate = json.loads((sweep_dir / "estimate.json").read_text())
  assert list(estimate["points"]) == ["C6e9-d16"] and estimate["devices"] == 1
  point = estimate["points"]["C6e9-d16"]
  assert point["device_s"] == point["total_s"] * 1 > 0
  assert f"estimated device-hours: {point['device_s'] / 3600:.3g} (1 device(s) a point" in out


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir):
  """tiny:faults run without interruption: two points finish, one diverges, one fails."""
  sweep_dir = tmp_path_factory.mktemp("reference") / "sweep"
  result = run(sweep_cmd(sweep_dir, data_dir, "faults", "--parallel=4"))
  assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]  # a point failed
  return sweep_dir, result.stdout


@pytest.mark.slow
def test_failed_and_diverged_points_are_recorded_and_the_rest_finish(reference):
  sweep_dir, out = reference
  t = table(sweep_dir).set_index("point")
  assert t["status"].to_dict() == {"D32.768K-d16": "finished", "D32.768K-d32": "finished",
                                   "D32.768K-diverge": "diverged", "D32.768K-broken": "failed"}
  assert (t["state"] == t["status"]).all()
  assert "data.eval_split='no_such_split'" in t.loc["D32.768K-broken", "message"]
  assert t.loc["D32.768K-diverge", "steps"] < 128 and t.loc["D32.768K-d16", "steps"] == 128
  assert list(table(sweep_dir).columns[:len(SCHEMA)]) == list(SCHEMA)
  assert set(collect.SWEEP_COLUMNS) <= set(table(sweep_dir).columns)
  assert (t["flops_definition"] == "flops_exact").all() and (t["flops_budget"] > 0).all()
  finished = t[t["status"] == "finished"]
  assert (abs(finished["flops_exact"] / finished["flops_budget"] - 1) < 1e-9).all()  # grid: C = tokens x per token
  assert "finished 2  diverged 1  failed 1" in out


@pytest.mark.slow
def test_a_relaunch_skips_final_points_and_refuses_a_changed_config(reference, data_dir, tmp_path):
  sweep_dir = tmp_path / "copy"
  shutil.copytree(reference[0], sweep_dir)
  before = {p: os.path.getmtime(sweep_dir / p / "summary.json") for p in ("D32.768K-d16", "D32.768K-d32")}
  again = run(sweep_cmd(sweep_dir, data_dir, "grid"))  # the same two points, both finished
  assert again.returncode == 0, again.stderr[-3000:]
  assert "2 points, 2 final (skipped), 0 to run" in again.stdout
  assert "not in the config (left in place, still collected): D32.768K-broken, D32.768K-diverge" in again.stdout
  assert before == {p: os.path.getmtime(sweep_dir / p / "summary.json") for p in before}
  changed = run(sweep_cmd(sweep_dir, data_dir, "grid", "--config.overrides.train.eval_steps=3"))
  assert changed.returncode != 0 and "Refusing to relaunch" in changed.stderr
  assert "D32.768K-d16: train.eval_steps: 2 -> 3" in changed.stderr
  shown = run([sys.executable, "-m", "experiments.sweep", "--status", f"--sweep_dir={sweep_dir}"])
  assert "D32.768K-broken" in shown.stdout and "finished 2  diverged 1  failed 1" in shown.stdout


@pytest.mark.slow
def test_a_sweep_stopped_by_sigterm_then_sigkill_finishes_with_the_uninterrupted_table(reference, data_dir, tmp_path):
  """tiny:grid is tiny:faults without its diverging and failing points: the same two points
  (same names, same overrides), so its table must equal those rows of the reference."""
  sweep_dir = tmp_path / "sweep"
  cmd = sweep_cmd(sweep_dir, data_dir, "grid", "--parallel=2")
  d32 = sweep_dir / "D32.768K-d32"

  def launch():
    return subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

  # 1. SIGTERM once d32 has its first checkpoint: the points save a checkpoint and stop.
  proc = launch()
  wait_for(lambda: (d32 / "checkpoints" / "32").is_dir(), proc, "a checkpoint of D32.768K-d32")
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out[-3000:]
  assert "stopped by a signal" in out
  first = status_lib.states(str(sweep_dir), ["D32.768K-d32"])["D32.768K-d32"]
  assert first == "preempted" and json.loads((d32 / "summary.json").read_text())["steps"] < 128, out[-3000:]

  # 2. Relaunch; SIGKILL the runner as soon as d32 has resumed. The kernel sends
  # its points SIGTERM (PR_SET_PDEATHSIG): they stop, as preempted if their loop had begun.
  proc = launch()
  wait_for(lambda: "Resumed from the checkpoint" in (d32 / "log.txt").read_text(), proc, "D32.768K-d32 resuming")
  proc.send_signal(signal.SIGKILL)
  proc.communicate(timeout=60)
  deadline = time.time() + 120
  while status_lib.orphans(str(sweep_dir)):
    assert time.time() < deadline, "the points of the killed runner did not exit"
    time.sleep(0.05)
  assert status_lib.summary(str(d32))["status"] == "preempted"  # killed mid-point, not finished

  # 3. Relaunch to the end: the same table as the uninterrupted sweep.
  final = run(cmd)
  assert final.returncode == 0, final.stdout[-3000:]
  got = table(sweep_dir)[COMPARED]
  want = table(reference[0]).pipe(lambda t: t[t["point"].isin(got["point"])])[COMPARED].reset_index(drop=True)
  assert len(got) == 2
  pd.testing.assert_frame_equal(got, want, check_exact=True, check_dtype=False)  # bitwise: lm resumes exactly
  assert table(sweep_dir).set_index("point").loc["D32.768K-d32", "attempts"] == 3


@pytest.mark.slow
def test_two_hosts_run_each_point_together_and_only_host_0_writes_sweep_files(reference, data_dir, tmp_path):
  """The launchers run the same sweep command on every host: here two runners on one machine,
  as processes 0 and 1 of one jax.distributed job (gloo), which every point's lm.main joins."""
  import socket
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  sweep_dir = tmp_path / "sweep"
  cmd = sweep_cmd(sweep_dir, data_dir, "grid", "--config.models=('d16',)", f"--coordinator_address=127.0.0.1:{port}",
                  "--num_processes=2", "--parallel=2")
  env = {**ENV, "JAX_NUM_CPU_DEVICES": "1"}
  procs = [subprocess.Popen(cmd + [f"--process_id={i}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
  assert "--parallel=2 ignored" in outs[1] and "host 1/2] start D32.768K-d16" in outs[1]
  point = sweep_dir / "D32.768K-d16"
  assert (point / "log.txt").exists() and (point / "log.host1.txt").exists()
  records = json.loads((sweep_dir / "status.json").read_text())["points"]
  assert records["D32.768K-d16"]["pid"] in {int(line.split("pid ")[1].rstrip(")")) for line in outs[0].splitlines()
                                          if "start D32.768K-d16" in line}  # host 0's record only
  got = table(sweep_dir).set_index("point").loc["D32.768K-d16"]
  want = table(reference[0]).set_index("point").loc["D32.768K-d16"]
  assert got["status"] == "finished" and got["device_count"] == 2
  # The same global batches, split over 2 devices instead of 1: only the order of the gradient
  # sums differs, which over the point's steps moved eval_loss by 5.5e-4 (of 2.95) in one run.
  # Bitwise agreement at equal device counts is test_multiprocess's job.
  assert abs(got["eval_loss"] - want["eval_loss"]) < 3e-3
