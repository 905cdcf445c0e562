"""Weight contractions, and the backend choice of their backward pass (`model.matmul`).

`dense(eq, x, w, out_dtype, matmul)` is `jnp.einsum(eq, x, w)`. `matmul` picks its VJP:
  'einsum'      jax's own autodiff of the einsum: the textbook code.
  'custom_vjp'  the VJP written as two einsums, dx = einsum(out, w -> x) and
                dw = einsum(x, out -> w). JAX's generic transpose rule for dot_general
                emits the weight gradient as a dot followed by a transpose, and on XLA:CPU
                that transpose gets fused with the activation's backward (tanh/exp) into a
                slow transposing loop: on the 4x512 benchmark MLP (16x256 tokens, d_ff 2048)
                fwd+bwd took 537 ms with autodiff and 369 ms with this rule. Same forward,
                same values to rounding (tests/test_ops.py), same shardings.
                Where the equation is a matrix product in disguise (x = rows + contracted
                axes, w = contracted + columns, out = rows + columns: every training
                equation, e.g. BLD,DHK->BLHK is [BL, D] @ [D, HK]), both gradients are
                products of the 2-D views: dw = einsum("TC,TN->CN", x_TC, dy_TN) and
                dx = einsum("TN,CN->TC", dy_TN, w_CN). XLA:CPU hands Eigen those
                transposed operands as they are; from the 3-D einsums (BLD,BLHK->DHK) it
                first copied x, or the activation it fused into the copy, into a
                transposed [D, BL] buffer, once per weight per step
                (experiments/results/cpu_benchmarks/PROFILE.md has the times).
                Column blocks: Eigen's f32 product slows down when the output has many
                columns: on the 2-core EPYC, [4096, 512] @ [512, N] ran 108 GFLOP/s at
                N = 512 and 53 at N = 8192. So over training-size T (>= BLOCKED_TOKENS) a
                product with more than COLUMN_BLOCK output columns is computed in column
                blocks and concatenated (the forward x @ w, and dx), and a weight gradient
                with N > C is computed as its transpose dy^T x ([N, C]: few columns) and
                transposed back (a weight-sized copy). Each output element is the same
                dot, so values match the plain product to rounding (not bitwise). At the benchmark
                shape, in alternating runs (two each), the step took 7% (Llama-like) and
                10% (GPT-2-like) less time on average (PROFILE.md has the measurements).
  'blas'        'custom_vjp' with the 2-D float32 products computed by OpenBLAS (or MKL) through an
                XLA FFI call (lm/cpu_gemm.py: why, and how it is built), XLA:CPU only. At the
                benchmark shape the Llama-like step went from 4,651 to 4,193 ms and the
                GPT-2-like from 4,103 to 3,682 (PROFILE.md, 2026-12-03). Where it cannot run it
                is 'custom_vjp' exactly: another dtype, or a mesh of more than one device (a
                custom call has no sharding rule; XLA would gather its operands onto every
                device). Products of at most cpu_gemm.FEW_ROWS rows (decoding's) run the
                kernel's own few-row loops instead of the BLAS; the forward x @ w of 17 to
                256 rows over a weight of at least 1M elements (a prefill's) is XLA's
                product where that measured faster on the host (lm/cpu_gemm_rows.py).
  'auto'        'blas' on the CPU backend when lm/cpu_gemm.py's kernel builds there, else
                'custom_vjp' (it warns once why); 'einsum' elsewhere. Resolved when the model
                is traced (jax.default_backend(), the backend jit places it on), not when a
                config is built: configs are built for counting too (configs/ladder.py, a
                sweep's plan), and starting a backend there would take a TPU VM's chips
                from the runs it launches.

Remat 'dots' (dots_saveable): keep the outputs of the weight contractions, recompute the
rest. The custom VJP hides its dot from jax's dots_* policies, so under 'custom_vjp' the
outputs are named and saved by name; under 'einsum' jax's dots_with_no_batch_dims_saveable
keeps the same set, because a weight contraction has no batch dimension ("BLD,DHK->BLHK")
and the attention core's (QK^T and PV, batched over B and the heads) do, so they are
recomputed as before. tests/test_ops.py checks the saved residuals are the same.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from lm import cpu_gemm, cpu_gemm_rows

MATMULS = ("auto", "blas", "custom_vjp", "einsum")


def resolve_matmul(matmul: str) -> str:
  """'auto' -> 'blas' on the CPU backend (or 'custom_vjp' where the OpenBLAS kernel cannot
  be built), 'einsum' elsewhere; the others unchanged."""
  if matmul not in MATMULS:
    raise ValueError(f"model.matmul={matmul!r} is not one of {MATMULS}.")
  if matmul == "auto":
    if jax.default_backend() != "cpu":
      return "einsum"
    return "blas" if cpu_gemm.available() else "custom_vjp"
  return matmul


DENSE_NAME = "dense"
SAVE_DENSE_OUTPUTS = jax.checkpoint_policies.save_only_these_names(DENSE_NAME)


def dots_saveable(matmul: str):
  """The jax.checkpoint policy of remat 'dots' for this matmul choice (module docstring)."""
  if resolve_matmul(matmul) in ("blas", "custom_vjp"):
    return SAVE_DENSE_OUTPUTS
  return jax.checkpoint_policies.dots_with_no_batch_dims_saveable


def dense(eq: str, x: jax.Array, w: jax.Array, out_dtype=None, matmul: str = "auto") -> jax.Array:
  """einsum(eq, x, w); `out_dtype` accumulates and returns in that dtype (float32 logits)."""
  resolved = resolve_matmul(matmul)
  if resolved == "einsum":
    return jnp.einsum(eq, x, w, preferred_element_type=out_dtype)
  return checkpoint_name(_dense(eq, x, w, out_dtype, resolved == "blas"), DENSE_NAME)


@functools.lru_cache(maxsize=None)
def _grad_equations(eq: str) -> tuple[str, str]:
  inputs, out = eq.replace(" ", "").split("->")
  x, w = inputs.split(",")
  return f"{out},{w}->{x}", f"{x},{out}->{w}"


# Column blocks under 'custom_vjp' (module docstring): products over at least BLOCKED_TOKENS
# tokens (T) with more than COLUMN_BLOCK output columns. Decoding's few rows never qualify (a
# 1 x 768 @ 768 x 4096 product took 1.0 ms whole and 4-5 ms in blocks).
COLUMN_BLOCK = 512
BLOCKED_TOKENS = 1024


def _blocks_pay(tokens: int, columns: int) -> bool:
  """Whether a product over `tokens` rows with `columns` output columns goes in blocks."""
  return tokens >= BLOCKED_TOKENS and columns > COLUMN_BLOCK


def in_column_blocks(eq: str, a: jax.Array, b: jax.Array, b_axis: int, block: int, out_dtype=None) -> jax.Array:
  """einsum(eq, a, b) for a 2-D product whose output columns are b's axis `b_axis`,
  computed `block` columns at a time and concatenated. Each output element is the same
  K-long dot; Eigen may sum it in another order, so it equals the plain product to
  rounding (tests/test_ops.py). experiments/bench/matmul_shapes.py times it."""
  n = b.shape[b_axis]
  return jnp.concatenate(
      [jnp.einsum(eq, a, jax.lax.slice_in_dim(b, i, min(i + block, n), axis=b_axis),
                  preferred_element_type=out_dtype) for i in range(0, n, block)], axis=-1)


def transposed_weight_gradient(x_TC: jax.Array, dy_TN: jax.Array) -> jax.Array:
  """dw_CN = x_TC^T dy_TN computed as dw^T = dy^T x, [N, C], whose few columns Eigen
  handles fast, then transposed: a weight-sized copy. The optimization barrier keeps XLA's
  simplifier from folding transpose(dot) back into the slow [C, N] product."""
  return jax.lax.optimization_barrier(jnp.einsum("TN,TC->NC", dy_TN, x_TC)).T


# The three 2-D equations of the custom VJP as OpenBLAS transposes (trans_a, trans_b).
GEMM_TRANSPOSES = {"TC,CN->TN": (False, False), "TN,CN->TC": (False, True), "TC,TN->CN": (True, False)}
# lm/model.py's decoding head of a tied model: logits from the embedding table [V, D] as it is
# (not a matrix product in disguise: w's last axis is contracted). Under 'blas' its forward is
# one OpenBLAS call with b transposed; gradient-free code is all that uses it.
TIED_DECODE_HEAD = "BLD,VD->BLV"


def blas_may_run(*arrays: jax.Array) -> bool:
  """Whether OpenBLAS may compute on these arrays here: all float32, traced for one device
  (no mesh, or a mesh of one), and lm/cpu_gemm.py's kernel available."""
  mesh = jax.sharding.get_abstract_mesh()
  return (all(a.dtype == jnp.float32 for a in arrays) and (mesh.empty or mesh.size == 1)
          and cpu_gemm.available())


