"""Muon (optim.name='muon'): each weight orthogonalised as its fan-in x fan-out matrix, AdamW
for the rest exactly as optax.adamw, sharded steps equal one device, a tiny model overfits."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import muon, optim, sharding, steps
from lm.model import Transformer, init_params
from tests.helpers import tiny_model_config, tiny_run_config


def _muon_update(tree):
  opt = muon.scale_by_muon(beta=0.95, ns_steps=5)
  return opt.update(tree, opt.init(tree))[0]


def test_a_3d_weight_is_orthogonalised_as_its_fan_in_by_fan_out_matrix():
  g_DHK = jnp.asarray(np.random.default_rng(0).standard_normal((16, 4, 8)), jnp.float32)
  as_3d = _muon_update({"layer_0": {"attn": {"q": g_DHK}}})["layer_0"]["attn"]["q"]
  as_2d = _muon_update({"layer_0": {"mlp": {"wo": g_DHK.reshape(16, 32)}}})["layer_0"]["mlp"]["wo"]
  np.testing.assert_allclose(as_3d.reshape(16, 32), as_2d, rtol=1e-5, atol=1e-6)
  # Orthogonalised: Newton-Schulz's singular values lie near 1 (0.5 to 1.5 by design), times
  # sqrt(fan_out / fan_in) = sqrt(32 / 16).
  s = np.linalg.svd(np.asarray(as_2d) / np.sqrt(2), compute_uv=False)
  assert 0.4 < s.min() and s.max() < 1.6
  # o (H, K, D): rows are the (H, K) fan-in; scanned: each layer on its own.
  g_LHKD = jnp.asarray(np.random.default_rng(1).standard_normal((3, 4, 8, 16)), jnp.float32)
  scanned = _muon_update({"layers": {"attn": {"o": g_LHKD}}})["layers"]["attn"]["o"]
  for i in range(3):
    one = _muon_update({"layer_0": {"mlp": {"wo": g_LHKD[i].reshape(32, 16)}}})["layer_0"]["mlp"]["wo"]
    np.testing.assert_allclose(scanned[i].reshape(32, 16), one, rtol=1e-5, atol=1e-6)


def test_swiglu_gate_and_up_are_two_matrices():
  g_D2F = jnp.asarray(np.random.default_rng(2).standard_normal((16, 2, 24)), jnp.float32)
  both = _muon_update({"layer_0": {"mlp": {"wi": g_D2F}}})["layer_0"]["mlp"]["wi"]
  for c in range(2):
    one = _muon_update({"layer_0": {"mlp": {"wo": g_D2F[:, c]}}})["layer_0"]["mlp"]["wo"]
    np.testing.assert_allclose(both[:, c], one, rtol=1e-5, atol=1e-6)


def _batch(b=8, length=16, vocab=96, seed=1):
  tokens = np.random.default_rng(seed).integers(0, vocab, (b, length + 1)).astype(np.int32)
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "segment_ids": np.ones((b, length), np.int32),
          "positions": np.tile(np.arange(length, dtype=np.int32), (b, 1))}


def _muon_config(**o):
  return tiny_run_config("/unused", optim=dict(name="muon", warmup_steps=1, **o))


def test_the_adamw_side_of_muon_is_optax_adamw():
  m = tiny_model_config(tie_embeddings=False, use_bias=True, norm="layernorm")
  model = Transformer(m)
  params = init_params(model, jax.random.key(0))
  grads = jax.grad(lambda p: steps.summed_loss(model, 0.0, p, _batch(vocab=97))[0])(params)
  o = _muon_config().optim
  mu, _ = optim.make_optimizer(o, 10, m)
  adamw, _ = optim.make_optimizer(_adamw(o), 10, m)
  state_mu, state_ad = mu.init(params), adamw.init(params)
  for _ in range(3):  # a few steps, so the schedules and moments are past their first value
    up_mu, state_mu = mu.update(grads, state_mu, params)
    up_ad, state_ad = adamw.update(grads, state_ad, params)
  for path in (("embedding",), ("head",), ("final_norm", "scale"), ("layer_0", "attn_norm", "bias"),
               ("layer_1", "mlp", "wi_bias")):
    np.testing.assert_array_equal(_get(up_mu, path), _get(up_ad, path))
  assert not np.allclose(_get(up_mu, ("layer_0", "attn", "q")), _get(up_ad, ("layer_0", "attn", "q")))


def _adamw(o):
  o = o.copy_and_resolve_references()
  o.name = "adamw"
  return o


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("mesh_shape", [(2, 2, 2), (1, 4, 2), (1, 8, 1)])
def test_sharded_muon_steps_equal_one_device(mesh_shape, scan):
  """FSDP (embed over fsdp) and tensor sharding (heads, mlp, vocab over tensor): two steps."""
  m = dataclasses.replace(tiny_model_config(n_kv_heads=2, tie_embeddings=False, scan_layers=scan), vocab_size=96)
  cfg = _muon_config()
  model = Transformer(m)
  opt, lr = optim.make_optimizer(cfg.optim, 10, m)
  train_step = steps.make_train_step(model, opt, lr)
  params = init_params(model, jax.random.key(0))
  state = {"step": jnp.int32(0), "params": params, "opt_state": opt.init(params)}
  ref = jax.jit(train_step)
  for s in range(2):
    state, ref_m = ref(state, _batch(seed=s))
  cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = mesh_shape
  mesh, rules = sharding.make_mesh(cfg.mesh), sharding.rules(cfg.mesh)
  spec = steps.StateSpec(model, opt, mesh, rules)
  sharded = spec.init(0)
  with steps.in_context(mesh, rules):
    step = spec.jit_train_step(train_step, steps.batch_shardings(mesh, rules, steps.TRAIN_KEYS))
    for s in range(2):
      sharded, m_ = step(sharded, sharding.shard_batch(_batch(seed=s), mesh, rules))
  np.testing.assert_allclose(m_["train_loss"], ref_m["train_loss"], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), sharded["params"], state["params"])
  # The momentum of each weight is sharded like the weight (here q: embed over fsdp, heads over tensor).
  q = _get(sharded["params"], ("layers" if scan else "layer_0", "attn", "q"))
  moments = [x for x in jax.tree.leaves(sharded["opt_state"]) if x.shape == q.shape]
  assert moments and all(x.sharding.spec == q.sharding.spec for x in moments)


def test_tiny_model_overfits_a_fixed_batch_with_muon():
  """As tests/test_train.py's AdamW test: 2 x 32 random byte tokens memorised (< 0.1 nats
  from ln 259 = 5.56), which needs the context; Muon on the hidden matrices, AdamW on the rest."""
  cfg = tiny_run_config("/unused", optim=dict(name="muon", lr=1e-2, muon_lr=0.02, warmup_steps=10,
                                              weight_decay=0.0))
  model = Transformer(tiny_model_config(vocab_size=259, n_layers=2, d_model=64, n_heads=4, d_ff=128))
  optimizer, lr = optim.make_optimizer(cfg.optim, 300, model.cfg)
  params = init_params(model, jax.random.key(0))
  state = {"step": jnp.int32(0), "params": params, "opt_state": optimizer.init(params)}
  tokens = np.random.default_rng(0).integers(3, 259, (2, 33)).astype(np.int32)
  batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "segment_ids": np.ones((2, 32), np.int32),
           "positions": np.tile(np.arange(32, dtype=np.int32), (2, 1))}
  step = jax.jit(steps.make_train_step(model, optimizer, lr))
  first = None
  for _ in range(300):
    state, m = step(state, batch)
    first = float(m["train_loss"]) if first is None else first
  assert abs(first - np.log(259)) < 0.3
  assert float(m["train_loss"]) < 0.1


def test_muon_fields_are_checked():
  from lm.errors import ConfigError
  o = _muon_config(muon_lr=0.0).optim
  with pytest.raises(ConfigError, match=r"optim.muon_lr=0.0.*positive LR"):
    optim.validate(o, 10)


def _get(tree, path):
  for k in path:
    tree = tree[k]
  return tree

