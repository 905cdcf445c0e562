"""µP and depth scaling (model.parameterization='mup'): the base model is SP, the table's
multipliers are what the parameters and updates show, the coordinate check is flat in width,
and µP works with every model option, mesh, the KV cache, HF export and resume."""

import dataclasses
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import coord_check, decode, optim, sharding, steps
from lm import parameterization as param_lib
from lm import train as train_lib
from lm.errors import ConfigError
from lm.model import Transformer, init_params
from tests.helpers import VOCAB, shared_data_dir, tiny_model_config, tiny_run_config
from tests.test_decode import GPT2, PROMPTS, STEPS, _prefill_then_steps

# µP away from its base in width (x2), head dim (x2) and depth (x2, CompleteP), the two families.
AWAY = dict(parameterization="mup", base_width=16, base_head_dim=4, base_depth=1, depth_alpha=1.0)
FAMILIES = {"llama": {}, "gpt2": GPT2}


def _batch(b=8, length=16, seed=1):
  tokens = np.random.default_rng(seed).integers(0, VOCAB, (b, length + 1)).astype(np.int32)
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "segment_ids": np.ones((b, length), np.int32),
          "positions": np.tile(np.arange(length, dtype=np.int32), (b, 1))}


def _one_step(model_cfg, optim_cfg, params=None):
  model = Transformer(model_cfg)
  opt, lr = optim.make_optimizer(optim_cfg, 10, model_cfg)
  params = init_params(model, jax.random.key(0)) if params is None else params
  state = {"step": jnp.int32(3), "params": params, "opt_state": opt.init(params)}  # step 3: lr > 0
  return jax.jit(steps.make_train_step(model, opt, lr))(state, _batch())


@pytest.mark.parametrize("family", FAMILIES)
def test_mup_at_its_base_shape_computes_what_sp_computes(family):
  sp = tiny_model_config(**FAMILIES[family])
  mup = dataclasses.replace(sp, parameterization="mup", base_width=sp.d_model, base_depth=sp.n_layers)
  o = tiny_run_config("/unused").optim
  (sp_state, sp_m), (mup_state, mup_m) = _one_step(sp, o), _one_step(mup, o)
  assert float(mup_m["train_loss"]) == float(sp_m["train_loss"])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9),
               mup_state["params"], sp_state["params"])


def test_init_scales_follow_the_table():
  m = tiny_model_config(n_layers=2, d_model=64, n_heads=4, n_kv_heads=4, d_ff=256, tie_embeddings=False,
                        parameterization="mup", base_width=16)   # m = 4
  p = init_params(Transformer(m), jax.random.key(0))
  std = lambda x: float(np.std(np.asarray(x)))  # noqa: E731
  assert std(p["layer_0"]["attn"]["q"]) == pytest.approx(0.02 / 2, rel=0.05)            # s / sqrt(m)
  assert std(p["layer_0"]["mlp"]["wi"]) == pytest.approx(0.02 / 2, rel=0.05)
  assert std(p["layer_0"]["mlp"]["wo"]) == pytest.approx(0.02 / 2 / 2, rel=0.05)        # s / sqrt(2 L m), L = 2
  assert std(p["embedding"]) == pytest.approx(0.02, rel=0.05) and std(p["head"]) == pytest.approx(0.02, rel=0.05)
  np.testing.assert_array_equal(p["final_norm"]["scale"], 1.0)


