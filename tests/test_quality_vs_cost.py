"""experiments/studies/quality_vs_cost.py and lm/frontier.py: the Pareto frontier, the table built
from summary.json files and measurements (fake ones: exact arithmetic), its columns, the
figures, and once end to end on a tiny sweep (train, load, decode, write)."""

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from experiments.studies import quality_vs_cost as qvc
from lm import frontier
from tests.helpers import child_env, shared_data_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = child_env()  # one CPU device per process


def test_pareto_keeps_the_undominated_points():
  cost = [1.0, 2.0, 3.0, 4.0, 2.0, np.nan]
  bpb = [2.0, 1.5, 1.6, 1.0, 1.5, 0.1]  # 3.0 is dominated by 2.0; the two 2.0s tie; NaN never optimal
  assert frontier.pareto(cost, bpb).tolist() == [True, True, False, True, True, False]
  assert frontier.pareto([1.0, 1.0], [1.0, 2.0]).tolist() == [True, False]  # equal cost, worse quality
  assert frontier.pareto([], []).tolist() == []


def test_frontier_steps_and_gain_per_doubling():
  t = pd.DataFrame({"name": ["a", "b", "c", "d"], "ms": [1.0, 2.0, 3.0, 4.0], "bpb": [1.0, 0.9, 0.95, 0.8]})
  steps = frontier.frontier_steps(t, "ms", "bpb")
  assert steps[["from", "to"]].values.tolist() == [["a", "b"], ["b", "d"]]  # c is dominated by b
  assert steps["cost ratio"].tolist() == [2.0, 2.0]
  np.testing.assert_allclose(steps["gain"], [0.1, 0.1])
  np.testing.assert_allclose(steps["gain per 2x cost"], [0.1, 0.1])
  assert frontier.per_doubling(t, "ms", "bpb") == pytest.approx(0.1)  # bpb = 1 - 0.1 log2(ms) on the frontier
  assert math.isnan(frontier.per_doubling(t.iloc[:1], "ms", "bpb"))


def _workdir(root, name, params, bpb, point_model=None, status="finished"):
  d = root / name
  d.mkdir()
  summary = {"run_id": name, "experiment": f"ladder_{name}", "status": status, "params_total": params,
             "params_nonembedding": params // 2, "n_layers": 2, "d_model": 32, "vocab_size": 4096, "tokens": 2048,
             "steps": 1, "eval_loss": bpb * 3, "eval_bpb": bpb, "unigram_bpb": 2.2, "wall_s": 5.0,
             "tokens_per_s": 400.0, "git_commit": "abc"}
  (d / "summary.json").write_text(json.dumps(summary))
  if point_model:
    (d / "point.json").write_text(json.dumps({"model": point_model}))
  return str(d)


def _fake_measurement(t1, tn, step_bytes, batches=(1, 4)):
  """Three repeats: the median one is (t1, tn); one 10% faster decode, one twice as slow."""
  return {b: dict(t1=[t1 * b] * 3, tn=[tn * b, t1 * b + 0.9 * (tn - t1) * b, t1 * b + 2 * (tn - t1) * b],
                  kv_bytes=1000 * b, step_bytes=step_bytes + 1000 * b, weight_bytes=step_bytes) for b in batches}


def test_table_from_summaries_and_measurements(tmp_path):
  big = _workdir(tmp_path, "D2K-p1m", 2_000_000, 1.5, point_model="p1m")
  small = _workdir(tmp_path, "p200k", 500_000, 1.8)
  slow = _workdir(tmp_path, "slow", 1_000_000, 1.9)
  assert qvc.sweep_workdirs(str(tmp_path)) == [big, small, slow]
  measured = {big: _fake_measurement(0.01, 0.64, 8e6), small: _fake_measurement(0.005, 0.32, 2e6),
              slow: _fake_measurement(0.02, 1.28, 4e6)}
  bandwidth = {"copy_gbs": 20.0, "read_gbs": 10.0}
  table = qvc.assemble([qvc.quality(w) for w in (big, small, slow)], measured, bandwidth, [1, 4], 64, 64)
  assert list(table.columns) == qvc.columns([1, 4])
  assert table["name"].tolist() == ["p200k", "slow", "p1m"]  # by size; a point's model, a rung, a directory
  p1m = table.iloc[2]
  # t(N) - t(1) = 0.63 s over 63 steps: 10 ms a token; prefill 64 tokens in 10 ms
  assert p1m["ms_per_token_b1"] == pytest.approx(10.0)
  assert (p1m["ms_per_token_min_b1"], p1m["ms_per_token_max_b1"]) == pytest.approx((9.0, 20.0))
  assert p1m["decode_tok_s_b1"] == pytest.approx(100.0)
  assert p1m["prefill_tok_s_b1"] == pytest.approx(6400.0)
  assert p1m["ms_per_token_b4"] == pytest.approx(40.0)   # 4x the time for 4 sequences: the same tok/s
  assert p1m["bytes_per_token_b4"] == pytest.approx((8e6 + 4000) / 4)
  assert p1m["bw_util_b1"] == pytest.approx((8e6 + 1000) / 0.010 / 20e9)  # bytes/step x steps/s / copy BW
  assert p1m["weight_bytes"] == 8e6 and p1m["copy_gbs"] == 20.0 and p1m["eval_bpb"] == 1.5
  assert table["pareto_b1"].tolist() == [True, False, True]  # 'slow' is slower and worse than p1m
  with pytest.raises(SystemExit, match="no finished run"):
    qvc.quality(_workdir(tmp_path, "running", 1, 1.0, status="preempted"))


