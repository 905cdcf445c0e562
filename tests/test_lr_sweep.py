"""lm/lr_sweep.py: a side-by-side LR sweep trains what lm.train trains at each LR, and the
optimum's fit finds a parabola's vertex."""

import math
import os

import numpy as np
import pytest

from lm import lr_sweep
from lm import train as train_lib
from lm.metrics import read_jsonl
from tests.helpers import shared_data_dir, tiny_run_config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return shared_data_dir(tmp_path_factory)


def _run(cfg, workdir):
  train_lib.train(cfg, str(workdir))
  rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  return ({r["step"]: r["train_loss"] for r in rows if "train_loss" in r},
          [r["eval_loss"] for r in rows if "eval_loss" in r][-1])


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_a_sweep_trains_what_lm_train_trains_at_each_lr(tmp_path, data_dir, optimizer):
  """Each LR's losses in the vmapped sweep equal a separate lm.train run's (on 8 devices)."""
  steps = dict(steps=4, eval_every=4, checkpoint_every=4, log_every=1)
  base = tiny_run_config(data_dir, train=steps, optim=dict(name=optimizer, warmup_steps=2))
  if optimizer == "muon":
    lrs, swept, field = [0.01, 0.05], "muon", "muon_lr"
  else:
    lrs, swept, field = [3e-3, 2e-2], "all", "lr"
  rows = lr_sweep.sweep(base, lrs, swept=swept, eval_batches=base.train.eval_steps, log_every=1)
  for lr, row in zip(lrs, rows):
    cfg = tiny_run_config(data_dir, train=steps, optim={"name": optimizer, "warmup_steps": 2, field: lr})
    train_losses, eval_loss = _run(cfg, tmp_path / f"{optimizer}_{lr}")
    assert [l for _, l in row["curve"]] == pytest.approx([train_losses[s] for s in range(1, 5)], rel=2e-5)
    assert row["eval_loss"] == pytest.approx(eval_loss, rel=2e-5)


def test_optimum_finds_the_vertex_of_a_parabola_in_log_lr():
  lrs = [2.0 ** e for e in range(-10, -3)]
  losses = [3.0 + 0.1 * (math.log2(lr) + 7.3) ** 2 for lr in lrs]
  best = lr_sweep.optimum(lrs, losses)
  assert math.log2(best["lr"]) == pytest.approx(-7.3, abs=1e-6) and not best["edge"]
  assert best["best_lr"] == 2.0 ** -7
  noisy = [l + 0.01 * n for l, n in zip(losses, np.random.default_rng(0).standard_normal(len(losses)))]
  best = lr_sweep.optimum(lrs, noisy)
  assert best["lo"] < 2 ** -7.3 < best["hi"]
  # The lowest loss at the end of the grid: the optimum may lie beyond it.
  assert lr_sweep.optimum(lrs, sorted(losses)[::-1])["edge"]
  assert lr_sweep.optimum(lrs, [None] * 6 + [1.0])["edge"]  # diverged runs are left out
  # A zigzag whose parabola's vertex lies outside the window (width 16's SP sweep, 2026-12-02):
  # the grid point, no interval, not a vertex clipped to the window's edge.
  zigzag = [3.689, 3.078, 2.994, 2.859, 2.947, 2.491, 2.739, 2.568]
  best = lr_sweep.optimum([2.0 ** e for e in range(-11, -3)], zigzag)
  assert (best["lr"], best["lo"], best["hi"], best["edge"]) == (2.0 ** -6, None, None, False)
  # A vertex inside the window whose +-2 SE runs far past it (depth 2's sweep): the grid point.
  zigzag = [2.565, 2.331, 2.246, 2.127, 2.744, 2.451, 2.620, 2.709]
  best = lr_sweep.optimum([2.0 ** e for e in range(-11, -3)], zigzag)
  assert (best["lr"], best["lo"], best["hi"]) == (2.0 ** -8, None, None)


def test_shift_exponent_reads_a_power_law():
  widths = [32, 64, 128, 256]
  assert lr_sweep.shift_exponent(widths, [1e-2 * (w / 32) ** -1 for w in widths]) == pytest.approx(-1.0)
  assert lr_sweep.shift_exponent(widths, [1e-2] * 4) == pytest.approx(0.0, abs=1e-12)


def test_rewriting_a_study_readme_keeps_what_follows_the_hand_written_marker(tmp_path):
  record = {"command": "python -m x", "date": "d", "machine": "m", "uptime_end": "u", "wall_s": 1.0,
            "load_min": 1.0, "load_max": 1.0, "load_mean": 1.0, "load_samples": 1, "cores": 2}
  lr_sweep.write_readme(str(tmp_path), "T", "design", record, "table one", 1)
  path = tmp_path / "README.md"
  path.write_text(path.read_text() + f"\n{lr_sweep.KEEP_MARKER}\n\n## Reading\n\nmy reading\n")
  lr_sweep.write_readme(str(tmp_path), "T", "design", record, "table two", 1)
  text = path.read_text()
  assert "table two" in text and "table one" not in text and text.endswith("## Reading\n\nmy reading\n")
  assert text.count(lr_sweep.KEEP_MARKER) == 1