def blas_computes(matmul: str, *arrays: jax.Array) -> bool:
  """Whether products over these arrays go to lm/cpu_gemm.py's kernel: `matmul` (model.matmul)
  resolves to 'blas' here and the kernel may run on them (blas_may_run). The attention's
  products (lm/attention.py, lm/kv_cache.py) ask this; the weight products' _dense is given it."""
  return resolve_matmul(matmul) == "blas" and blas_may_run(*arrays)


def _blas_runs(a: jax.Array, b: jax.Array, out_dtype) -> bool:
  """Whether a 2-D product over a's rows goes to the kernel under 'blas' (module docstring)."""
  return out_dtype in (None, jnp.float32) and blas_may_run(a, b)


def _product(eq: str, a: jax.Array, b: jax.Array, b_axis: int, out_dtype, blas: bool) -> jax.Array:
  """einsum(eq, a, b) for one of the 2-D equations: OpenBLAS under 'blas' where it runs, else
  XLA's product (in column blocks where they pay). a's rows are T."""
  if blas and _blas_runs(a, b, out_dtype):
    return cpu_gemm.gemm(a, b, *GEMM_TRANSPOSES[eq])
  return _column_blocked(eq, a, b, b_axis, out_dtype)


def _column_blocked(eq: str, a: jax.Array, b: jax.Array, b_axis: int, out_dtype=None) -> jax.Array:
  """einsum(eq, a, b), in COLUMN_BLOCK column blocks where they pay (a's rows are T)."""
  if not _blocks_pay(a.shape[0], b.shape[b_axis]):
    return jnp.einsum(eq, a, b, preferred_element_type=out_dtype)
  return in_column_blocks(eq, a, b, b_axis, COLUMN_BLOCK, out_dtype)