def test_first_adam_step_moves_each_kind_by_its_lr_multiplier():
  """Adam's first step is lr * sign(g) per entry (m/sqrt(v) = g/|g|): each tensor's step size
  is lr times its kind's multiplier. m = 4, l = 4, a = 0.5: hidden lr l^-0.5 / m = lr / 8,
  block norms lr / 2, embedding, head and final norm lr."""
  m = tiny_model_config(n_layers=4, d_model=64, n_heads=4, n_kv_heads=4, d_ff=256, tie_embeddings=False,
                        parameterization="mup", base_width=16, base_depth=1, depth_alpha=0.5)
  o = tiny_run_config("/unused").optim
  o.update(lr=1e-3, schedule="constant", warmup_steps=0, weight_decay=0.0, clip_norm=0.0, eps=1e-12)
  model = Transformer(m)
  opt, lr = optim.make_optimizer(o, 10, m)
  params = init_params(model, jax.random.key(0))
  state = {"step": jnp.int32(0), "params": params, "opt_state": opt.init(params)}
  new, _ = jax.jit(steps.make_train_step(model, opt, lr))(state, _batch())
  step_size = lambda *path: float(np.max(np.abs(np.asarray(  # noqa: E731
      _get(new["params"], path)) - np.asarray(_get(params, path)))))
  assert step_size("layer_1", "attn", "q") == pytest.approx(1e-3 / 8, rel=1e-4)
  assert step_size("layer_1", "mlp", "wo") == pytest.approx(1e-3 / 8, rel=1e-4)
  assert step_size("layer_1", "attn_norm", "scale") == pytest.approx(1e-3 / 2, rel=1e-4)
  for path in (("embedding",), ("head",), ("final_norm", "scale")):
    assert step_size(*path) == pytest.approx(1e-3, rel=1e-4), path


def test_weight_decay_per_step_is_the_same_at_every_width():
  """With zero gradients AdamW only decays: w <- w (1 - lr * wd) for hidden matrices at any width."""
  o = tiny_run_config("/unused").optim
  o.update(lr=1e-2, schedule="constant", warmup_steps=0, weight_decay=0.5, clip_norm=0.0)
  for width in (16, 64):
    m = tiny_model_config(d_model=width, n_heads=4, d_ff=4 * width, parameterization="mup", base_width=16)
    params = init_params(Transformer(m), jax.random.key(0))
    opt, _ = optim.make_optimizer(o, 10, m)
    grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = opt.update(grads, opt.init(params), params)
    q, dq = params["layer_0"]["attn"]["q"], updates["layer_0"]["attn"]["q"]
    np.testing.assert_allclose(dq, -1e-2 * 0.5 * q, rtol=1e-5)
    np.testing.assert_array_equal(updates["embedding"], 0.0)  # never decayed


def test_adam_eps_and_forward_multipliers():
  m = tiny_model_config(d_model=64, n_heads=4, head_dim=16, n_layers=4, **{**AWAY, "depth_alpha": 0.5})
  r = param_lib.ratios(m)
  assert (r.width, r.depth, r.alpha) == (4.0, 4.0, 0.5)
  assert param_lib.adam_eps(m, 1e-8) == pytest.approx(1e-8 / (4 * 2))
  assert param_lib.residual_multiplier(m) == 0.5 and param_lib.output_multiplier(m) == 0.25
  assert param_lib.attention_scale(m) == pytest.approx(2 / 16)  # sqrt(K0) / K: K0 = 4, K = 16


@pytest.mark.parametrize("implementation", ["reference", "xla"])
def test_attention_scale_is_applied_by_both_implementations(implementation):
  from lm.attention import attend, causal_segment_mask
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.standard_normal((2, 8, 4, 16)), jnp.float32) for _ in range(3))
  mask = causal_segment_mask(jnp.ones((2, 8), jnp.int32))
  # A scale of c/sqrt(K) equals the default scale applied to q * c.
  np.testing.assert_allclose(attend(q, k, v, mask, implementation, scale=0.3 / 4.0),
                             attend(q * 0.3, k, v, mask, implementation), rtol=1e-5, atol=1e-6)


VARIANTS = {  # scan, remat, GQA / MQA, tied and untied, both families
    "llama-gqa-tied": dict(n_kv_heads=2),
    "llama-mqa-untied-scan": dict(n_kv_heads=1, tie_embeddings=False, scan_layers=True),
    "gpt2-tied-remat": dict(remat="full", **GPT2),
    "gpt2-untied-scan-remat-dots": dict(tie_embeddings=False, scan_layers=True, remat="dots", **GPT2),
}


