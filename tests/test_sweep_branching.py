"""WSD-branching sweeps (experiments/sweep/plan.py, cooldown_fraction): one stable run per model,
each point a cooldown branch from its checkpoint, the FLOPs saved, and the runner's order."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from experiments.sweep import dry_run
from experiments.sweep import plan as sweep_plan
from lm import optim
from lm.scaling_table import load_results
from ml_collections import ConfigDict
from tests.helpers import child_env, shared_data_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = child_env()  # one CPU device per process
BRANCHED = "experiments/sweeps/tiny.py:branched"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return shared_data_dir(tmp_path_factory)


def test_each_point_branches_from_its_models_stable_run_at_its_decay_start():
  points, _ = sweep_plan.expand(sweep_plan.load_config(BRANCHED))
  stables = {p.model: p for p in points if p.role == "stable"}
  branches = [p for p in points if p.role == "branch"]
  assert [p.role for p in points] == ["stable"] * 3 + ["branch"] * 6  # the stable runs first
  scratch = {p.name: p for p in sweep_plan.expand(sweep_plan.load_config("experiments/sweeps/tiny.py:isoflop"))[0]}
  for p in branches:
    stable = stables[p.model]
    warmup = stable.overrides["optim.warmup_steps"]
    assert p.overrides["optim.warmup_steps"] == warmup == max(1, round(0.1 * min(
        q.steps for q in branches if q.model == p.model)))  # one warmup per model: its shortest point's 10%
    s = optim.wsd_decay_start(ConfigDict({"warmup_steps": warmup, "decay_fraction": 0.2}), p.steps)
    assert (p.branch_step, p.after, p.steps) == (s, stable.name, scratch[p.name].steps)
    assert p.branch_step in stable.overrides["train.checkpoint_steps"]
    assert p.steps_run == p.steps - s and p.flops == scratch[p.name].flops  # the row is the whole run to D
    assert p.argv("/sw/" + p.name)[-1] == f"--config.train.branch_from=/sw/{stable.name}"
    assert "train.branch_from" not in p.identity()["overrides"]  # where the stable run is, not what p computes
  for model, stable in stables.items():
    assert stable.steps == max(p.branch_step for p in branches if p.model == model)
    assert stable.overrides["optim.schedule"] == "constant"
  spent = sum(p.flops_spent for p in points)
  assert spent == pytest.approx(sum(s.flops for s in stables.values())
                                + sum(p.flops_per_token["flops_exact"] * p.steps_run * p.tokens_per_step
                                      for p in branches))
  line = dry_run.branching_line(points, "flops_exact")
  ratio = spent / sum(scratch[p.name].flops for p in branches)
  assert f"({ratio:.2f}x, saves {1 - ratio:.0%})" in line and ratio < 1


@pytest.mark.slow
def test_branches_start_after_their_stable_run_and_become_the_fit_rows(data_dir, tmp_path):
  sweep_dir = tmp_path / "sweep"
  branches = ["C6e9-d32", "C3e9-d32", "C3e9-d16"]
  names = ",".join(branches + ["stable-d32", "stable-d16", "C3e9-d48"])  # stable-d48 is not run: its branch waits
  out = subprocess.run([sys.executable, "-m", "experiments.sweep", f"--config={BRANCHED}", f"--sweep_dir={sweep_dir}",
                        f"--config.overrides.data.data_dir={data_dir}", f"--points={names}", "--parallel=2"],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  assert "skip  C3e9-d48: blocked: its stable point stable-d48 is pending" in out.stdout
  assert "WSD branching: 3 stable runs + 6 cooldown branches spend" in out.stdout  # the whole sweep's plan
  records = json.loads((sweep_dir / "status.json").read_text())["points"]
  for branch in branches:
    stable = "stable-" + branch.split("-")[1]
    assert records[branch]["started_ts"] >= records[stable]["ended_ts"], branch
    assert "Branched from the checkpoint at step" in (sweep_dir / branch / "log.txt").read_text()
  table = pd.read_csv(sweep_dir / "results.csv").set_index("point")
  assert table.loc["C3e9-d48", "state"] == "pending" and table.loc["stable-d32", "state"] == "finished"
  assert (table.loc[branches, "role"] == "branch").all() and table.loc["stable-d32", "role"] == "stable"
  assert (table.loc[branches, "steps"] == table.loc[branches, "steps_planned"]).all()
  runs = load_results(str(sweep_dir / "results.csv"))  # the stable rows left out
  assert sorted(runs["D"]) == sorted(table.loc[branches, "tokens"])
  alone = subprocess.run([sys.executable, "-m", "experiments.sweep", f"--config={BRANCHED}", f"--sweep_dir={sweep_dir}",
                          f"--config.overrides.data.data_dir={data_dir}", "--point=C3e9-d48"],
                         cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
  assert alone.returncode == 75, alone.stdout[-2000:] + alone.stderr[-2000:]  # a scheduler runs it again later
  assert "C3e9-d48: blocked: its stable point stable-d48 is pending; run its stable point first" in alone.stdout


def test_seed_replicates_get_their_own_names_seeds_and_stable_runs():
  cfg = sweep_plan.load_config(BRANCHED)
  cfg.seeds, cfg.seed_budgets = (0, 7), (cfg.budgets[0],)
  points, _ = sweep_plan.expand(cfg)
  plain = {p.name: p for p in sweep_plan.expand(sweep_plan.load_config(BRANCHED))[0]}
  first = [p for p in points if not p.name.endswith("-seed7")]
  assert [p.name for p in first] == list(plain)  # the first seed's points keep their names
  assert all(p.overrides["train.seed"] == 0 for p in first)
  extra = [p for p in points if p.name.endswith("-seed7")]
  assert {p.name for p in extra if p.role == "branch"} == {
      f"{n}-seed7" for n, p in plain.items() if p.role == "branch" and p.budget == cfg.budgets[0]}
  for p in extra:
    assert p.overrides["train.seed"] == 7 and p.cfg.train.seed == 7
    if p.role == "branch":  # from its own seed's stable run, at the same step as seed 0's branch
      assert p.after == f"stable-{p.model}-seed7" and p.branch_step == plain[p.name[:-6]].branch_step
  cfg.seed_budgets = (1e99,)
  with pytest.raises(sweep_plan.SweepError, match=r"seed_budgets names \[1e\+99\], which are not in budgets"):
    sweep_plan.expand(cfg)
  cfg.seeds, cfg.seed_budgets = (1, 1), None
  with pytest.raises(sweep_plan.SweepError, match=r"seeds=\(1, 1\) must be distinct"):
    sweep_plan.expand(cfg)
