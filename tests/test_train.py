"""Training in-process on 8 simulated devices: learning, golden numerics, other meshes,
a damaged checkpoint, and the optimizer's schedules and masks."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import flops, optim, report, steps
from lm import train as train_lib
from lm.metrics import read_jsonl
from lm.model import Transformer, init_params
from tests.helpers import shared_data_dir, tiny_model_config, tiny_run_config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return shared_data_dir(tmp_path_factory)


def losses(workdir):
  return {r["step"]: r["train_loss"] for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if "train_loss" in r}


def test_tiny_model_overfits_a_fixed_batch():
  """Memorising 2 x 32 random byte tokens: the loss starts at ln(259) = 5.56 nats, and a
  model that ignored the context could reach at best the batch's unigram entropy (~4 nats
  for 64 draws from 256 values). Below 0.1 nats it must be using the sequence."""
  cfg = tiny_run_config("/unused", optim=dict(lr=1e-2, warmup_steps=10, weight_decay=0.0))
  model = Transformer(tiny_model_config(vocab_size=259, n_layers=2, d_model=64, n_heads=4, d_ff=128))
  optimizer, lr = optim.make_optimizer(cfg.optim, 300)
  params = init_params(model, jax.random.key(0))
  state = {"step": jnp.int32(0), "params": params, "opt_state": optimizer.init(params)}
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, 259, (2, 33)).astype(np.int32)
  batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "segment_ids": np.ones((2, 32), np.int32),
           "positions": np.tile(np.arange(32, dtype=np.int32), (2, 1))}
  step = jax.jit(steps.make_train_step(model, optimizer, lr))
  first = None
  for _ in range(300):
    state, m = step(state, batch)
    first = float(m["train_loss"]) if first is None else first
  assert abs(first - np.log(259)) < 0.3
  assert float(m["train_loss"]) < 0.1


# The first three training losses of configs/tiny.py (seed 0, 8 devices, data=8). A change
# here means the numerics changed: the model, the data order, the init or the optimizer.
GOLDEN = {1: 5.5561309, 2: 5.5537958, 3: 5.3225627}


# Not marked slow though it trains a run (~8 s): the fast loop (-m "not slow") keeps the numerics tripwire.
def test_golden_first_losses(tmp_path, data_dir):
  cfg = tiny_run_config(data_dir, train=dict(steps=3, eval_every=3, checkpoint_every=3))
  train_lib.train(cfg, str(tmp_path / "run"))
  got = losses(tmp_path / "run")
  for s, expected in GOLDEN.items():
    assert got[s] == pytest.approx(expected, rel=2e-5), (s, got)


@pytest.mark.slow
def test_run_leaves_its_files_and_a_schema_row(tmp_path, data_dir):
  cfg = tiny_run_config(data_dir, train=dict(steps=6, eval_every=3, checkpoint_every=3))
  result = train_lib.train(cfg, str(tmp_path / "run"))
  run = tmp_path / "run"
  summary = json.loads((run / "summary.json").read_text())
  assert summary["status"] == "finished" and summary["steps"] == 6
  assert summary["tokens"] == 6 * 8 * 32 and summary["eval_loss"] > 0 and summary["eval_bpb"] > 0
  for column in ("run_id", "params_total", "flops_6n", "flops_exact", "tokens_per_s", "device_count", "git_commit",
                 "peak_load_avg", "peak_measure_s"):
    assert column in summary
  cores, host = flops.core_share()  # the peak was measured as this run started, on its cores
  assert (summary["cores"], summary["host_cores"], summary["core_share"]) == (cores, host, cores / host)
  assert summary["mfu"] == pytest.approx(summary["tokens_per_s"] * summary["flops_executed"] / summary["tokens"]
                                         / summary["peak_flops_measured"])
  assert summary["device_count"] == 8
  assert json.loads((run / "config.json").read_text())["model"]["d_model"] == 32
  assert sorted(os.listdir(run / "checkpoints")) == ["3", "6"]
  assert any(f.startswith("events") for f in os.listdir(run / "tensorboard"))
  assert result.summary == summary


@pytest.mark.slow
def test_restore_onto_another_mesh_continues_the_same_losses(tmp_path, data_dir):
  cfg = tiny_run_config(data_dir, train=dict(steps=8, eval_every=4, checkpoint_every=4))
  train_lib.train(cfg, str(tmp_path / "a"))                      # (data, fsdp, tensor) = (8, 1, 1)
  # The same run cut at its step-4 checkpoint, continued on a (2, 2, 2) mesh.
  shutil.copytree(tmp_path / "a", tmp_path / "b")
  shutil.rmtree(tmp_path / "b" / "checkpoints" / "8")
  cfg.mesh.update(data=2, fsdp=2, tensor=2)
  summary = train_lib.train(cfg, str(tmp_path / "b")).summary
  a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
  assert summary["steps"] == 8 and summary["status"] == "finished"
  for s in range(5, 9):
    assert b[s] == pytest.approx(a[s], rel=1e-5), (s, a[s], b[s])


@pytest.mark.slow
def test_unreadable_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, data_dir, capsys):
  cfg = tiny_run_config(data_dir, train=dict(steps=8, eval_every=4, checkpoint_every=4))
  run = tmp_path / "run"
  train_lib.train(cfg, str(run))
  reference = losses(run)
  for root, _, files in os.walk(run / "checkpoints" / "8" / "state"):  # damage every file of the state
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"not a checkpoint")
  cfg.train.steps = 8
  summary = train_lib.train(cfg, str(run)).summary
  out = capsys.readouterr().out
  assert "checkpoint at step 8 is unreadable" in out and "falling back to step 4" in out
  assert "Resumed from the checkpoint at step 4" in out
  assert (run / "checkpoints" / "unreadable-8").is_dir()  # kept, not deleted
  assert summary["status"] == "finished"
  assert losses(run)[8] == pytest.approx(reference[8], rel=1e-6)


def test_schedules_warm_up_and_end_where_they_say():
  cfg = tiny_run_config("/unused").optim
  cfg.update(lr=1.0, warmup_steps=10, min_lr_ratio=0.1, decay_fraction=0.2)
  for name in optim.SCHEDULES:
    cfg.schedule = name
    lr = optim.schedule(cfg, 100)
    assert float(lr(0)) == 0.0 and float(lr(5)) == pytest.approx(0.5) and float(lr(10)) == pytest.approx(1.0)
    end = {"cosine": 0.1, "constant": 1.0, "wsd": 0.1}[name]
    assert float(lr(100)) == pytest.approx(end, abs=1e-6)
  cfg.schedule = "wsd"
  lr = optim.schedule(cfg, 100)
  assert float(lr(79)) == pytest.approx(1.0) and float(lr(90)) == pytest.approx(0.55)  # halfway down the decay


def test_weight_decay_skips_norms_biases_and_embeddings():
  model = Transformer(tiny_model_config(use_bias=True, tie_embeddings=False, positions="learned"))
  mask = optim.decay_mask(init_params(model, jax.random.key(0)))
  assert not mask["embedding"] and not mask["pos_embedding"] and mask["head"]
  assert mask["layer_0"]["attn"]["q"] and not mask["layer_0"]["attn"]["q_bias"]
  assert not mask["layer_0"]["attn_norm"]["scale"] and not mask["final_norm"]["scale"]
  assert mask["layer_0"]["mlp"]["wi"] and not mask["layer_0"]["mlp"]["wi_bias"]
  scanned = optim.decay_mask(init_params(Transformer(tiny_model_config(scan_layers=True)), jax.random.key(0)))
  assert scanned["layers"]["attn"]["q"] and not scanned["layers"]["attn_norm"]["scale"]  # 2-D under scan


def test_gradient_accumulation_equals_one_big_batch():
  model = Transformer(tiny_model_config())
  cfg = tiny_run_config("/unused").optim
  optimizer, lr = optim.make_optimizer(cfg, 10)
  params = init_params(model, jax.random.key(0))
  rng = np.random.default_rng(1)
  tokens = rng.integers(0, 97, (8, 17)).astype(np.int32)
  seg = np.ones((8, 16), np.int32)
  seg[3, 10:] = 0  # padding: micro-batches hold different token counts
  batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "segment_ids": seg,
           "positions": np.tile(np.arange(16, dtype=np.int32), (8, 1))}
  out = {}
  for k in (1, 4):
    state = {"step": jnp.int32(0), "params": params, "opt_state": optimizer.init(params)}
    out[k] = jax.jit(steps.make_train_step(model, optimizer, lr, grad_accum_steps=k))(state, batch)
  np.testing.assert_allclose(out[1][1]["train_loss"], out[4][1]["train_loss"], rtol=1e-6)
  np.testing.assert_allclose(out[1][1]["grad_norm"], out[4][1]["grad_norm"], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               out[1][0]["params"], out[4][0]["params"])


@pytest.mark.slow
def test_init_from_takes_another_runs_parameters_but_not_its_optimizer(tmp_path, data_dir):
  from lm import checkpoint, loading
  base_cfg = tiny_run_config(data_dir, train=dict(steps=6, eval_every=6, checkpoint_every=6))
  train_lib.train(base_cfg, str(tmp_path / "pretrained"))
  tuned = tiny_run_config(data_dir, train=dict(steps=1, eval_every=1, checkpoint_every=1,
                                               init_from=str(tmp_path / "pretrained")),
                          optim=dict(lr=1e-12, warmup_steps=0, weight_decay=0.0))
  summary = train_lib.train(tuned, str(tmp_path / "tuned")).summary
  pre, post = loading.load(str(tmp_path / "pretrained")), loading.load(str(tmp_path / "tuned"))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), pre.params, post.params)
  assert losses(tmp_path / "tuned")[1] < losses(tmp_path / "pretrained")[1] - 0.5  # starts trained
  assert summary["steps"] == 1 and checkpoint.read_meta(str(tmp_path / "tuned"))["step"] == 1


def test_an_mfu_above_one_warns_that_the_peak_was_measured_under_load(capsys):
  summary = {"status": "finished", "steps": 10, "tokens": 40960, "wall_s": 5.0, "tokens_per_s": 8192.0,
             "mfu": 1.895, "peak_flops_measured": 65.7e9, "dtype": "bfloat16", "eval_loss": None,
             "peak_load_avg": 7.46}
  report.print_summary(summary)
  out = capsys.readouterr().out
  assert "MFU 189.5%" in out and "MFU above 100%" in out
  assert "124.5 GFLOP/s" in out and "65.7 GFLOP/s" in out  # achieved = 1.895 x 65.7
  assert "load average 7.5" in out and "flops.peak_flops('bfloat16', refresh=True)" in out
  report.print_summary({**summary, "mfu_cached_share": 0.622})
  assert "against the cached quiet peak x its core share, MFU is 62.2%" in capsys.readouterr().out
  report.print_summary({**summary, "mfu": 0.59})
  assert "warning" not in capsys.readouterr().out