def _weight_gradient(x_TC: jax.Array, dy_TN: jax.Array, blas: bool) -> jax.Array:
  """dw_CN = x_TC^T dy_TN: OpenBLAS under 'blas' where it runs; else transposed when it has
  more columns than rows and blocks pay."""
  if blas and _blas_runs(x_TC, dy_TN, None):
    return cpu_gemm.gemm(x_TC, dy_TN, trans_a=True)
  if _blocks_pay(x_TC.shape[0], dy_TN.shape[1]) and dy_TN.shape[1] > x_TC.shape[1]:
    return transposed_weight_gradient(x_TC, dy_TN)
  return _column_blocked("TC,TN->CN", x_TC, dy_TN, 1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 3, 4))
def _dense(eq, x, w, out_dtype, blas):
  rows = _row_axes(eq)
  if eq == TIED_DECODE_HEAD and blas:  # [T, D] @ [V, D]^T: the table's D axis contracted in place
    x_TD = x.reshape(-1, x.shape[-1])
    if _blas_runs(x_TD, w, out_dtype):
      return cpu_gemm.gemm(x_TD, w, trans_b=True).reshape(x.shape[:-1] + w.shape[:1])
  if rows is None:
    return jnp.einsum(eq, x, w, preferred_element_type=out_dtype)
  # the 2-D views (as in _dense_bwd): [T, C] @ [C, N], T rows, C contracted, N columns
  x_TC = x.reshape(math.prod(x.shape[:rows]), -1)
  w_CN = w.reshape(x_TC.shape[1], -1)
  xla = blas and cpu_gemm_rows.xla_computes(x_TC.shape[0], w_CN.size)  # a prefill's, where XLA's dot wins here
  out_TN = _product("TC,CN->TN", x_TC, w_CN, 1, out_dtype, blas and not xla)
  return out_TN.reshape(x.shape[:rows] + w.shape[x.ndim - rows:])


def _dense_fwd(eq, x, w, out_dtype, blas):
  return _dense(eq, x, w, out_dtype, blas), (x, w)


@functools.lru_cache(maxsize=None)
def _row_axes(eq: str) -> int | None:
  """How many leading axes of x are rows when `eq` is a matrix product in disguise (x =
  rows + contracted, w = contracted + columns, out = rows + columns): 2 for BLD,DHK->BLHK.
  None for any other equation (BLD,VD->BLV contracts w's last axis)."""
  inputs, out = eq.replace(" ", "").split("->")
  x, w = inputs.split(",")
  for rows in range(1, len(x)):
    contracted = x[rows:]
    if x[:rows] == out[:rows] and w.startswith(contracted) and w[len(contracted):] == out[rows:]:
      return rows
  return None


