"""Sharded equals unsharded: the same forward and gradients on any valid mesh of 8 devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax.sharding import NamedSharding, PartitionSpec as P

from lm import sharding
from lm.model import ModelConfig, Transformer, init_params
from tests.helpers import tiny_config

MESHES = [(8, 1, 1), (2, 4, 1), (1, 4, 2), (2, 2, 2)]
VOCAB = 96  # divides the tensor axis; uneven vocab is checked separately


def _config(mesh_shape, **model):
  cfg = tiny_config(n_heads=4, n_kv_heads=2, **model)
  cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = mesh_shape
  return cfg


def _batch():
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, VOCAB, (8, 16)).astype(np.int32)
  segments = np.repeat(np.array([[1] * 10 + [2] * 6]), 8, axis=0).astype(np.int32)
  positions = np.concatenate([np.arange(10), np.arange(6)])[None].repeat(8, 0).astype(np.int32)
  return {"tokens": tokens, "segment_ids": segments, "positions": positions}


def _loss_fn(model):
  def loss(params, batch):
    logits = model.apply({"params": params}, batch["tokens"], batch["segment_ids"], batch["positions"])
    logp = jax.nn.log_softmax(logits[:, :-1])
    return -jnp.mean(jnp.take_along_axis(logp, batch["tokens"][:, 1:, None], -1)), logits
  return loss


@pytest.fixture(scope="module")
def reference():
  """Forward and gradients on one device, per model family."""
  out = {}
  for family, model_kw in {"llama": {}, "gpt2": dict(positions="learned", norm="layernorm", mlp="gelu",
                                                        use_bias=True)}.items():
    cfg = ModelConfig.from_config(_config((1, 1, 1), **model_kw).model, VOCAB)
    model = Transformer(cfg)
    params = init_params(model, jax.random.key(0))
    (loss, logits), grads = jax.jit(jax.value_and_grad(_loss_fn(model), has_aux=True))(params, _batch())
    out[family] = (model_kw, params, loss, logits, grads)
  return out


@pytest.mark.parametrize("mesh_shape", MESHES)
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_sharded_forward_and_gradients_equal_one_device(reference, mesh_shape, family):
  _check_sharded_equals_one_device(reference, mesh_shape, family)


@pytest.mark.parametrize("mesh_shape", [(1, 4, 2), (2, 2, 2)])
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_sharded_column_blocks_equal_one_device_without_them(reference, mesh_shape, family, monkeypatch):
  """lm/ops.py's column blocks (CPU) slice sharded weights and activations: at this test's
  128 tokens they are on here, and still give the one-device, unblocked values."""
  from lm import ops
  monkeypatch.setattr(ops, "COLUMN_BLOCK", 8)
  monkeypatch.setattr(ops, "BLOCKED_TOKENS", 64)
  _check_sharded_equals_one_device(reference, mesh_shape, family)


def _check_sharded_equals_one_device(reference, mesh_shape, family):
  model_kw, params, ref_loss, ref_logits, ref_grads = reference[family]
  cfg = _config(mesh_shape, **model_kw)
  mesh = sharding.make_mesh(cfg.mesh)
  rules = sharding.rules(cfg.mesh)
  model = Transformer(ModelConfig.from_config(cfg.model, VOCAB))
  _, shardings = sharding.abstract_params(model, mesh, rules)
  params_sharded = jax.device_put(params, shardings)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    batch = sharding.shard_batch(_batch(), mesh, rules)
    step = jax.jit(jax.value_and_grad(_loss_fn(model), has_aux=True))
    (loss, logits), grads = step(params_sharded, batch)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  np.testing.assert_allclose(logits, ref_logits, rtol=1e-4, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grads, ref_grads)
  # The batch really is split over data x fsdp.
  assert batch["tokens"].sharding.spec == P(("data", "fsdp"), None)


EXPECTED_SPECS = {  # logical axes -> mesh axes under the default rules, mesh (data, fsdp, tensor)
    ("embedding",): P("tensor", "fsdp"),                        # (vocab, embed)
    ("layer_0", "attn", "q"): P("fsdp", "tensor", None),        # (embed, heads, head_dim)
    ("layer_0", "attn", "k"): P("fsdp", "tensor", None),        # (embed, kv_heads, head_dim)
    ("layer_0", "attn", "o"): P("tensor", None, "fsdp"),        # (heads, head_dim, embed)
    ("layer_0", "mlp", "wi"): P("fsdp", None, "tensor"),        # (embed, gate|up, mlp)
    ("layer_0", "mlp", "wo"): P("tensor", "fsdp"),              # (mlp, embed)
    ("layer_0", "attn_norm", "scale"): P("fsdp"),               # (embed,)
    ("head",): P("fsdp", "tensor"),                             # (embed, vocab)
}


def _get(tree, path):
  for k in path:
    tree = tree[k]
  return tree


@pytest.mark.parametrize("mesh_shape", [(1, 4, 2), (2, 2, 2)])
def test_sharded_init_places_each_parameter_by_its_logical_axes(mesh_shape):
  cfg = _config(mesh_shape, tie_embeddings=False)
  mesh, rules = sharding.make_mesh(cfg.mesh), sharding.rules(cfg.mesh)
  model = Transformer(ModelConfig.from_config(cfg.model, VOCAB))
  params = sharding.init_params(model, mesh, rules, seed=0)
  for path, spec in EXPECTED_SPECS.items():
    leaf = _get(params, path)
    assert isinstance(leaf.sharding, NamedSharding) and leaf.sharding.mesh.shape == mesh.shape
    assert leaf.sharding.spec == spec, path
    # each device holds only its shard: fsdp x tensor pieces of a fully sharded matrix
    shards = {s.data.shape for s in leaf.addressable_shards}
    expected = tuple(n // (mesh.shape[a] if a else 1) for n, a in zip(leaf.shape, tuple(spec) + (None,) * 3))
    assert shards == {expected}, path
  # Same values as an unsharded init from the same key (threefry is partitionable).
  ref = init_params(model, jax.random.key(0))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), params, ref)


def test_scanned_layers_axis_is_replicated_and_the_rest_sharded():
  cfg = _config((2, 2, 2), scan_layers=True)
  mesh, rules = sharding.make_mesh(cfg.mesh), sharding.rules(cfg.mesh)
  model = Transformer(ModelConfig.from_config(cfg.model, VOCAB))
  q = sharding.init_params(model, mesh, rules, seed=0)["layers"]["attn"]["q"]
  assert q.shape == (2, 32, 4, 8) and q.sharding.spec == P(None, "fsdp", "tensor", None)


def test_vocabulary_that_does_not_divide_the_tensor_axis_still_runs():
  """GPT-2's 50257 does not divide anything; lm keeps such a dimension whole (replicated, with
  a warning: sharding._divisible_spec) and shards the parameter's other dimensions."""
  cfg = _config((2, 2, 2))
  mesh, rules = sharding.make_mesh(cfg.mesh), sharding.rules(cfg.mesh)
  model = Transformer(ModelConfig.from_config(cfg.model, 97))
  params = sharding.init_params(model, mesh, rules, seed=0)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    batch = sharding.shard_batch({"t": np.ones((8, 16), np.int32)}, mesh, rules)
    logits = jax.jit(model.apply)({"params": params}, batch["t"])
  assert logits.shape == (8, 16, 97) and bool(jnp.all(jnp.isfinite(logits)))
  assert params["embedding"].sharding.spec == P(None, "fsdp")  # vocab whole, embed sharded


