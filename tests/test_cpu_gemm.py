"""lm/cpu_gemm.py: the OpenBLAS product and the kernel's own few-row loops equal numpy's, and
model.matmul='blas' uses the kernel only where it may (float32, one device), the few-row loops
at up to FEW_ROWS rows, falling back to XLA's product otherwise."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import cpu_gemm, ops

pytestmark = pytest.mark.skipif(not cpu_gemm.available(), reason="lm/cpu_gemm.py's kernel is unavailable here")


@pytest.mark.parametrize("m,k,n", [(37, 19, 53), (1, 64, 300), (300, 8, 1), (2, 3, 2)],
                         ids=["odd", "one_row", "one_column", "fewer_rows_than_threads"])
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False), (False, True), (True, True)])
def test_gemm_equals_numpys_product_for_every_transpose(m, k, n, trans_a, trans_b):
  rng = np.random.default_rng(m * k * n)
  a, b = rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32)
  a_stored, b_stored = (a.T.copy() if trans_a else a), (b.T.copy() if trans_b else b)
  got = jax.jit(lambda a, b: cpu_gemm.gemm(a, b, trans_a, trans_b))(a_stored, b_stored)
  assert got.shape == (m, n) and got.dtype == jnp.float32
  # float32: a k-long sum in another order differs by a few ulps of the row's magnitude
  np.testing.assert_allclose(np.asarray(got), a @ b, rtol=0, atol=1e-5 * np.abs(a).max() * np.abs(b).max() * k)


@pytest.mark.parametrize("batch", [1, 2, 5], ids=["one", "as_many_as_threads", "more_than_threads"])
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False), (False, True)])
def test_a_batched_gemm_is_one_product_per_leading_entry(batch, trans_a, trans_b):
  rng = np.random.default_rng(batch)
  a, b = rng.standard_normal((batch, 9, 6), np.float32), rng.standard_normal((batch, 6, 11), np.float32)
  a_stored = a.transpose(0, 2, 1).copy() if trans_a else a
  b_stored = b.transpose(0, 2, 1).copy() if trans_b else b
  got = jax.jit(lambda a, b: cpu_gemm.gemm(a, b, trans_a, trans_b))(a_stored, b_stored)
  np.testing.assert_allclose(np.asarray(got), a @ b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("trans_b", [False, True])
def test_batched_product_gradients_equal_autodiff_of_the_einsum(trans_b):
  rng = np.random.default_rng(3)
  a = jnp.asarray(rng.standard_normal((3, 7, 5)), jnp.float32)
  b = jnp.asarray(rng.standard_normal((3, 4, 5) if trans_b else (3, 5, 4)), jnp.float32)
  r = jnp.asarray(rng.standard_normal((3, 7, 4)), jnp.float32)
  eq = "nmk,nsk->nms" if trans_b else "nmk,nks->nms"
  ours = jax.jit(jax.grad(lambda a, b: jnp.sum(cpu_gemm.batched_product(a, b, trans_b) * r), (0, 1)))(a, b)
  autodiff = jax.grad(lambda a, b: jnp.sum(jnp.einsum(eq, a, b) * r), (0, 1))(a, b)
  for got, want in zip(ours, autodiff):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-5)


def test_gemm_under_vmap_is_one_product_per_batch_entry():
  """lm/lr_sweep.py vmaps the train step over learning rates."""
  rng = np.random.default_rng(0)
  a, b = rng.standard_normal((3, 20, 7), np.float32), rng.standard_normal((3, 7, 5), np.float32)
  got = jax.jit(jax.vmap(cpu_gemm.gemm))(a, b)
  np.testing.assert_allclose(np.asarray(got), a @ b, rtol=0, atol=1e-5)


def test_gemm_names_a_bad_operand():
  with pytest.raises(ValueError, match=r"gemm takes two 2-D float32 operands, or two 3-D with one batch size, got bfloat16\[4, 3\]"):
    cpu_gemm.gemm(jnp.ones((4, 3), jnp.bfloat16), jnp.ones((3, 2)))
  with pytest.raises(ValueError, match=r"op\(a\) is \[4, 3\] and op\(b\) is \[2, 5\]; the contracted sizes differ"):
    cpu_gemm.gemm(jnp.ones((4, 3)), jnp.ones((2, 5)))


def _uses_kernel(fn, *args) -> bool:
  return cpu_gemm.TARGET in jax.jit(fn).lower(*args).as_text()


def _loss(x, w):
  return jnp.sum(jnp.sin(ops.dense("BLD,DF->BLF", x, w, matmul="blas")))


def _few_rows_flags(fn, *args) -> list[bool]:
  """The few_rows attribute of each kernel call in fn's lowered program."""
  text = jax.jit(fn).lower(*args).as_text()
  calls = [line for line in text.splitlines() if f"custom_call @{cpu_gemm.TARGET}(" in line]
  return ["few_rows = true" in line for line in calls]


