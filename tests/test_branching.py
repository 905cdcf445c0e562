"""Cooldown branches (lm/branching.py): a branch from a stable run's checkpoint is the
from-scratch wsd run of the same schedule, and a branch that is not is refused."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import checkpoint as checkpoint_lib
from lm import optim
from lm import schema
from lm import train as train_lib
from lm.errors import ConfigError, WorkdirError
from lm.metrics import read_jsonl
from tests.helpers import shared_data_dir, tiny_run_config

WARMUP, STABLE_STEPS = 2, 12
# Branch lengths T with decay_fraction 0.2: decay starts at 10 - 2 = 8 and 15 - 3 = 12.
BRANCHES = {10: 8, 15: 12}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return shared_data_dir(tmp_path_factory)


def run_config(data_dir, steps: int, schedule: str, **train):
  return tiny_run_config(
      data_dir, train=dict(steps=steps, eval_every=steps, checkpoint_every=steps, log_every=1, keep_checkpoints=1,
                           **train),
      optim=dict(schedule=schedule, warmup_steps=WARMUP, decay_fraction=0.2, decay_shape="1-sqrt"))


def branch_config(data_dir, stable_dir, steps: int, **optim_overrides):
  cfg = run_config(data_dir, steps, "wsd", branch_from=str(stable_dir), branch_step=BRANCHES.get(steps, 8))
  cfg.optim.update(optim_overrides)
  return cfg


@pytest.fixture(scope="module")
def stable(tmp_path_factory, data_dir):
  """The stable phase: constant LR after the same warmup, checkpoints kept at both decay starts."""
  d = tmp_path_factory.mktemp("branching") / "stable"
  train_lib.train(run_config(data_dir, STABLE_STEPS, "constant", checkpoint_steps=tuple(BRANCHES.values())), str(d))
  return d


def rows(workdir):
  return {r["step"]: r for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if "train_loss" in r}


def test_wsd_is_constant_until_its_decay_then_1_sqrt_to_the_floor():
  cfg = tiny_run_config("/unused", optim=dict(lr=1.0, warmup_steps=2, min_lr_ratio=0.1, decay_fraction=0.2,
                                              schedule="wsd", decay_shape="1-sqrt")).optim
  wsd = optim.schedule(cfg, 100)
  cfg.schedule = "constant"
  constant = optim.schedule(cfg, 100)
  steps = np.arange(80)
  assert np.array_equal(np.asarray(wsd(steps)), np.asarray(constant(steps)))  # decay starts at 100 - 20
  # 1-sqrt: 0.1 + 0.9 (1 - sqrt(x)) at the fraction x of the 20 decay steps.
  for step, x in ((80, 0.0), (85, 0.25), (96, 0.8), (100, 1.0)):
    assert float(wsd(step)) == pytest.approx(0.1 + 0.9 * (1 - np.sqrt(x)), rel=1e-6)


@pytest.mark.slow
def test_a_branched_cooldown_is_the_from_scratch_wsd_run(tmp_path, data_dir, stable):
  assert sorted(os.listdir(stable / "checkpoints")) == ["12", "8"]  # 8 kept although keep_checkpoints=1
  steps = 15
  scratch = train_lib.train(run_config(data_dir, steps, "wsd"), str(tmp_path / "scratch")).summary
  branch = train_lib.train(branch_config(data_dir, stable, steps), str(tmp_path / "branch")).summary
  a, b = rows(tmp_path / "scratch"), rows(tmp_path / "branch")
  assert sorted(a) == sorted(b) == list(range(1, steps + 1))  # the stable rows 1-12 copied, 13-15 trained
  for s in range(1, steps + 1):
    assert b[s]["train_loss"] == a[s]["train_loss"], s  # bitwise: the same state, the same steps
    assert b[s]["lr"] == pytest.approx(a[s]["lr"], rel=1e-6), s
  assert branch["eval_loss"] == pytest.approx(scratch["eval_loss"], rel=1e-6)
  assert (branch["steps"], branch["tokens"], branch["status"]) == (scratch["steps"], scratch["tokens"], "finished")
  assert branch["flops_executed"] == scratch["flops_executed"]  # the row counts the run to D, not the cooldown


@pytest.mark.slow
def test_a_branch_off_its_stable_phase_is_refused_before_it_trains(tmp_path, data_dir, stable):
  # T = 13 branching at 12: its decay starts at 13 - 3 = 10, where the stable run's LR stayed at its peak.
  late = branch_config(data_dir, stable, 13)
  late.train.branch_step = 12
  with pytest.raises(ConfigError, match="branch_step=12: at step 11 .* decay start \\(step 10"):
    train_lib.train(late, str(tmp_path / "late"))
  # Another peak LR: a field a branch must share.
  with pytest.raises(ConfigError, match="optim.lr: 0.01 there, 0.03 here"):
    train_lib.train(branch_config(data_dir, stable, 10, lr=3e-2), str(tmp_path / "lr"))
  other = branch_config(data_dir, stable, 10)
  other.model.d_ff = 128
  with pytest.raises(ConfigError, match="model.d_ff: 64 there, 128 here"):
    train_lib.train(other, str(tmp_path / "shape"))
  missing = branch_config(data_dir, stable, 10)
  missing.train.update(steps=11, branch_step=9)
  missing.optim.decay_fraction = 2 / 11
  with pytest.raises(WorkdirError, match="no checkpoint at step 9"):
    train_lib.train(missing, str(tmp_path / "missing"))
  for name in ("late", "lr", "shape", "missing"):
    assert not os.path.exists(tmp_path / name / "checkpoints")


def test_branch_fields_are_checked_on_their_own():
  t = tiny_run_config("/unused", train=dict(steps=10)).train
  for fields, message in ((dict(branch_from="/x"), "set both"), (dict(branch_from="/x", branch_step=10), r"\[1, "),
                          (dict(branch_from="/x", branch_step=4, init_from="/y"), "drop train.init_from"),
                          (dict(checkpoint_steps=(4, 11)), r"\[11\] are not steps")):
    bad = t.copy_and_resolve_references()
    bad.update(fields)
    with pytest.raises(ConfigError, match=message):
      schema.validate_branch(bad)
  json.dumps(t.to_dict())  # the defaults serialise (config.json)


def test_checkpoint_steps_are_kept_beside_the_newest_keep_checkpoints(tmp_path):
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path), keep=1, preserve=(2, 4))
  for step in range(1, 7):
    ckpt.save(step, {"params": {"w": jnp.full((2,), float(step))}}, {"pos": step}, {"step": step}, wait=True)
  ckpt.close()
  assert sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit()) == [2, 4, 6]
  abstract = {"params": {"w": jax.ShapeDtypeStruct((2,), "float32")}}
  state, data, meta = checkpoint_lib.restore_step(str(tmp_path), 2, abstract)  # another run's, read only
  assert float(state["params"]["w"][0]) == 2.0 and data == {"pos": 2} and meta["step"] == 2
