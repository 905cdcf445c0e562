"""Checkpoint integrity (issue 14): checksums recorded at save and verified at restore, so that
flipped bytes, an edited data-iterator state or non-finite parameters count as damage (fall
back to the previous checkpoint) instead of restoring silently; readers fall back too."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from lm import checkpoint as checkpoint_lib
from lm import loading, sharding
from lm import train as train_lib
from lm.errors import WorkdirError
from lm.metrics import read_jsonl
from lm.model import Transformer
from tests.helpers import shared_data_dir, tiny_model_config, tiny_run_config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return shared_data_dir(tmp_path_factory)


def config(data_dir, steps=8):
  return tiny_run_config(data_dir, train=dict(steps=steps, eval_every=4, checkpoint_every=4, samples=0))


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data_dir):
  run = tmp_path_factory.mktemp("integrity") / "run"
  train_lib.train(config(data_dir), str(run))
  return run


@pytest.fixture
def run(tmp_path, finished):
  shutil.copytree(finished, tmp_path / "run")
  return tmp_path / "run"


def losses(workdir):
  return {r["step"]: r["train_loss"] for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if "train_loss" in r}


def rewrite_checkpoint(run, step, edit, keep_checksums=False):
  """Re-saves checkpoint `step` with `edit(state)` applied. With keep_checksums the meta keeps the
  checksums recorded before the edit: silent damage on disk, which only the checksums can see
  (flipping raw bytes of orbax's files was not deterministic: where the bytes land depends on
  the order orbax wrote the arrays in, and a flip in a header or compressed chunk fails the read
  instead, which is the other, "unreadable" kind of damage)."""
  step_dir = run / "checkpoints" / str(step)
  state = ocp.StandardCheckpointer().restore(step_dir / "state")
  meta = json.loads((step_dir / "meta" / "metadata").read_text())
  data = json.loads((step_dir / "data" / "metadata").read_text())
  edit(state)
  shutil.rmtree(step_dir)
  ckpt = checkpoint_lib.Checkpointer(str(run), keep=5)
  ckpt.save(step, state, data, {k: v for k, v in meta.items() if k != "checksums"}, wait=True)
  ckpt.close()
  if keep_checksums:
    (step_dir / "meta" / "metadata").write_text(json.dumps(meta))


def flip_one_bit(state):
  q = np.array(state["params"]["layer_0"]["attn"]["q"])
  q.view(np.uint32).flat[7] ^= 1  # the lowest mantissa bit of one element
  state["params"]["layer_0"]["attn"]["q"] = q


def corrupt_silently(run, step):
  rewrite_checkpoint(run, step, flip_one_bit, keep_checksums=True)


def test_a_silently_changed_bit_is_damage_and_the_run_falls_back(run, data_dir, capsys):
  reference = losses(run)
  corrupt_silently(run, 8)
  summary = train_lib.train(config(data_dir), str(run)).summary
  out = capsys.readouterr().out
  assert "checkpoint at step 8 is damaged: " in out and "differ from the checksums recorded when it was saved" in out
  assert "falling back to step 4" in out and (run / "checkpoints" / "unreadable-8").is_dir()
  assert summary["status"] == "finished" and summary["eval_loss"] is not None
  assert losses(run)[8] == pytest.approx(reference[8], rel=1e-6)


def test_an_edited_data_iterator_state_is_damage(run, data_dir, capsys):
  path = run / "checkpoints" / "8" / "data" / "metadata"
  state = json.loads(path.read_text())
  text = json.dumps(state)
  edited = text.replace('"next_index_in_buffer": ', '"next_index_in_buffer": 1', 1)  # still valid JSON, valid state
  assert edited != text
  path.write_text(edited)
  train_lib.train(config(data_dir, steps=12), str(run))
  out = capsys.readouterr().out
  assert "checkpoint at step 8 is damaged: its data-iterator state differs" in out and "falling back to step 4" in out


def nan_params(state):
  """One NaN parameter, saved with consistent checksums: as if a run had written non-finite
  parameters, which lm's own save refuses to do."""
  scale = np.asarray(state["params"]["final_norm"]["scale"])
  state["params"]["final_norm"]["scale"] = np.full_like(scale, np.nan)


def test_restored_non_finite_parameters_never_lead_to_finished(run, data_dir, capsys):
  rewrite_checkpoint(run, 8, nan_params)
  summary = train_lib.train(config(data_dir), str(run)).summary
  out = capsys.readouterr().out
  assert "checkpoint at step 8 is damaged: its parameters are not finite" in out and "falling back to step 4" in out
  assert summary["status"] == "finished" and np.isfinite(summary["eval_loss"])
  rewrite_checkpoint(run, 4, nan_params)
  rewrite_checkpoint(run, 8, nan_params)
  with pytest.raises(WorkdirError, match="none of the 2 checkpoint"):
    train_lib.train(config(data_dir), str(run))


def test_readers_skip_a_damaged_latest_checkpoint_and_leave_it_in_place(run, capsys):
  good = loading.load(str(run))
  corrupt_silently(run, 8)
  fallback = loading.load(str(run))
  err = capsys.readouterr().err
  assert fallback.step == 4 and good.step == 8
  assert "newer ones are damaged" in err and "differ from the checksums" in err
  assert (run / "checkpoints" / "8").is_dir()  # a reader moves nothing


def test_checksums_are_the_same_on_every_mesh_and_see_a_one_bit_change():
  model = Transformer(tiny_model_config())
  sums = {}
  for shape in ((8, 1, 1), (2, 2, 2), (1, 4, 2)):
    cfg = tiny_run_config("/unused").mesh
    cfg.update(data=shape[0], fsdp=shape[1], tensor=shape[2])
    mesh, rules = sharding.make_mesh(cfg), sharding.rules(cfg)
    params = sharding.init_params(model, mesh, rules, 0)
    sums[shape] = checkpoint_lib.checksums(params)
  assert sums[(8, 1, 1)] == sums[(2, 2, 2)] == sums[(1, 4, 2)]
  host = jax.tree.map(np.asarray, params)
  q = host["layer_0"]["attn"]["q"].copy()
  q.view(np.uint32)[1, 2, 3] ^= 1  # the lowest mantissa bit of one element
  changed = checkpoint_lib.checksums({**host, "layer_0": {**host["layer_0"], "attn": {**host["layer_0"]["attn"], "q": q}}})
  assert {k for k in changed if changed[k] != sums[(8, 1, 1)][k]} == {"layer_0/attn/q"}
  swapped = host["layer_0"]["attn"]["q"].copy()
  swapped[[0, 1]] = swapped[[1, 0]]  # the same values in other places
  assert checkpoint_lib.checksums(jnp.asarray(swapped)) != checkpoint_lib.checksums(host["layer_0"]["attn"]["q"])