def test_blas_runs_the_forward_and_both_gradients_at_every_row_count_in_float32_only():
  """Training's many rows go to the BLAS; decoding's few (at most FEW_ROWS) to the kernel's own
  loops, the weight gradient (a transposed) always to the BLAS."""
  w = jnp.ones((8, 24))
  assert _few_rows_flags(jax.grad(_loss, (0, 1)), jnp.ones((2, 16, 8)), w) == [False] * 3  # forward, dx, dw
  one_row = jnp.ones((1, 1, 8))
  assert _few_rows_flags(jax.grad(_loss, (0, 1)), one_row, w) == [True, True, False]
  few = jnp.ones((1, cpu_gemm.FEW_ROWS, 8))
  assert _few_rows_flags(_loss, few, w) == [True]
  assert _few_rows_flags(_loss, jnp.ones((1, cpu_gemm.FEW_ROWS + 1, 8)), w) == [False]
  bf16 = jnp.ones((2, 16, 8), jnp.bfloat16), jnp.ones((8, 24), jnp.bfloat16)
  assert not _uses_kernel(jax.grad(_loss, (0, 1)), *bf16)


@pytest.mark.parametrize("m", [1, 2, 3, 5, 8, 9, 16])
@pytest.mark.parametrize("k,n", [(1, 1), (9, 17), (40, 130), (384, 200), (300, 37)],
                         ids=["tiny", "odd", "tails", "wide", "pieces"])
@pytest.mark.parametrize("trans_b", [False, True])
def test_the_few_row_loops_equal_numpys_product(m, k, n, trans_b):
  """Every register-tile shape (rows 1-8, a second group past 8), vector and single-column
  tails, a contraction shorter and longer than one block of B's rows; for one row, one piece
  and several (k = 300: pieces of 128, 128 and 44 rows, the last ending in 4 single rows)."""
  rng = np.random.default_rng(m * 1000 + k + n)
  a, b = rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32)
  fn = jax.jit(lambda a, b: cpu_gemm.gemm(a, b, trans_b=trans_b, few_rows=True))
  got = fn(a, b.T.copy() if trans_b else b)
  np.testing.assert_allclose(np.asarray(got), a @ b, rtol=0, atol=1e-5 * np.abs(a).max() * np.abs(b).max() * k)


def test_one_row_products_shared_with_the_helper_thread_are_exact_and_repeatable():
  """One-row products big enough for two threads (512 x 300 elements of B: pieces of 128 rows
  over the caller and lm/cpu_helper.h's thread), six independent ones per call (XLA may run
  them at once: the second caller finds the helper taken and uses the pool) and a chain of six
  (each posted right after the last is retired), 30 calls each: every result bitwise equal to
  the first call's (the partials are added in piece order whichever thread ran them) and close
  to numpy's."""
  rng = np.random.default_rng(7)
  x = rng.standard_normal((1, 512), np.float32)
  ws = [rng.standard_normal((512, 300), np.float32) * 0.05 for _ in range(6)]
  gemm = lambda a, w: cpu_gemm.gemm(a, w, trans_b=False, few_rows=True)

  def chain(x, ws):
    outs = []
    for w in ws:
      y = gemm(x, w)
      outs.append(y)
      x = x.at[:, :300].add(y)
    return outs
  xs, chain_want = x.astype(np.float64), []  # the chain's expected values, in float64
  for w in ws:
    chain_want.append(xs @ w)
    xs[:, :300] += chain_want[-1]
  for fn, want in ((jax.jit(lambda x, ws: [gemm(x, w) for w in ws]), [x @ w for w in ws]),
                   (jax.jit(chain), chain_want)):
    first = [np.asarray(y) for y in fn(x, ws)]
    for y, w in zip(first, want):
      np.testing.assert_allclose(y, w, rtol=0, atol=1e-4 * max(1.0, np.abs(w).max()))
    for _ in range(30):
      for y, f in zip(fn(x, ws), first):
        np.testing.assert_array_equal(np.asarray(y), f)


