"""Causal self-attention over packed rows in one fused XLA:CPU kernel (lm/cpu_attention.cc).

    o_BLHK = cpu_attention.causal_attention(q_BLHK, k_BLGK, v_BLGK, segment_ids_BL, scale)

equals lm/attention.py's reference_attention under causal_segment_mask(segment_ids_BL) (a
query sees the keys at or before it in its row with its own segment id) to float32
rounding, and is differentiable (a custom VJP whose backward is the kernel's second target).

Why: as separate XLA ops the training step's attention wrote the [B, H, L, L] logits, their
mask, the probabilities and the probabilities' gradient to memory between ops, computed the
masked upper triangle, and transposed q, k, v and the output into the heads' layout: 63 ms a
layer forward and backward at the benchmark shape (16 x 256 tokens, 8 heads of 64) on the
2-core Xeon of 2026-12-03, where the products alone were under half of it. The kernel takes one
block of 64 queries at a time against only the keys up to the block's last query, keeps the
block's logits in cache from the product to the softmax to the next product, and reads and
writes the [B, L, heads, K] arrays in place. The backward recomputes the probabilities from
the forward's log-sum-exp (as flash attention does) instead of keeping [B, H, L, L].

Where: lm/attention.py's Attention uses it for 'reference' attention where model.matmul
resolves to 'blas' (the CPU switch: float32, one device, the kernel built), outside
decoding; and lm/kv_cache.py for a fresh prefill of more than FEW_ROWS tokens on the same
switch (its tokens attend only to each other: the same attention). Grouped-query heads are supported (G dividing H). CPU backend only.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import jax.numpy as jnp

from lm import cpu_gemm

FORWARD, BACKWARD = tuple(cpu_gemm.ATTENTION_TARGETS)


def _check(q, k, v, segment_ids):
  if q.ndim != 4 or k.shape != v.shape or k.ndim != 4 or segment_ids.shape != q.shape[:2]:
    raise ValueError(f"causal_attention takes q [B, L, H, K], k and v [B, L, G, K] and segment ids [B, L]; got "
                     f"{list(q.shape)}, {list(k.shape)}, {list(v.shape)}, {list(segment_ids.shape)}")
  if k.shape[:2] != q.shape[:2] or k.shape[3] != q.shape[3] or q.shape[2] % k.shape[2]:
    raise ValueError(f"causal_attention: k and v must be [B, L, G, K] with G dividing H; q is {list(q.shape)}, "
                     f"k {list(k.shape)} (self-attention: one length for queries and keys)")
  if not all(a.dtype == jnp.float32 for a in (q, k, v)):
    raise ValueError(f"causal_attention computes in float32; got {q.dtype}, {k.dtype}, {v.dtype}")
  cpu_gemm.library_path()  # raises cpu_gemm.Unavailable, saying why, where the kernel is not built


def _forward(q, k, v, segment_ids, scale):
  b, l, h, _ = q.shape
  call = jax.ffi.ffi_call(FORWARD, (jax.ShapeDtypeStruct(q.shape, jnp.float32),
                                    jax.ShapeDtypeStruct((b, h, l), jnp.float32)), vmap_method="sequential")
  return call(q, k, v, segment_ids.astype(jnp.int32), scale=np.float32(scale))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _attention(q, k, v, segment_ids, scale):
  return _forward(q, k, v, segment_ids, scale)[0]


def _attention_fwd(q, k, v, segment_ids, scale):
  o, lse = _forward(q, k, v, segment_ids, scale)
  return o, (q, k, v, segment_ids, o, lse)


def _attention_bwd(scale, residuals, do):
  q, k, v, segment_ids, o, lse = residuals
  shapes = tuple(jax.ShapeDtypeStruct(a.shape, jnp.float32) for a in (q, k, v))
  call = jax.ffi.ffi_call(BACKWARD, shapes, vmap_method="sequential")
  dq, dk, dv = call(q, k, v, segment_ids.astype(jnp.int32), o, lse, do, scale=np.float32(scale))
  return dq, dk, dv, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def causal_attention(q_BLHK: jax.Array, k_BLGK: jax.Array, v_BLGK: jax.Array, segment_ids_BL: jax.Array,
                     scale: float | None = None) -> jax.Array:
  """softmax(scale q k^T, causal and within segments) v, [B, L, H, K]; scale None is 1/sqrt(K)."""
  _check(q_BLHK, k_BLGK, v_BLGK, segment_ids_BL)
  scale = q_BLHK.shape[-1] ** -0.5 if scale is None else float(scale)
  return _attention(q_BLHK, k_BLGK, v_BLGK, segment_ids_BL, scale)
