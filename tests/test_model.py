"""The Transformer's defining properties: causality, packing, layouts, remat, counts."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import flops
from lm.model import Transformer, init_params, stack_layers
from tests.helpers import VOCAB, tiny_model_config

VARIANTS = list(itertools.product(["reference", "xla"], ["rope", "learned"]))


def _tokens(seed, shape=(2, 16)):
  return jnp.asarray(np.random.default_rng(seed).integers(0, VOCAB, shape), jnp.int32)


@pytest.mark.parametrize("attention,positions", VARIANTS)
def test_changing_token_t_never_changes_earlier_logits(attention, positions):
  cfg = tiny_model_config(attention=attention, positions=positions)
  model = Transformer(cfg)
  tokens = _tokens(0)
  params = {"params": init_params(model, jax.random.key(0))}
  apply = jax.jit(model.apply)
  base = apply(params, tokens)
  assert base.dtype == jnp.float32 and base.shape == (2, 16, VOCAB)
  for t in (0, 5, 15):
    changed = tokens.at[:, t].set((tokens[:, t] + 1) % VOCAB)
    out = apply(params, changed)
    np.testing.assert_array_equal(np.asarray(out[:, :t]), np.asarray(base[:, :t]))
    assert not np.allclose(out[:, t], base[:, t]), "the changed token must change its own logits"


@pytest.mark.parametrize("attention,positions", VARIANTS)
def test_packed_document_logits_equal_document_alone(attention, positions):
  cfg = tiny_model_config(attention=attention, positions=positions)
  model = Transformer(cfg)
  doc_a, doc_b = _tokens(1, (1, 6)), _tokens(2, (1, 7))
  packed = jnp.concatenate([doc_a, doc_b, jnp.zeros((1, 3), jnp.int32)], axis=1)   # 6 + 7 + 3 pad
  segments = jnp.asarray([[1] * 6 + [2] * 7 + [0] * 3])
  positions_ = jnp.asarray([list(range(6)) + list(range(7)) + [0] * 3])
  params = {"params": init_params(model, jax.random.key(0))}
  apply = jax.jit(model.apply)
  out = apply(params, packed, segments, positions_)
  alone_a = apply(params, doc_a)
  alone_b = apply(params, doc_b)
  np.testing.assert_allclose(out[:, :6], alone_a, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out[:, 6:13], alone_b, rtol=1e-5, atol=1e-5)


def test_attention_implementations_agree():
  tokens = _tokens(3)
  outs = []
  for attention in ("reference", "xla"):
    model = Transformer(tiny_model_config(attention=attention))
    params = {"params": init_params(model, jax.random.key(0))}
    outs.append(jax.jit(model.apply)(params, tokens))
  np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])  # multi-head, grouped, multi-query
def test_grouped_query_equals_multi_head_with_repeated_kv(n_kv_heads):
  """GQA with G kv heads == MHA whose k/v weights repeat each kv head H/G times."""
  tokens = _tokens(4)
  gqa = Transformer(tiny_model_config(n_kv_heads=n_kv_heads))
  mha = Transformer(tiny_model_config(n_kv_heads=4))
  p = init_params(gqa, jax.random.key(0))
  rep = 4 // n_kv_heads
  p_mha = jax.tree_util.tree_map_with_path(
      lambda path, x: jnp.repeat(x, rep, axis=1) if path[-1].key in ("k", "v") else x, p)
  np.testing.assert_allclose(jax.jit(gqa.apply)({"params": p}, tokens), jax.jit(mha.apply)({"params": p_mha}, tokens),
                             rtol=1e-5, atol=1e-5)


def test_scan_layers_equals_unrolled_layers():
  tokens = _tokens(5)
  unrolled = Transformer(tiny_model_config(scan_layers=False))
  scanned = Transformer(tiny_model_config(scan_layers=True))
  p = init_params(unrolled, jax.random.key(0))
  p_scan = stack_layers(p, 2)
  assert jax.tree.structure(p_scan) == jax.tree.structure(init_params(scanned, jax.random.key(0)))
  np.testing.assert_allclose(jax.jit(unrolled.apply)({"params": p}, tokens),
                             jax.jit(scanned.apply)({"params": p_scan}, tokens), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_every_remat_policy_gives_the_same_gradients(scan_layers):
  tokens = _tokens(6)
  grads = {}
  params = init_params(Transformer(tiny_model_config(scan_layers=scan_layers)), jax.random.key(0))
  for remat in ("none", "full", "dots"):
    model = Transformer(tiny_model_config(remat=remat, scan_layers=scan_layers))

    def loss(p, model=model):
      logits = model.apply({"params": p}, tokens[:, :-1])
      return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], -1))
    grads[remat] = jax.jit(jax.grad(loss))(params)
  for remat in ("full", "dots"):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads["none"], grads[remat])


SHAPES = {
    # GPT-2 family: learned positions, LayerNorm with biases, GELU, biases, tied head.
    "gpt2": dict(positions="learned", norm="layernorm", mlp="gelu", use_bias=True, tie_embeddings=True, n_kv_heads=4),
    # Llama family: RoPE, RMSNorm, SwiGLU, no biases, untied head, grouped-query attention.
    "llama": dict(positions="rope", norm="rmsnorm", mlp="swiglu", use_bias=False, tie_embeddings=False, n_kv_heads=2),
}


@pytest.mark.parametrize("family", SHAPES)
def test_parameter_count_matches_closed_form(family):
  cfg = tiny_model_config(**SHAPES[family])
  params = init_params(Transformer(cfg), jax.random.key(0))
  actual = sum(x.size for x in jax.tree.leaves(params))
  d, v, l, f, k = 32, VOCAB, 2, 64, 8
  if family == "gpt2":
    # per layer: qkvo 4*d*d + biases 4*d; mlp 2*d*f + f + d; two LayerNorms 2*2*d
    per_layer = 4 * d * d + 4 * d + 2 * d * f + f + d + 4 * d
    expected = v * d + 16 * d + l * per_layer + 2 * d            # + position table + final LN
  else:
    # per layer: q,o d*4k each; k,v d*2k each (2 kv heads); SwiGLU 3*d*f; two RMSNorms 2*d
    per_layer = 2 * d * 4 * k + 2 * d * 2 * k + 3 * d * f + 2 * d
    expected = v * d + l * per_layer + d + d * v                  # + final norm + untied head
  assert actual == expected
  counts = flops.param_counts(cfg)
  assert counts.total == expected
  assert counts.embedding == v * d + (16 * d if family == "gpt2" else 0)
  assert counts.nonembedding == expected - counts.embedding


def test_compute_dtype_bfloat16_still_returns_float32_logits():
  cfg = tiny_model_config(dtype="bfloat16")
  model = Transformer(cfg)
  tokens = _tokens(8)
  params = {"params": init_params(model, jax.random.key(0))}
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))  # param_dtype stays f32
  out = jax.jit(model.apply)(params, tokens)
  assert out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))