@pytest.mark.parametrize("m", [3, 9, 16])
@pytest.mark.parametrize("batch,k,n", [(5, 64, 37), (4, 256, 130)], ids=["one_chunk", "two_chunks"])
@pytest.mark.parametrize("trans_b", [False, True])
def test_batched_few_row_loops_are_one_product_per_leading_entry(m, batch, k, n, trans_b):
  """The KV-cache attention's products (lm/kv_cache.py): [R L, K] @ [K, S] for each (B, G); the
  larger shape is split over two threads (more than the kernel's 32K elements of B per chunk)."""
  rng = np.random.default_rng(m * 100 + batch)
  a, b = rng.standard_normal((batch, m, k), np.float32), rng.standard_normal((batch, k, n), np.float32)
  b_stored = b.transpose(0, 2, 1).copy() if trans_b else b
  got = jax.jit(lambda a, b: cpu_gemm.gemm(a, b, trans_b=trans_b, few_rows=True))(a, b_stored)
  np.testing.assert_allclose(np.asarray(got), a @ b, rtol=0, atol=2e-5 * k)


def test_the_few_row_loops_refuse_a_transposed_a():
  with pytest.raises(ValueError, match=r"few_rows takes a not transposed"):
    cpu_gemm.gemm(jnp.ones((8, 2)), jnp.ones((8, 3)), trans_a=True, few_rows=True)


def test_blas_falls_back_to_xlas_product_on_a_mesh_of_several_devices():
  """A custom call has no sharding rule: over a multi-device mesh lm keeps XLA's product."""
  x, w = jnp.ones((2, 16, 8)), jnp.ones((8, 24))
  assert _uses_kernel(_loss, x, w)
  with jax.set_mesh(jax.make_mesh((jax.device_count(),), ("data",))):
    assert _uses_kernel(_loss, x, w) == (jax.device_count() == 1)