def test_pngs_from_a_table(tmp_path):
  t = pd.DataFrame({"name": ["a", "b", "c"], "eval_bpb": [2.0, 1.8, 1.9], "ms_per_token_b1": [1.0, 2.0, 3.0],
                    "ms_per_token_b32": [0.1, 0.3, 0.2], "bytes_per_token_b1": [1e6, 2e6, 3e6],
                    "bytes_per_token_b32": [1e5, 2e5, 3e5]})
  paths = frontier.write_pngs(t, str(tmp_path), [1, 32])
  assert [os.path.basename(p) for p in paths] == ["frontier_latency.png", "bytes_per_token.png"]
  assert all(open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n" for p in paths)


def test_train_runs_the_sweep_config(monkeypatch, tmp_path):
  calls = []
  monkeypatch.setattr(qvc.subprocess, "run", lambda argv, cwd: calls.append((argv, cwd)) or
                      subprocess.CompletedProcess(argv, 0))
  qvc.train("experiments/sweeps/quality_vs_cost.py", str(tmp_path), data_dir="/data", log=lambda _: None)
  assert calls == [([sys.executable, "-m", "experiments.sweep", "--config=experiments/sweeps/quality_vs_cost.py",
                     f"--sweep_dir={tmp_path}", "--config.overrides.data.data_dir=/data"], qvc.REPO)]
  monkeypatch.setattr(qvc.subprocess, "run", lambda argv, cwd: subprocess.CompletedProcess(argv, 1))
  with pytest.raises(SystemExit, match="exited 1"):
    qvc.train("x.py", str(tmp_path), log=lambda _: None)


def test_the_sweep_config_trains_every_rung_on_the_same_tokens():
  from experiments.sweep import plan as sweep_plan
  from experiments.sweeps import quality_vs_cost as sweep
  points, left_out = sweep_plan.expand(sweep.get_config())
  assert not left_out and [p.model for p in points] == list(sweep.RUNGS)
  assert {p.tokens for p in points} == {sweep.TOKENS} and {p.steps for p in points} == {sweep.TOKENS // (16 * 128)}
  assert all(p.overrides["train.eval_every"] == p.overrides["train.checkpoint_every"] == 800 for p in points)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return shared_data_dir(tmp_path_factory)


@pytest.mark.slow
def test_end_to_end_on_a_tiny_trained_run(tmp_path, data_dir):
  """A tiny run trained here (and a copy of it: two rows, one compile), then the CLI on them:
  load, decode at two batch sizes, write the table, run.json and the figures."""
  from lm import train as train_lib
  from tests.helpers import tiny_run_config
  cfg = tiny_run_config(data_dir, train=dict(steps=2, eval_every=2, checkpoint_every=2, eval_steps=1, samples=0))
  train_lib.train(cfg, str(tmp_path / "tiny"))
  shutil.copytree(tmp_path / "tiny", tmp_path / "tiny_copy")
  out = tmp_path / "out"
  assert qvc.main([f"--workdirs={tmp_path / 'tiny'},{tmp_path / 'tiny_copy'}", f"--out_dir={out}", "--batches=1,2",
                   "--prompt_len=16", "--new_tokens=16", "--repeats=1"]) == 0
  table = pd.read_csv(out / "results.csv")
  assert list(table.columns) == qvc.columns([1, 2])
  assert table["name"].tolist() == ["tiny", "tiny_copy"]
  assert (table["tokens"] == 2 * 8 * 32).all() and table["eval_bpb"].gt(0).all()
  cost = table[[f"{c}_b{b}" for c in ("prefill_tok_s", "bytes_per_token", "kv_bytes") for b in (1, 2)]]
  assert np.isfinite(cost.to_numpy(float)).all() and (cost.to_numpy(float) > 0).all()
  # per sequence the cache holds P + N - 1 = 31 slots of keys and values: 2 x 2 layers x 31 x 2 kv heads
  # x head_dim 8 x 4 bytes = 7,936 bytes (plus segment ids and the slot index)
  row = table.iloc[0]
  assert row["kv_bytes_b1"] >= 7936 and row["kv_bytes_b2"] - row["kv_bytes_b1"] >= 7936
  assert row["weight_bytes"] == 4 * row["params_total"]  # float32
  assert {"frontier_latency.png", "bytes_per_token.png", "run.json"} <= set(os.listdir(out))
