"""Causal self-attention: softmax(Q K^T / sqrt(d_k)) V, with RoPE and grouped-query heads.

Under model.parameterization='mup' the logit scale is µP's sqrt(K0)/K instead (lm/parameterization.py).

Shapes in names: B batch, L query length, S key length, D d_model, H query heads,
G kv heads, R = H // G query heads per kv head, K head dim.
Masks are boolean [B, 1, L, S]: True where a query may attend to a key.

This is training attention (masks, RoPE, the reference einsum and jax's fused kernels).
With decode=True the Attention module attends over a KV cache instead: lm/kv_cache.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn

from lm import cpu_attention, cpu_gemm, kv_cache, ops
from lm import parameterization as param_lib
from lm.ops import dense

ATTENTIONS = ("reference", "xla", "cudnn")  # attend(): the einsum, or jax.nn.dot_product_attention's
ROPE_SCALINGS = ("none", "linear", "llama3")  # rope_inv_freq()


def rope_inv_freq(head_dim: int, theta: float, scaling: str = "none", factor: float = 1.0,
                  low_freq_factor: float = 1.0, high_freq_factor: float = 4.0,
                  original_max_len: int = 8192) -> jax.Array:
  """float32 [K/2]: the rotation rate of channel pair i, theta^(-2i/K), optionally rescaled.

  scaling (the two Hugging Face rope types lm implements, same formulas):
    'none'    unchanged.
    'linear'  every rate / factor (positions interpolated: position p acts as p / factor).
    'llama3'  by wavelength 2*pi/rate against the original context C: wavelengths shorter
              than C / high_freq_factor unchanged, longer than C / low_freq_factor divided by
              factor, and in between a linear blend s * rate + (1 - s) * rate / factor with
              s = (C / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor).
  """
  inv_freq_F = theta ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)  # F = K/2
  if scaling == "none":
    return inv_freq_F
  if scaling == "linear":
    return inv_freq_F / factor
  if scaling != "llama3":
    raise ValueError(f"rope scaling {scaling!r} is not one of {ROPE_SCALINGS}.")
  wavelen_F = 2 * jnp.pi / inv_freq_F
  low_freq_wavelen, high_freq_wavelen = original_max_len / low_freq_factor, original_max_len / high_freq_factor
  scaled_F = jnp.where(wavelen_F > low_freq_wavelen, inv_freq_F / factor, inv_freq_F)
  smooth_F = (original_max_len / wavelen_F - low_freq_factor) / (high_freq_factor - low_freq_factor)
  smoothed_F = (1 - smooth_F) * scaled_F / factor + smooth_F * scaled_F
  medium_F = (wavelen_F >= high_freq_wavelen) & (wavelen_F <= low_freq_wavelen)
  return jnp.where(medium_F, smoothed_F, scaled_F)


def rope(x_BLHK: jax.Array, positions_BL: jax.Array, theta: float, inv_freq_F: jax.Array | None = None,
         materialize: bool = False) -> jax.Array:
  """Rotary position embedding, "rotate half" layout (Su et al. 2021, as in Llama / HF).

  Channel i is paired with channel i + K/2 and the pair is rotated by angle
  position * theta^(-2i/K) (or position * inv_freq_F[i], see rope_inv_freq).
  Computed in float32, returned in x's dtype.

  materialize: compute cos and sin once, as arrays of their own ([B, L, K/2], through the
  kernel's copy, cpu_gemm.materialize), before the rotation. Otherwise XLA:CPU fuses them into
  the rotation's loop and evaluates both for every output element: 2 H times each angle for q,
  2 G for k, and as often again in the gradients. In
  the Llama-like benchmark step (experiments/bench/train_step.py, 2 cores of the 2026-12-03 Xeon,
  one process, alternating) the step took 2,416 instead of 2,503 ms and 2,358 instead of 2,450;
  llama-100m's 64-token prefill ran 648-666 instead of 609-616 tokens/s at batch 1. The values
  were bitwise the fused ones in every check (the test allows rounding: XLA need not evaluate
  cos inside a fusion exactly as alone).
  """
  k = x_BLHK.shape[-1]
  if inv_freq_F is None:
    inv_freq_F = theta ** (-jnp.arange(0, k, 2, dtype=jnp.float32) / k)  # F = K/2
  angle_BLF = positions_BL[..., None].astype(jnp.float32) * inv_freq_F
  cos_BLF, sin_BLF = jnp.cos(angle_BLF), jnp.sin(angle_BLF)
  if materialize:
    cos_BLF, sin_BLF = cpu_gemm.materialize(cos_BLF), cpu_gemm.materialize(sin_BLF)
  cos_BL1F, sin_BL1F = cos_BLF[:, :, None, :], sin_BLF[:, :, None, :]
  x1, x2 = jnp.split(x_BLHK.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos_BL1F - x2 * sin_BL1F, x2 * cos_BL1F + x1 * sin_BL1F], axis=-1)
  return out.astype(x_BLHK.dtype)


def causal_segment_mask(segment_ids_BL: jax.Array) -> jax.Array:
  """[B, 1, L, L]: key index <= query index, and both tokens in the same document.

  Causality is by index in the row, not by position, so packed rows stay causal;
  segment equality keeps each packed document from seeing its neighbours.
  """
  length = segment_ids_BL.shape[1]
  causal_LL = jnp.arange(length)[:, None] >= jnp.arange(length)[None, :]
  same_doc_BLL = segment_ids_BL[:, :, None] == segment_ids_BL[:, None, :]
  return (causal_LL[None] & same_doc_BLL)[:, None]


def reference_attention(q_BLHK, k_BSGK, v_BSGK, mask_B1LS, scale: float | None = None, matmul: str = "einsum"):
  """The textbook einsum. The logits and softmax are float32 whatever the compute dtype.

  scale: the logits' multiplier; None is 1/sqrt(head_dim) (µP's is in lm/parameterization.py).
  matmul: model.matmul. Where it resolves to 'blas' and OpenBLAS may run (float32, one
  device: lm/ops.py), Q K^T and P V are OpenBLAS products batched over (B, G), the R query
  heads of a kv head stacked as rows ([R L, K] @ [K, S]); the same dots, summed in another
  order. XLA:CPU's batched dot ran these products (the benchmark's 256 x 64 x 256, 128 of
  them) at about 56 GFLOP/s in the training step. (The model's Attention, outside decoding,
  calls lm/cpu_attention.py's fused kernel instead where this would use OpenBLAS.)
  """
  b, l, h, k = q_BLHK.shape
  s, g = k_BSGK.shape[1], k_BSGK.shape[2]
  r = h // g
  q_BLGRK = q_BLHK.reshape(b, l, g, r, k)
  blas = ops.blas_computes(matmul, q_BLHK, k_BSGK, v_BSGK)
  if blas:
    q_NMK = q_BLGRK.transpose(0, 2, 3, 1, 4).reshape(b * g, r * l, k)  # N = B G, M = R L
    k_NSK = k_BSGK.transpose(0, 2, 1, 3).reshape(b * g, s, k)
    logits_BGRLS = cpu_gemm.batched_product(q_NMK, k_NSK, True).reshape(b, g, r, l, s)
  else:
    logits_BGRLS = jnp.einsum("BLGRK,BSGK->BGRLS", q_BLGRK, k_BSGK, preferred_element_type=jnp.float32)
  logits_BGRLS = logits_BGRLS / jnp.sqrt(jnp.float32(k)) if scale is None else logits_BGRLS * jnp.float32(scale)
  logits_BGRLS = jnp.where(mask_B1LS[:, :, None], logits_BGRLS, jnp.finfo(jnp.float32).min)
  probs_BGRLS = jax.nn.softmax(logits_BGRLS, axis=-1).astype(v_BSGK.dtype)
  if blas:
    v_NSK = v_BSGK.transpose(0, 2, 1, 3).reshape(b * g, s, k)
    out_NMK = cpu_gemm.batched_product(probs_BGRLS.reshape(b * g, r * l, s), v_NSK)
    return out_NMK.reshape(b, g, r, l, k).transpose(0, 3, 1, 2, 4).reshape(b, l, h, k)
  out_BLGRK = jnp.einsum("BGRLS,BSGK->BLGRK", probs_BGRLS, v_BSGK)
  return out_BLGRK.reshape(b, l, h, k)


def fused_attention(q_BLHK, k_BSGK, v_BSGK, mask_B1LS, implementation: str, scale: float | None = None):
  """jax.nn.dot_product_attention: XLA's fused path, or cuDNN flash attention on GPU."""
  return jax.nn.dot_product_attention(q_BLHK, k_BSGK, v_BSGK, mask=mask_B1LS, scale=scale,
                                      implementation=implementation)


def attend(q_BLHK, k_BSGK, v_BSGK, mask_B1LS, implementation: str, scale: float | None = None,
           matmul: str = "einsum"):
  if implementation == "reference":
    return reference_attention(q_BLHK, k_BSGK, v_BSGK, mask_B1LS, scale, matmul)
  return fused_attention(q_BLHK, k_BSGK, v_BSGK, mask_B1LS, implementation, scale)


class Attention(nn.Module):
  """Multi-head / grouped-query / multi-query causal self-attention."""
  cfg: "ModelConfig"  # noqa: F821 (lm.model.ModelConfig; a string to avoid an import cycle)
  decode: bool = False  # read and extend the KV cache (the `cache` collection, lm/kv_cache.py)
  fresh_cache: bool = False  # with decode: start the cache again, the new keys attending only to each other

  def _proj(self, name, shape, axes, std):
    cfg = self.cfg
    return self.param(name, nn.with_logical_partitioning(nn.initializers.normal(std), axes),
                      shape, cfg.param_dtype).astype(cfg.dtype)

  def _add_bias(self, y, name, shape, axes):
    """y + the bias `name` (ops.add_rows: its gradient a product on the CPU)."""
    cfg = self.cfg
    b = self.param(name, nn.with_logical_partitioning(nn.initializers.zeros, axes), shape, cfg.param_dtype)
    return ops.add_rows(y, b.astype(cfg.dtype), cfg.matmul)

  @nn.compact
  def __call__(self, x_BLD, segment_ids_BL, positions_BL):
    cfg = self.cfg
    d, h, g, k = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    std, out_std = param_lib.init_std(cfg), param_lib.init_std(cfg, residual_output=True)
    wq_DHK = self._proj("q", (d, h, k), ("embed", "heads", "head_dim"), std)
    wk_DGK = self._proj("k", (d, g, k), ("embed", "kv_heads", "head_dim"), std)
    wv_DGK = self._proj("v", (d, g, k), ("embed", "kv_heads", "head_dim"), std)
    wo_HKD = self._proj("o", (h, k, d), ("heads", "head_dim", "embed"), out_std)

    q_BLHK = dense("BLD,DHK->BLHK", x_BLD, wq_DHK, matmul=cfg.matmul)
    k_BLGK = dense("BLD,DGK->BLGK", x_BLD, wk_DGK, matmul=cfg.matmul)
    v_BLGK = dense("BLD,DGK->BLGK", x_BLD, wv_DGK, matmul=cfg.matmul)
    if cfg.use_bias:
      q_BLHK = self._add_bias(q_BLHK, "q_bias", (h, k), ("heads", "head_dim"))
      k_BLGK = self._add_bias(k_BLGK, "k_bias", (g, k), ("kv_heads", "head_dim"))
      v_BLGK = self._add_bias(v_BLGK, "v_bias", (g, k), ("kv_heads", "head_dim"))
    if cfg.positions == "rope":
      inv_freq_F = None  # the unscaled rates, computed inside rope() exactly as before
      if cfg.rope_scaling != "none":
        inv_freq_F = rope_inv_freq(k, cfg.rope_theta, cfg.rope_scaling, cfg.rope_scaling_factor,
                                   cfg.rope_low_freq_factor, cfg.rope_high_freq_factor, cfg.rope_original_max_len)
      # On the CPU (the switch: where the kernel runs), over more than FEW_ROWS rows: training,
      # prefills of 17+ tokens, decode steps at batch 17+ (only these sizes were timed end to end).
      materialize = ops.blas_computes(cfg.matmul, q_BLHK) and positions_BL.size > cpu_gemm.FEW_ROWS
      q_BLHK = rope(q_BLHK, positions_BL, cfg.rope_theta, inv_freq_F, materialize)
      k_BLGK = rope(k_BLGK, positions_BL, cfg.rope_theta, inv_freq_F, materialize)
    q_BLHK = nn.with_logical_constraint(q_BLHK, ("batch", "length", "heads", "head_dim"))
    k_BLGK = nn.with_logical_constraint(k_BLGK, ("batch", "length", "kv_heads", "head_dim"))
    v_BLGK = nn.with_logical_constraint(v_BLGK, ("batch", "length", "kv_heads", "head_dim"))

    mask_B1LL = causal_segment_mask(segment_ids_BL)  # unused by the fused kernel (jit drops it there)
    scale = param_lib.attention_scale(cfg)  # None: 1/sqrt(K)
    if self.decode:
      out_BLHK = kv_cache.attend_with_cache(self, q_BLHK, k_BLGK, v_BLGK, segment_ids_BL, mask_B1LL, scale,
                                            self.fresh_cache)
    elif cfg.attention == "reference" and ops.blas_computes(cfg.matmul, q_BLHK, k_BLGK, v_BLGK):
      # The CPU switch: the same attention in one fused kernel (lm/cpu_attention.py), 60 -> 40 ms a layer.
      out_BLHK = cpu_attention.causal_attention(q_BLHK, k_BLGK, v_BLGK, segment_ids_BL, scale)
    else:
      out_BLHK = attend(q_BLHK, k_BLGK, v_BLGK, mask_B1LL, cfg.attention, scale, cfg.matmul)
    out_BLHK = nn.with_logical_constraint(out_BLHK, ("batch", "length", "heads", "head_dim"))
    y_BLD = dense("BLHK,HKD->BLD", out_BLHK, wo_HKD, matmul=cfg.matmul)
    if cfg.use_bias:
      y_BLD = self._add_bias(y_BLD, "o_bias", (d,), ("embed",))
    return y_BLD