@pytest.mark.parametrize("h,g", [(4, 4), (4, 2), (4, 1)], ids=["multi_head", "grouped", "multi_query"])
def test_reference_attention_under_blas_equals_the_einsum_and_its_gradients(h, g):
  """Q K^T and P V through OpenBLAS, packed documents masked, R query heads stacked as rows."""
  from lm import attention
  rng = np.random.default_rng(h * g)
  b, l, k = 2, 16, 8
  q, kk, v, r = (jnp.asarray(rng.standard_normal(shape), jnp.float32)
                 for shape in ((b, l, h, k), (b, l, g, k), (b, l, g, k), (b, l, h, k)))
  mask = attention.causal_segment_mask(jnp.asarray(np.repeat([[1, 2], [1, 1]], l // 2, axis=1)))

  def out_and_grads(matmul):
    run = lambda q, kk, v: attention.reference_attention(q, kk, v, mask, None, matmul)
    return run(q, kk, v), jax.grad(lambda *a: jnp.sum(run(*a) * r), (0, 1, 2))(q, kk, v)

  assert _uses_kernel(lambda q: attention.reference_attention(q, kk, v, mask, None, "blas"), q)
  (out, grads), (out_einsum, grads_einsum) = jax.jit(lambda: (out_and_grads("blas"), out_and_grads("einsum")))()
  np.testing.assert_allclose(np.asarray(out), np.asarray(out_einsum), rtol=0, atol=1e-6)
  for got, want in zip(grads, grads_einsum):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-5 * np.abs(want).max())


@pytest.mark.slow  # spawns a python process
def test_a_kernel_that_cannot_be_built_is_reported_and_lm_uses_xlas_product(tmp_path):
  """A fresh process (the kernel loads once per process) with no compiler: a warning that
  says why, 'auto' resolves to 'custom_vjp', and the model still trains."""
  script = (
      "import warnings, jax, jax.numpy as jnp\n"
      "from lm import cpu_gemm, ops\n"
      "with warnings.catch_warnings(record=True) as caught:\n"
      "  warnings.simplefilter('always')\n"
      "  assert not cpu_gemm.available()\n"
      "  print(caught[0].message)\n"
      "assert ops.resolve_matmul('auto') == 'custom_vjp'\n"
      "y = ops.dense('TC,CN->TN', jnp.ones((32, 4)), jnp.ones((4, 3)))\n"
      "assert float(y.sum()) == 32 * 3 * 4\n")
  env = {"PATH": "/usr/bin:/bin", "XDG_CACHE_HOME": str(tmp_path), "CXX": "/bin/false", "HOME": str(tmp_path)}
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
  assert result.returncode == 0, result.stderr
  assert "lm's OpenBLAS matmul for XLA:CPU is unavailable (compiling" in result.stdout
  assert "using XLA's own product" in result.stdout and "LM_CPU_GEMM=0" in result.stdout
  assert not list(tmp_path.glob("lm/*.so"))  # the failed build left no file behind


def test_the_blas_choice_follows_lm_cpu_gemm_blas(monkeypatch):
  monkeypatch.setenv("LM_CPU_GEMM_BLAS", "openblas")
  assert cpu_gemm.blas()[0] == "openblas"
  monkeypatch.setenv("LM_CPU_GEMM_BLAS", "atlas")
  with pytest.raises(cpu_gemm.Unavailable, match=r"LM_CPU_GEMM_BLAS='atlas' is not one of \('openblas', 'mkl'\)"):
    cpu_gemm.blas()
  monkeypatch.setenv("LM_CPU_GEMM_BLAS", "mkl")
  monkeypatch.setattr(cpu_gemm, "_mkl", lambda: None)  # as where the mkl wheel is not installed
  with pytest.raises(cpu_gemm.Unavailable, match=r"the mkl package is not installed \(pip install mkl\)"):
    cpu_gemm.blas()
  monkeypatch.delenv("LM_CPU_GEMM_BLAS")
  assert cpu_gemm.blas()[0] == "openblas"  # no mkl: OpenBLAS


def test_materialize_is_a_bitwise_copy_whose_tangent_passes_through():
  rng = np.random.default_rng(0)
  x, w = rng.standard_normal((3, 5, 7), np.float32), rng.standard_normal((3, 5, 7), np.float32)
  assert cpu_gemm.MATERIALIZE_TARGET in jax.jit(cpu_gemm.materialize).lower(x).as_text()
  np.testing.assert_array_equal(np.asarray(jax.jit(cpu_gemm.materialize)(x)), x)
  ints = np.arange(12, dtype=np.int32).reshape(3, 4)
  np.testing.assert_array_equal(np.asarray(jax.jit(cpu_gemm.materialize)(ints)), ints)
  np.testing.assert_array_equal(np.asarray(jax.jit(jax.vmap(cpu_gemm.materialize))(x)), x)
  grad = jax.jit(jax.grad(lambda x: jnp.sum(jnp.sin(cpu_gemm.materialize(x)) * w)))(x)
  np.testing.assert_allclose(np.asarray(grad), np.cos(x) * w, rtol=1e-6, atol=1e-6)


def test_rope_materializes_cos_and_sin_on_the_cpu_path_over_more_rows_than_a_decode_step():
  """XLA:CPU otherwise evaluates cos and sin inside the rotation, for every head and channel."""
  from lm.attention import Attention, rope
  from tests.helpers import tiny_model_config
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((2, 16, 4, 8)), jnp.float32)
  positions = jnp.asarray(rng.integers(0, 1000, (2, 16)), jnp.int32)
  fused, materialized = (jax.jit(lambda x, p, m=m: rope(x, p, 10000.0, None, m))(x, positions) for m in (False, True))
  np.testing.assert_allclose(np.asarray(materialized), np.asarray(fused), rtol=0, atol=1e-5)

  def materializes(matmul, batch, length):
    module = Attention(tiny_model_config(positions="rope", matmul=matmul))
    x_BLD = jnp.ones((batch, length, 32))
    ids = jnp.ones((batch, length), jnp.int32)
    pos = jnp.broadcast_to(jnp.arange(length), (batch, length))
    params = module.init(jax.random.key(0), x_BLD, ids, pos)
    text = jax.jit(module.apply).lower(params, x_BLD, ids, pos).as_text()
    return text.count(f"custom_call @{cpu_gemm.MATERIALIZE_TARGET}(")

  assert materializes("blas", 2, 16) == 4  # cos and sin, for q and for k
  assert materializes("blas", 1, cpu_gemm.FEW_ROWS) == 0  # a decode step's few rows
  assert materializes("einsum", 2, 16) == 0  # not the CPU switch