# Activations under the default rules on a (data, fsdp, tensor) mesh: `batch` takes data and
# fsdp, so `embed` (which weights shard over fsdp) stays whole on the residual stream.
EXPECTED_ACTIVATIONS = {
    ("batch", "length", "embed"): P(("data", "fsdp"), None, None),                 # residual stream
    ("batch", "length", "mlp"): P(("data", "fsdp"), None, "tensor"),               # MLP hidden
    ("batch", "length", "heads", "head_dim"): P(("data", "fsdp"), None, "tensor", None),    # q, attention out
    ("batch", "length", "kv_heads", "head_dim"): P(("data", "fsdp"), None, "tensor", None),  # k, v
    ("batch", "length", "vocab"): P(("data", "fsdp"), None, "tensor"),             # logits
}


def test_activation_shardings_follow_the_rule_order(monkeypatch):
  """Every sharding constraint the model puts on an activation, resolved by the default rules."""
  cfg = _config((2, 2, 2), tie_embeddings=False)
  mesh, rules = sharding.make_mesh(cfg.mesh), sharding.rules(cfg.mesh)
  model = Transformer(ModelConfig.from_config(cfg.model, VOCAB))
  seen = {}
  original = nn.with_logical_constraint

  def record(x, axes, *args, **kw):
    seen[tuple(axes)] = P(*nn.logical_to_mesh_axes(axes, rules))
    return original(x, axes, *args, **kw)

  monkeypatch.setattr(nn, "with_logical_constraint", record)
  params = sharding.init_params(model, mesh, rules, seed=0)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    jax.jit(model.apply)({"params": params}, sharding.shard_batch({"t": _batch()["tokens"]}, mesh, rules)["t"])
  assert seen == EXPECTED_ACTIVATIONS
  # The rule order is the config's: with `embed` first, the residual stream's embed dimension
  # takes fsdp, and the batch, whose rule needs data and fsdp together, is not split at all.
  cfg.mesh.rule_order = "embed,batch,layers,vocab,heads,kv_heads,mlp,length,head_dim"
  assert nn.logical_to_mesh_axes(("batch", "length", "embed"), sharding.rules(cfg.mesh)) == P(None, None, "fsdp")


def test_rule_order_must_name_every_rule_once():
  cfg = _config((8, 1, 1))
  cfg.mesh.rule_order = "batch,embed"
  with pytest.raises(sharding.ConfigError, match="mesh.rule_order=.*every rule of mesh.rules exactly once"):
    sharding.rules(cfg.mesh)
