"""Attention over a KV cache, for decoding (Attention with decode=True, driven by lm/decode.py).

Shapes in names: B batch, L new tokens, S cache slots, G kv heads, R query heads per kv
head, K head dim (as lm/attention.py).

Each attention layer keeps the keys and values of S slots in the flax `cache` collection,
with each slot's segment id and the next free slot i. A call with L new tokens attends over
the old slots (s < i, same segment) and, causally, over its own L keys, then writes them
into slots i ... i + L - 1. Left-padding has segment 0, which no real token attends to.

Layout, chosen for XLA:CPU's dots to read the cache in place: keys [B, G, K, S], values
[B, G, S, K]. Attending over the cache only before the write lets the write happen in place
(reading the freshly written cache, XLA duplicated the write and copied the whole cache ~5
times per layer per step), and the written keys are made to depend on the attention output
(cached_attention's docstring) so XLA:CPU updates the loop-carried cache in place.

model.attention is not used here: these are einsums over the cache in its stored layout (a
fused kernel would need the cache transposed; prefill is one call and decoding one query
per row). One exception, on the CPU switch (float32, one device, lm/cpu_gemm.py's kernel
built): a fresh prefill of more than FEW_ROWS tokens attends only to its own keys, which is the
training step's attention, and runs lm/cpu_attention.py's fused kernel (fresh_prefill).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn

from lm import cpu_attention, cpu_gemm, ops

K_CACHE_AXES = ("batch", "kv_heads", "head_dim", "length")   # keys [B, G, K, S]
V_CACHE_AXES = ("batch", "kv_heads", "length", "head_dim")   # values [B, G, S, K]


def cached_attention(q_BLHK, k_BGKS, v_BGSK, mask_B1LS, k_BLGK, v_BLGK, mask_B1LL, scale: float | None = None,
                     matmul: str = "einsum", fresh: bool = False):
  """reference_attention over [cache slots, new keys]: one softmax, without concatenating the cache.

  Returns the output and the new keys [B, G, K, L] and values [B, G, L, K] in the cache's
  layout, made to depend on the output (+ 0 * a slice of it, sharded like them): XLA:CPU
  updates a loop-carried buffer in place only if the write depends on the reads; without
  it each cache array was copied twice per layer per step (an optimization_barrier did
  not help: it is gone before copy insertion). scale: the logits' multiplier as in
  attention.reference_attention (None: 1/sqrt(K)). matmul: model.matmul; where it resolves to
  'blas' and the kernel may run (lm/ops.py), the two products over the cache are lm/cpu_gemm.py's,
  batched over (B, G) with the R L query rows as rows: [R L, K] @ [K, S] and [R L, S] @ [S, K],
  which for decoding (L = 1) are its few-row loops. XLA's batched dot ran them at about 10 GB/s
  of cache read (llama-100m, batch 8, 2026-12-03 Xeon: 0.19 ms per product per layer). With
  L > 1 (a prefill) the two products over the L new keys are the kernel's too, [R L, K] @
  [L, K]^T and [R L, L] @ [L, K]: XLA's batched dot ran them at ~70 GFLOP/s, 1.4 ms per layer
  of a batch-8, 64-token llama-100m prefill, which took 3% less time (404.5 against 416.8 ms,
  medians of 8, alternating in one process). At L = 1 they are a few multiply-adds and stay XLA's.
  fresh: the cache's slots are skipped (attend_with_cache starts it again), the products over
  them and their share of the softmax's width: a prefill into a new cache, where every slot is
  masked anyway.
  """
  b, l, h, k = q_BLHK.shape
  g, s = k_BGKS.shape[1], 0 if fresh else k_BGKS.shape[3]  # s: the slots attended over
  r = h // g
  q_BGRLK = q_BLHK.reshape(b, l, g, r, k).transpose(0, 2, 3, 1, 4)
  if scale is None:
    q_BGRLK = q_BGRLK / jnp.sqrt(jnp.float32(k)).astype(q_BLHK.dtype)
  else:
    q_BGRLK = q_BGRLK * jnp.asarray(scale, q_BLHK.dtype)
  blas = ops.blas_computes(matmul, q_BLHK, k_BGKS, v_BGSK)
  if fresh:
    old_BGRLS, mask_B1LS = jnp.zeros((b, g, r, l, 0), jnp.float32), mask_B1LS[..., :0]
  elif blas:
    old_BGRLS = cpu_gemm.gemm(q_BGRLK.reshape(b * g, r * l, k), k_BGKS.reshape(b * g, k, s)).reshape(b, g, r, l, s)
  else:
    old_BGRLS = jnp.einsum("BGRLK,BGKS->BGRLS", q_BGRLK, k_BGKS, preferred_element_type=jnp.float32)
  blas_new = l > 1 and blas and ops.blas_computes(matmul, k_BLGK, v_BLGK)
  if blas_new:
    new_k_BGLK = k_BLGK.transpose(0, 2, 1, 3)
    new_BGRLL = cpu_gemm.gemm(q_BGRLK.reshape(b * g, r * l, k), new_k_BGLK.reshape(b * g, l, k),
                              trans_b=True).reshape(b, g, r, l, l)
  else:
    new_BGRLL = jnp.einsum("BGRLK,BMGK->BGRLM", q_BGRLK, k_BLGK, preferred_element_type=jnp.float32)
  logits_BGRLT = jnp.concatenate([old_BGRLS, new_BGRLL], axis=-1)           # T = S + L
  mask_B1LT = jnp.concatenate([mask_B1LS, mask_B1LL], axis=-1)
  logits_BGRLT = jnp.where(mask_B1LT[:, :, None], logits_BGRLT, jnp.finfo(jnp.float32).min)
  probs_BGRLT = jax.nn.softmax(logits_BGRLT, axis=-1).astype(v_BGSK.dtype)
  if fresh:
    old_BGRLK = 0
  elif blas:
    old_BGRLK = cpu_gemm.gemm(probs_BGRLT[..., :s].reshape(b * g, r * l, s), v_BGSK.reshape(b * g, s, k))
    old_BGRLK = old_BGRLK.reshape(b, g, r, l, k)
  else:
    old_BGRLK = jnp.einsum("BGRLS,BGSK->BGRLK", probs_BGRLT[..., :s], v_BGSK)
  if blas_new:
    new_v_BGLK = v_BLGK.transpose(0, 2, 1, 3)
    new_BGRLK = cpu_gemm.gemm(probs_BGRLT[..., s:].reshape(b * g, r * l, l),
                              new_v_BGLK.reshape(b * g, l, k)).reshape(b, g, r, l, k)
  else:
    new_BGRLK = jnp.einsum("BGRLM,BMGK->BGRLK", probs_BGRLT[..., s:], v_BLGK)
  out_BGRLK = old_BGRLK + new_BGRLK
  k_BGKL, v_BGLK = _cache_entries(k_BLGK, v_BLGK, out_BGRLK[:, :, 0, :, 0] * 0, k_BGKS.dtype, v_BGSK.dtype)
  return out_BGRLK.transpose(0, 3, 1, 2, 4).reshape(b, l, h, k), k_BGKL, v_BGLK


def _cache_entries(k_BLGK, v_BLGK, zero_BGL, k_dtype, v_dtype):
  """The new keys [B, G, K, L] and values [B, G, L, K] in the cache's layout and dtypes, plus
  zero_BGL (zero times a slice of the attention output: the dependency cached_attention's
  docstring explains)."""
  k_BGKL = k_BLGK.transpose(0, 2, 3, 1).astype(k_dtype) + zero_BGL[:, :, None, :]
  v_BGLK = v_BLGK.transpose(0, 2, 1, 3).astype(v_dtype) + zero_BGL[:, :, :, None]
  return k_BGKL, v_BGLK


def fresh_prefill(q_BLHK, k_BLGK, v_BLGK, segment_ids_BL, k_dtype, v_dtype, scale=None):
  """cached_attention with fresh=True (the L tokens attend only to each other, causally within
  segments), as lm/cpu_attention.py's fused kernel on the CPU switch: a prefill is the training
  step's attention. Returns what cached_attention does: the output, and the new keys and values
  in the cache's dtypes, made to depend on the output the same way."""
  out_BLHK = cpu_attention.causal_attention(q_BLHK, k_BLGK, v_BLGK, segment_ids_BL, scale)
  zero_BGL = out_BLHK[:, :, ::q_BLHK.shape[2] // k_BLGK.shape[2], 0].transpose(0, 2, 1) * 0  # heads g R
  return (out_BLHK, *_cache_entries(k_BLGK, v_BLGK, zero_BGL, k_dtype, v_dtype))


def attend_with_cache(layer: nn.Module, q_BLHK, k_BLGK, v_BLGK, segment_ids_BL, mask_B1LL, scale=None,
                      fresh: bool = False):
  """Attend over `layer`'s cached slots and the L new keys, then append the new keys to the cache.

  The cache variables are declared on `layer` (the calling Attention module, inside its
  compact __call__), so they live at its path: cache/layer_0/attn/k, ... The first (init)
  call only creates the cache, sized by its input (lm.decode inits with tokens [B, S] under
  eval_shape for S slots), and attends as over an empty cache: no slot is written yet, so
  no old slot is visible (s < i = 0). fresh: start the cache again, whatever it holds: the L
  tokens attend only to each other (cached_attention) and go into slots 0 ... L - 1, and the
  next free slot is L (the slots after it are never visible; later calls overwrite them).
  """
  b, l, g, k = k_BLGK.shape
  initialized = layer.has_variable("cache", "k")
  k_cache = layer.variable("cache", "k", nn.with_logical_partitioning(jnp.zeros, K_CACHE_AXES),
                           (b, g, k, l), k_BLGK.dtype)
  v_cache = layer.variable("cache", "v", nn.with_logical_partitioning(jnp.zeros, V_CACHE_AXES),
                           (b, g, l, k), v_BLGK.dtype)
  seg_cache = layer.variable("cache", "segment_ids",
                             nn.with_logical_partitioning(jnp.zeros, ("batch", "length")), (b, l), jnp.int32)
  index = layer.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
  i = jnp.zeros((), jnp.int32) if fresh else index.value
  seg_BS = seg_cache.value
  slots = seg_BS.shape[1]
  # Slots written before this call (s < i) of the query's own segment.
  old_B1LS = ((jnp.arange(slots) < i)[None, None, :] & (segment_ids_BL[:, :, None] == seg_BS[:, None, :]))[:, None]
  if fresh and l > cpu_gemm.FEW_ROWS and ops.blas_computes(layer.cfg.matmul, q_BLHK, k_BLGK, v_BLGK):
    out_BLHK, k_BGKL, v_BGLK = fresh_prefill(q_BLHK, k_BLGK, v_BLGK, segment_ids_BL, k_cache.value.dtype,
                                             v_cache.value.dtype, scale)
  else:
    out_BLHK, k_BGKL, v_BGLK = cached_attention(q_BLHK, k_cache.value, v_cache.value, old_B1LS,
                                                k_BLGK, v_BLGK, mask_B1LL, scale, layer.cfg.matmul, fresh)
  if not initialized:
    return out_BLHK
  # One slot index for the whole batch (prompts are left-padded to a common length), so
  # each write is a dynamic_update_slice, in place inside the decode loop.
  k_cache.value = nn.with_logical_constraint(
      jax.lax.dynamic_update_slice(k_cache.value, k_BGKL, (0, 0, 0, i)), K_CACHE_AXES)
  v_cache.value = nn.with_logical_constraint(
      jax.lax.dynamic_update_slice(v_cache.value, v_BGLK, (0, 0, i, 0)), V_CACHE_AXES)
  seg_cache.value = jax.lax.dynamic_update_slice(seg_BS, segment_ids_BL.astype(jnp.int32), (0, i))
  index.value = i + l
  return out_BLHK