def _away(**kw):
  return tiny_model_config(d_model=32, n_heads=4, head_dim=8, **{**AWAY, **kw})


@pytest.mark.parametrize("variant", VARIANTS)
def test_folding_the_multipliers_gives_an_sp_model_with_the_same_logits(variant):
  cfg = _away(**VARIANTS[variant])
  params = init_params(Transformer(cfg), jax.random.key(0))
  params = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(1), x.shape), params)  # not init
  tokens = _batch()["inputs"]
  sp_cfg, sp_params = param_lib.fold_into_sp(cfg, params)
  assert sp_cfg.parameterization == "sp" and not sp_cfg.tie_embeddings
  ours = jax.jit(Transformer(cfg).apply)({"params": params}, tokens)
  folded = jax.jit(Transformer(sp_cfg).apply)({"params": sp_params}, tokens)
  np.testing.assert_allclose(folded, ours, rtol=1e-5, atol=1e-5)


def test_scan_and_remat_give_the_unrolled_gradients_under_mup():
  cfg = _away()
  params = init_params(Transformer(cfg), jax.random.key(0))
  def grads(c, p):
    return jax.jit(jax.grad(lambda p: steps.summed_loss(Transformer(c), 0.0, p, _batch())[0]))(p)
  ref = grads(cfg, params)
  from lm.model import stack_layers, unstack_layers
  scanned = dataclasses.replace(cfg, scan_layers=True, remat="full")
  got = unstack_layers(grads(scanned, stack_layers(params, cfg.n_layers)), cfg.n_layers)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), got, ref)


@pytest.mark.parametrize("variant", ["llama-gqa-tied", "gpt2-untied-scan-remat-dots"])
def test_cached_decoding_equals_the_full_forward_under_mup(variant):
  cfg = _away(**{k: v for k, v in VARIANTS[variant].items() if k != "remat"})
  model = Transformer(cfg)
  params = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(1), x.shape),
                        init_params(model, jax.random.key(0)))
  extra = np.random.default_rng(0).integers(0, VOCAB, (len(PROMPTS), STEPS)).astype(np.int32)
  full = np.zeros((len(PROMPTS), 16), np.int32)
  for b, p in enumerate(PROMPTS):
    full[b, :len(p) + STEPS] = p + extra[b].tolist()
  ref = np.asarray(jax.jit(model.apply)({"params": params}, full))
  batch = decode.left_pad([np.asarray(p, np.int32) for p in PROMPTS], bucket=8)
  prefill, cached = _prefill_then_steps(model, params, batch, extra)
  for b, n in enumerate(batch.lengths_B):
    np.testing.assert_allclose(prefill[b, 8 - n:], ref[b, :n], rtol=1e-5, atol=1e-5)
    for t in range(STEPS):
      np.testing.assert_allclose(cached[t, b], ref[b, n + t], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mesh_shape", [(2, 2, 2), (1, 4, 2), (1, 8, 1)])
def test_sharded_mup_step_equals_one_device(mesh_shape):
  cfg = _away(n_kv_heads=2, tie_embeddings=False)
  vocab_ok = dataclasses.replace(cfg, vocab_size=96)  # divides the tensor axis
  o = tiny_run_config("/unused").optim
  ref_state, ref_m = _one_step(vocab_ok, o)
  run = tiny_run_config("/unused")
  run.mesh.data, run.mesh.fsdp, run.mesh.tensor = mesh_shape
  mesh, rules = sharding.make_mesh(run.mesh), sharding.rules(run.mesh)
  model = Transformer(vocab_ok)
  opt, lr = optim.make_optimizer(o, 10, vocab_ok)
  spec = steps.StateSpec(model, opt, mesh, rules)
  state = spec.init(0)
  state["step"] = jax.device_put(jnp.int32(3), spec.shardings["step"])
  with steps.in_context(mesh, rules):
    step = spec.jit_train_step(steps.make_train_step(model, opt, lr), steps.batch_shardings(mesh, rules, steps.TRAIN_KEYS))
    state, m = step(state, sharding.shard_batch(_batch(), mesh, rules))
  np.testing.assert_allclose(m["train_loss"], ref_m["train_loss"], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), state["params"], ref_state["params"])