def _dense_bwd(eq, out_dtype, blas, residuals, dy):
  x, w = residuals
  dx_eq, dw_eq = _grad_equations(eq)
  rows = _row_axes(eq)
  if rows is None:
    dx, dw = jnp.einsum(dx_eq, dy, w), jnp.einsum(dw_eq, x, dy)
  else:  # the 2-D views: T = the row axes flattened, C = contracted, N = columns
    t = math.prod(x.shape[:rows])
    x_TC, dy_TN = x.reshape(t, -1), dy.reshape(t, -1)
    w_CN = w.reshape(x_TC.shape[1], dy_TN.shape[1])
    dx = _product("TN,CN->TC", dy_TN, w_CN, 0, None, blas).reshape(x.shape)
    dw = _weight_gradient(x_TC, dy_TN, blas).reshape(w.shape)
  return dx.astype(x.dtype), dw.astype(w.dtype)


_dense.defvjp(_dense_fwd, _dense_bwd)


def add_rows(y: jax.Array, b: jax.Array, matmul: str = "auto") -> jax.Array:
  """y + b for a parameter b over y's trailing axes (a bias): the same row added at every
  leading index. b's gradient is the cotangent summed over the rows. Under 'blas' and
  'custom_vjp' (the CPU paths) that sum is a product with a ones vector, ones[T] @ g[T, N]
  (_row_sum): XLA:CPU rewrote reduce_sum over leading axes into a strided reduce-window,
  which summed a [16, 256, 2048] cotangent to [2048] in 25.2 ms on one core of the
  2026-12-03 Xeon, and the product took 5.9 ms, 4.0 of it the elementwise producer both
  share (the same sum in another order: equal to rounding). Under 'einsum', jax's own."""
  _check_trailing(y, b)
  if resolve_matmul(matmul) == "einsum":
    return y + b
  return _add_rows(y, b, y.dtype, b.shape, b.dtype)


def scale_rows(x: jax.Array, s: jax.Array, matmul: str = "auto") -> jax.Array:
  """x * s for a parameter s over x's trailing axes (a norm's scale); s's gradient, the
  row sum of g * x, as in add_rows. The residuals are autodiff's: x and s, not s broadcast."""
  _check_trailing(x, s)
  if resolve_matmul(matmul) == "einsum":
    return x * s
  return _scale_rows(x, s, s.shape, s.dtype)


def _check_trailing(x, p):
  if x.shape[x.ndim - p.ndim:] != p.shape:
    raise ValueError(f"p{list(p.shape)} is not the trailing axes of x{list(x.shape)}")


def _row_sum(g: jax.Array, shape: tuple[int, ...], dtype) -> jax.Array:
  """g summed over its leading axes to `shape` (its trailing axes), as ones[T] @ g[T, N] in float32."""
  g_TN = g.reshape(-1, math.prod(shape))
  sum_N = jnp.einsum("T,TN->N", jnp.ones(g_TN.shape[:1], g.dtype), g_TN, preferred_element_type=jnp.float32)
  return sum_N.reshape(shape).astype(dtype)


# The custom VJPs take p's shape and dtype as static arguments, so that nothing but autodiff's
# own residuals is saved (tests/test_ops.py compares the saved residuals under remat 'dots').
@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _add_rows(y, b, y_dtype, b_shape, b_dtype):
  return y + b


def _add_rows_fwd(y, b, y_dtype, b_shape, b_dtype):
  return y + b, None


def _add_rows_bwd(y_dtype, b_shape, b_dtype, _, g):
  return g.astype(y_dtype), _row_sum(g, b_shape, b_dtype)


_add_rows.defvjp(_add_rows_fwd, _add_rows_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _scale_rows(x, s, s_shape, s_dtype):
  return x * s


def _scale_rows_fwd(x, s, s_shape, s_dtype):
  return x * s, (x, s)


def _scale_rows_bwd(s_shape, s_dtype, residuals, g):
  x, s = residuals
  return (g * s).astype(x.dtype), _row_sum(g * x, s_shape, s_dtype)


_scale_rows.defvjp(_scale_rows_fwd, _scale_rows_bwd)
