"""lm/cpu_attention.py: the fused CPU attention equals the reference attention (values and
gradients) under the causal segment mask, keeps packed documents apart, and is what the
model's Attention runs on the CPU switch, and only there."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import attention, cpu_attention, cpu_gemm

pytestmark = pytest.mark.skipif(not cpu_gemm.available(), reason="lm/cpu_gemm.py's kernel is unavailable here")


def _inputs(b, l, h, g, k, seed=0):
  rng = np.random.default_rng(seed)
  q = jnp.asarray(rng.standard_normal((b, l, h, k)), jnp.float32)
  kv = [jnp.asarray(rng.standard_normal((b, l, g, k)), jnp.float32) for _ in range(2)]
  segments = jnp.asarray(np.sort(rng.integers(0, 4, (b, l)), axis=1), jnp.int32)  # packed documents
  return q, *kv, segments


def _reference(q, k, v, segments, scale):
  return attention.reference_attention(q, k, v, attention.causal_segment_mask(segments), scale, "einsum")


# L 100 and 130: blocks of 64 queries with a short last one; G: multi-head, grouped, one kv head.
@pytest.mark.parametrize("b,l,h,g,k", [(2, 100, 4, 4, 16), (2, 130, 4, 2, 8), (1, 64, 2, 1, 32), (3, 5, 2, 2, 4)],
                         ids=["mha_l100", "gqa_l130", "mqa_one_block", "shorter_than_a_block"])
@pytest.mark.parametrize("scale", [None, 0.3], ids=["default_scale", "mup_scale"])
def test_values_and_gradients_equal_the_reference_attention(b, l, h, g, k, scale):
  q, kk, v, segments = _inputs(b, l, h, g, k, seed=l + g)
  w = jnp.asarray(np.random.default_rng(1).standard_normal((b, l, h, k)), jnp.float32)
  fused = jax.jit(lambda q, k, v: cpu_attention.causal_attention(q, k, v, segments, scale))(q, kk, v)
  np.testing.assert_allclose(np.asarray(fused), np.asarray(_reference(q, kk, v, segments, scale)), rtol=0, atol=2e-6)
  grads = [jax.jit(jax.grad(lambda q, k, v, f=f: jnp.sum(f(q, k, v, segments, scale) * w), (0, 1, 2)))(q, kk, v)
           for f in (cpu_attention.causal_attention, _reference)]
  for got, want in zip(*grads):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-5)


def test_logits_far_below_the_row_max_get_zero_weight_as_in_the_reference():
  """Logits spread over hundreds (the kernel's exp returns 0 below -87, lane by lane and in the
  rows' scalar tails alike): values and gradients still equal the reference's."""
  q, k, v, segments = _inputs(2, 77, 2, 2, 16, seed=3)
  q = q * 40.0  # logits of order +-160 at scale 1/4
  fused = jax.jit(cpu_attention.causal_attention)(q, k, v, segments)
  want = _reference(q, k, v, segments, None)
  assert np.all(np.isfinite(np.asarray(fused)))
  # logits of order 160 carry rounding of order 1e-5 into their exp: tolerances to match
  np.testing.assert_allclose(np.asarray(fused), np.asarray(want), rtol=1e-4, atol=1e-5)
  grad = lambda f: jax.jit(jax.grad(lambda v: jnp.sum(f(q, k, v, segments, None) ** 2)))(v)
  np.testing.assert_allclose(np.asarray(grad(cpu_attention.causal_attention)), np.asarray(grad(_reference)),
                             rtol=0, atol=1e-4)


def test_a_document_in_a_packed_row_equals_the_document_alone():
  """The packed-sequence check (MaxText's cuDNN path once ignored segment ids)."""
  q, k, v, _ = _inputs(1, 90, 2, 2, 8, seed=5)
  segments = jnp.asarray([[1] * 30 + [2] * 40 + [3] * 20], jnp.int32)
  packed = jax.jit(cpu_attention.causal_attention)(q, k, v, segments)
  alone = jax.jit(cpu_attention.causal_attention)(q[:, 30:70], k[:, 30:70], v[:, 30:70], jnp.ones((1, 40), jnp.int32))
  np.testing.assert_allclose(np.asarray(packed[:, 30:70]), np.asarray(alone), rtol=0, atol=1e-6)
  assert not np.allclose(np.asarray(jax.jit(cpu_attention.causal_attention)(q, k, v, jnp.ones((1, 90), jnp.int32))
                                    [:, 30:70]), np.asarray(alone), atol=1e-3)  # and the segments do matter


def test_under_vmap_it_is_one_attention_per_entry():
  """lm/lr_sweep.py vmaps the train step (values and gradients) over learning rates."""
  q, k, v, segments = _inputs(2, 20, 2, 2, 4, seed=7)
  stacked = [jnp.stack([x, 2 * x]) for x in (q, k, v)]
  got = jax.jit(jax.vmap(lambda q, k, v: cpu_attention.causal_attention(q, k, v, segments)))(*stacked)
  for i in range(2):
    want = _reference(*(x[i] for x in stacked), segments, None)
    np.testing.assert_allclose(np.asarray(got[i]), np.asarray(want), rtol=0, atol=2e-6)
  grad = lambda f: jax.vmap(jax.grad(lambda q, k, v: jnp.sum(f(q, k, v, segments, None) ** 2), (0, 1, 2)))
  for got, want in zip(jax.jit(grad(cpu_attention.causal_attention))(*stacked), grad(_reference)(*stacked)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=5e-5)


def test_bad_shapes_and_dtypes_are_named():
  q, k, v, segments = _inputs(1, 8, 4, 2, 4)
  with pytest.raises(ValueError, match=r"G dividing H; q is \[1, 8, 4, 4\], k \[1, 8, 3, 4\]"):
    cpu_attention.causal_attention(q, jnp.ones((1, 8, 3, 4)), jnp.ones((1, 8, 3, 4)), segments)
  with pytest.raises(ValueError, match=r"segment ids \[B, L\]; got .* \[1, 7\]"):
    cpu_attention.causal_attention(q, k, v, segments[:, :7])
  with pytest.raises(ValueError, match="computes in float32; got bfloat16"):
    cpu_attention.causal_attention(q.astype(jnp.bfloat16), k, v, segments)


def test_the_models_attention_runs_it_on_the_cpu_switch_only():
  from lm.attention import Attention
  from tests.helpers import tiny_model_config

  def kernel_calls(matmul, attention_impl="reference", decode=False):
    module = Attention(tiny_model_config(matmul=matmul, attention=attention_impl), decode=decode)
    x = jnp.ones((2, 16, 32))
    ids, pos = jnp.ones((2, 16), jnp.int32), jnp.broadcast_to(jnp.arange(16), (2, 16))
    variables = module.init(jax.random.key(0), x, ids, pos)
    loss = lambda p: jnp.sum(module.apply(p, x, ids, pos, mutable=["cache"])[0] if decode else module.apply(p, x, ids, pos))
    text = jax.jit(jax.grad(loss) if not decode else loss).lower(variables).as_text()
    return [text.count(f"custom_call @{t}(") for t in cpu_gemm.ATTENTION_TARGETS]

  assert kernel_calls("blas") == [1, 1]  # forward, and the backward of the gradient
  assert kernel_calls("einsum") == [0, 0]  # not the CPU switch
  assert kernel_calls("blas", "xla") == [0, 0]  # another attention asked for
  assert kernel_calls("blas", decode=True) == [0, 0]  # decoding attends over the KV cache


def test_a_prefill_of_more_than_few_rows_runs_it_and_equals_the_full_forward():
  """lm/kv_cache.py's fresh prefill (lm.decode's) is the training step's attention."""
  from lm import decode
  from lm.model import Transformer
  from tests.helpers import tiny_model_config
  from tests.test_decode import random_params
  model = Transformer(tiny_model_config(positions="rope", n_kv_heads=2, max_seq_len=48))
  params = random_params(model)
  prompts = [np.arange(3, 33, dtype=np.int32), np.arange(40, 60, dtype=np.int32)]  # 30 and 20 tokens
  batch = decode.left_pad(prompts, bucket=8)  # P = 32 > FEW_ROWS: row 1 left-padded
  width = batch.tokens_BP.shape[1]
  assert width > cpu_gemm.FEW_ROWS

  def prefill(params, cache):
    return decode.forward_with_cache(model, params, cache, batch.tokens_BP, batch.segment_ids_BP, batch.positions_BP,
                                     fresh=True)
  cache = decode.init_cache(model, 2, 40)
  text = jax.jit(prefill).lower(params, cache).as_text()
  assert text.count(f"custom_call @{cpu_attention.FORWARD}(") >= 1
  logits, cache = jax.jit(prefill)(params, cache)
  # and the cache it wrote: one more token through it gives the full forward's next logits
  token_B1, position_B1 = jnp.full((2, 1), 7, jnp.int32), batch.lengths_B[:, None]
  step, _ = jax.jit(lambda params, cache: decode.forward_with_cache(
      model, params, cache, token_B1, jnp.ones_like(token_B1), position_B1))(params, cache)
  for b, p in enumerate(prompts):
    full = np.asarray(jax.jit(model.apply)({"params": params}, np.append(p, 7)[None]))[0]
    np.testing.assert_allclose(np.asarray(logits[b, width - len(p):]), full[:-1], rtol=1e-5, atol=1e-5,
                               err_msg=f"row {b}")
    np.testing.assert_allclose(np.asarray(step[b, 0]), full[-1], rtol=1e-5, atol=1e-5, err_msg=f"row {b}, next step")