def test_hf_export_of_a_mup_model_reimports_to_the_same_logits(tmp_path):
  pytest.importorskip("safetensors")
  from lm.data.tokenizers import ByteTokenizer
  from lm.hf import exporter, importer
  cfg = dataclasses.replace(_away(n_kv_heads=2), vocab_size=259)
  params = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(1), x.shape),
                        init_params(Transformer(cfg), jax.random.key(0)))
  exporter.export(cfg, params, ByteTokenizer(), str(tmp_path))
  hf_cfg, hf_params, _ = importer.load_hf(str(tmp_path))
  tokens = _batch()["inputs"]
  ours = jax.jit(Transformer(cfg).apply)({"params": params}, tokens)
  theirs = jax.jit(Transformer(importer.model_config(hf_cfg)).apply)({"params": hf_params}, tokens)
  np.testing.assert_allclose(theirs, ours, rtol=1e-5, atol=1e-5)


def test_coordinate_check_is_flat_in_width_under_mup_and_grows_under_sp():
  """After 2 Adam steps at lr 1e-2 on widths 32..256 (lm/coord_check.py; 2 layers, 4 heads).

  Theory: a hidden activation moves by ~ t lr fan_in under SP (slope 1 in width, on top of
  SP's fixed-std init, whose branch outputs already grow ~ width^0.5 per matrix) and by
  ~ t lr fan_in / m = const under µP (slope 0). Measured: SP slopes 1.5 to 2.6, µP -0.19 to
  +0.18 (2026-12). Thresholds: µP |slope| < 0.35 (twice the largest measured deviation; a
  µP rule missing from one tensor kind moves a slope by >= 0.5), SP > 1.0.
  """
  names = coord_check.hidden_names()
  for param, ok in (("mup", lambda s: abs(s) < 0.35), ("sp", lambda s: s > 1.0)):
    rms = coord_check.run((32, 64, 128, 256), param, steps=2, lr=1e-2)
    slopes = {n: coord_check.slope(rms, n, step=2) for n in names}
    assert all(ok(s) for s in slopes.values()), (param, slopes)


def test_mup_fields_are_checked_with_the_fix_named():
  with pytest.raises(ConfigError, match=r"needs model.base_width"):
    tiny_model_config(parameterization="mup")
  with pytest.raises(ConfigError, match=r"model.base_width=16 is only read under model.parameterization='mup'"):
    tiny_model_config(base_width=16)
  with pytest.raises(ConfigError, match=r"depth_alpha=2.0 must lie in \[0.5, 1\]"):
    tiny_model_config(parameterization="mup", base_width=16, base_depth=1, depth_alpha=2.0)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return shared_data_dir(tmp_path_factory)


@pytest.mark.slow
def test_a_mup_run_resumes_exactly(tmp_path, data_dir):
  mup = dict(parameterization="mup", base_width=16, base_depth=1)
  cfg = tiny_run_config(data_dir, model=mup, train=dict(steps=8, eval_every=4, checkpoint_every=4))
  train_lib.train(cfg, str(tmp_path / "a"))
  shutil.copytree(tmp_path / "a", tmp_path / "b")
  shutil.rmtree(tmp_path / "b" / "checkpoints" / "8")
  train_lib.train(cfg, str(tmp_path / "b"))
  from tests.test_train import losses
  a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
  assert [b[s] for s in range(5, 9)] == [a[s] for s in range(5, 9)]


def _get(tree, path):
  for k in path:
    tree = tree[k]
  return tree

