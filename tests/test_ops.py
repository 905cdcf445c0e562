"""model.matmul: the custom VJP equals autodiff, and remat 'dots' means the same under both choices.

The equations are recorded from the model itself (a traced init of each family, training and
decoding), so a new weight contraction is checked without editing this file.
"""

import contextlib
import functools
import io
import re
from collections import Counter
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import flax.linen as nn
from jax.ad_checkpoint import print_saved_residuals

from lm.errors import ConfigError
from lm import cpu_gemm, ops
from lm.model import ModelConfig, Transformer, init_params
from tests.helpers import tiny_config, tiny_model_config

FAMILIES = {
    "gpt2": dict(positions="learned", norm="layernorm", mlp="gelu", use_bias=True, tie_embeddings=True, n_kv_heads=4),
    "llama": dict(positions="rope", norm="rmsnorm", mlp="swiglu", use_bias=True, tie_embeddings=False, n_kv_heads=2),
}
TOKENS = jnp.asarray(np.random.default_rng(1).integers(3, 97, (4, 17)), jnp.int32)
# Largest gradient entry's share that the two rules may differ by. float32: measured 2.8e-8
# (one equation, the untied head's weight gradient; the others bit-identical). bfloat16 keeps
# 8 significant bits (a rounding is up to 2^-8 of the value); allow four roundings apart.
TOLERANCE = {jnp.float32: 1e-6, jnp.bfloat16: 2.0 ** -6}


def _model_equations() -> dict:
  """(equation, out_dtype) -> (x shape, w shape) of every `dense` call of both families."""
  seen = {}
  record = ops._dense

  def recording(eq, x, w, out_dtype, blas):
    seen[(eq, out_dtype)] = (x.shape, w.shape)
    return record(eq, x, w, out_dtype, blas)

  with mock.patch.object(ops, "_dense", recording):
    for family in FAMILIES.values():
      for decode in (False, True):
        model = Transformer(tiny_model_config(matmul="custom_vjp", **family), decode=decode)
        jax.eval_shape(model.init, jax.random.key(0), TOKENS[:, :16])
  return seen


EQUATIONS = _model_equations()


def test_the_recorded_equations_cover_both_families_and_the_decoding_head():
  eqs = {eq for eq, _ in EQUATIONS}
  assert {"BLD,DHK->BLHK", "BLD,DGK->BLGK", "BLHK,HKD->BLD",   # attention projections
          "BLD,DCF->BLCF", "BLD,DF->BLF", "BLF,FD->BLD",       # SwiGLU, GELU
          "BLD,DV->BLV", "BLD,VD->BLV"} <= eqs                  # untied / tied head, tied decoding head
  assert {out for _, out in EQUATIONS} == {None, jnp.float32}  # float32 logits included


def _blocks(blocked: bool):
  """Column blocks (lm/ops.py) at the test's tiny shapes (64 tokens, 8-97 columns), or none."""
  if not blocked:
    return contextlib.nullcontext()
  stack = contextlib.ExitStack()
  stack.enter_context(mock.patch.object(ops, "COLUMN_BLOCK", 8))
  stack.enter_context(mock.patch.object(ops, "BLOCKED_TOKENS", 32))
  return stack


@pytest.mark.parametrize("matmul,blocked", [("custom_vjp", False), ("custom_vjp", True), ("blas", False)],
                         ids=["whole", "column_blocks", "blas"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
def test_the_custom_vjp_gives_autodiffs_values_and_gradients_for_every_model_equation(dtype, matmul, blocked):
  """'blas' at float32: OpenBLAS computes the training products (64-68 rows; decoding's 4
  rows stay XLA's); at bfloat16 it is the custom VJP exactly."""
  if matmul == "blas" and not cpu_gemm.available():
    pytest.skip("lm/cpu_gemm.py's kernel is unavailable here (its warning says why)")
  with _blocks(blocked):
    _check_every_model_equation(dtype, matmul, exact_forward=not blocked and not (matmul == "blas" and dtype == jnp.float32))


def _check_every_model_equation(dtype, matmul: str, exact_forward: bool):
  """Outputs equal the einsum's (exactly, unless in column blocks or OpenBLAS: a K-long sum
  may then be ordered differently) and gradients autodiff's within TOLERANCE."""
  for i, ((eq, out_dtype), (x_shape, w_shape)) in enumerate(sorted(EQUATIONS.items(), key=str)):
    rng = np.random.default_rng(i)  # numpy: jax.random would compile once per shape
    x, w = (jnp.asarray(rng.standard_normal(shape), dtype) for shape in (x_shape, w_shape))
    y = jnp.einsum(eq, x, w, preferred_element_type=out_dtype)
    r = jnp.asarray(rng.standard_normal(y.shape), y.dtype)  # a random cotangent, not all ones

    @jax.jit
    def both(x, w, eq=eq, out_dtype=out_dtype, r=r):
      def out_and_grads(matmul):
        loss = lambda x, w: jnp.sum((ops.dense(eq, x, w, out_dtype, matmul=matmul) * r).astype(jnp.float32))
        return ops.dense(eq, x, w, out_dtype, matmul=matmul), jax.grad(loss, (0, 1))(x, w)
      return out_and_grads(matmul), out_and_grads("einsum")

    (y_custom, custom), (y_einsum, autodiff) = both(x, w)
    np.testing.assert_array_equal(np.asarray(y_einsum, np.float32), np.asarray(y, np.float32), err_msg=eq)
    y_custom, y = np.asarray(y_custom, np.float32), np.asarray(y, np.float32)
    if exact_forward:
      np.testing.assert_array_equal(y_custom, y, err_msg=eq)
    else:
      np.testing.assert_allclose(y_custom, y, rtol=0, atol=TOLERANCE[dtype] * np.abs(y).max(), err_msg=eq)
    for name, a, b in zip(("dx", "dw"), custom, autodiff):
      assert a.dtype == b.dtype == dtype and a.shape == b.shape, (eq, name)
      a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
      np.testing.assert_allclose(a, b, rtol=0, atol=TOLERANCE[dtype] * np.abs(b).max(), err_msg=f"{eq} {name}")


def test_column_blocks_split_wide_products_over_many_tokens_only():
  """Over >= BLOCKED_TOKENS tokens a product with more than COLUMN_BLOCK columns is several
  dots (forward and dx in column blocks, a wide dw as one transposed product); over fewer
  tokens (decoding) each product stays one dot."""
  def dots(tokens):
    x, w = jnp.ones((tokens, 16)), jnp.ones((16, 40))
    loss = lambda x, w: jnp.sum(jnp.sin(ops.dense("TC,CN->TN", x, w, matmul="custom_vjp")))
    hlo = jax.jit(jax.value_and_grad(loss, (0, 1))).lower(x, w).as_text()
    return hlo.count("dot_general")

  with _blocks(True):
    assert dots(64) == 5 + 1 + 2  # forward: 40 columns in blocks of 8; dw: one transposed product; dx: 16 columns, 2 blocks
    assert dots(16) == 3
  assert dots(64) == 3


def _layout_copies(hlo: str) -> list[str]:
  """The shapes of the copies and transposes in an optimized HLO module's entry computation."""
  entry = hlo[hlo.index("ENTRY"):]
  return re.findall(r"%[\w.\-]*(?:copy|transpose)[\w.\-]* = (\w+\[[\d,]*\])", entry)


@pytest.mark.parametrize("eq,x_shape,w_shape", [("BLD,DF->BLF", (4, 16, 8), (8, 32)),
                                                ("BLD,DCF->BLCF", (4, 16, 8), (8, 2, 32)),
                                                ("BLHK,HKD->BLD", (4, 16, 2, 8), (2, 8, 8))])
def test_the_custom_vjp_backward_copies_no_activation_on_cpu(eq, x_shape, w_shape):
  """Both gradients are products of the 2-D views (lm/ops.py): XLA:CPU feeds the transposed
  operands to its dot as they are. The 3-D einsums made it copy the activation (tanh(x)
  here, a GELU output in the model) into a transposed buffer first."""
  x, w = jnp.ones(x_shape), jnp.ones(w_shape)
  loss = lambda x, w: jnp.sum(jnp.sin(ops.dense(eq, jnp.tanh(x), w, matmul="custom_vjp")))
  hlo = jax.jit(jax.grad(loss, (0, 1))).lower(x, w).compile().as_text()
  x_rows = np.prod(x_shape[:2])
  big = [shape for shape in _layout_copies(hlo) if np.prod([int(d) for d in shape.split("[")[1][:-1].split(",") if d]) >= x_rows]
  assert big == [], (eq, big)


@functools.lru_cache(maxsize=None)
def _params(family: str):
  """One family's parameters (the matmul choice does not change them)."""
  return init_params(Transformer(tiny_model_config(**FAMILIES[family])), jax.random.key(0))


@pytest.mark.parametrize("matmul", ["custom_vjp", "einsum"])
@pytest.mark.parametrize("family", FAMILIES)
def test_remat_dots_gives_no_remats_loss_and_gradients_under_either_matmul(family, matmul):
  """('full' saves nothing whatever the matmul; tests/test_model.py checks it on CPU.)"""
  params = _params(family)
  results = {}
  for remat in ("none", "dots"):
    model = Transformer(tiny_model_config(matmul=matmul, remat=remat, **FAMILIES[family]))

    def loss(p, model=model):
      logits = model.apply({"params": p}, TOKENS[:, :-1])
      return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), TOKENS[:, 1:, None], -1))
    results[remat] = jax.jit(jax.value_and_grad(loss))(params)
  assert results["dots"][0] == pytest.approx(float(results["none"][0]), rel=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), results["none"][1],
               results["dots"][1])


def _abstract_params(model: Transformer):
  return nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), TOKENS[:, :-1]))["params"]


def _saved_residuals(cfg: ModelConfig) -> Counter:
  """'dtype[shape]' of each residual the backward pass keeps (print_saved_residuals' lines)."""
  model = Transformer(cfg)
  params = _abstract_params(model)  # traced only: nothing is compiled
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    print_saved_residuals(lambda p: jnp.mean(model.apply({"params": p}, TOKENS[:, :-1])), params)
  # 'dtype[shape]' with unit axes dropped: autodiff keeps a norm's scale as [1, 1, D], scale_rows as [D]
  return Counter(f"{m.group(1)}[{','.join(d for d in m.group(2).split(',') if d not in ('', '1'))}]"
                 for m in re.finditer(r"^(\w+)\[([\d,]*)\]", out.getvalue(), re.MULTILINE))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("family", FAMILIES)
def test_remat_dots_keeps_the_same_residuals_under_either_matmul(family, dtype):
  """dots_with_no_batch_dims_saveable keeps what the named outputs keep: the weight
  contractions' outputs, not the attention core's (so flops.activation_bytes_per_token,
  checked on CPU, holds for the einsum path too)."""
  kw = dict(remat="dots", dtype=dtype, **FAMILIES[family])
  named = _saved_residuals(tiny_model_config(matmul="custom_vjp", **kw))
  dots = _saved_residuals(tiny_model_config(matmul="einsum", **kw))
  assert named == dots
  full = _saved_residuals(tiny_model_config(matmul="einsum", **{**kw, "remat": "full"}))
  assert sum(named.values()) > sum(full.values())  # 'dots' keeps more than the block inputs


def _has_custom_vjp(model: Transformer) -> bool:
  params = _abstract_params(model)
  return "custom_vjp_call" in str(jax.make_jaxpr(lambda p: model.apply({"params": p}, TOKENS))(params))


@pytest.mark.parametrize("backend,kernel,expected", [("cpu", True, "blas"), ("cpu", False, "custom_vjp"),
                                                    ("gpu", True, "einsum"), ("tpu", True, "einsum")])
def test_auto_is_blas_on_cpu_only_and_resolved_when_the_model_is_traced(backend, kernel, expected):
  """'blas' where lm/cpu_gemm.py's kernel is available, else 'custom_vjp'; both are custom VJPs."""
  model = Transformer(tiny_model_config())  # lm/schema.py: matmul='auto'
  assert model.cfg.matmul == "auto"
  with mock.patch.object(ops.jax, "default_backend", lambda: backend), \
       mock.patch.object(ops.cpu_gemm, "available", lambda: kernel):
    assert ops.resolve_matmul("auto") == expected
    assert _has_custom_vjp(model) == (expected != "einsum")
  for matmul in ("blas", "custom_vjp", "einsum"):
    assert ops.resolve_matmul(matmul) == matmul


def test_an_unknown_matmul_is_a_config_error_naming_the_field():
  expected = r"model.matmul='fast' is not one of \('auto', 'blas', 'custom_vjp', 'einsum'\); set --config.model.matmul"
  with pytest.raises(ConfigError, match=expected):
    ModelConfig.from_config(tiny_config(matmul="fast").model, 97)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("p_shape", [(8,), (2, 8)])
@pytest.mark.parametrize("matmul", ["blas", "custom_vjp", "einsum"])
@pytest.mark.parametrize("op", ["add_rows", "scale_rows"])
def test_row_parameters_give_autodiffs_values_and_gradients(op, matmul, p_shape, dtype):
  """y + b and x * s for a parameter over the trailing axes: the parameter's gradient is a
  sum over the rows (a ones-vector product on the CPU paths, jax's reduce_sum under
  'einsum'), equal to rounding; the activation's gradient and the value are jax's."""
  rng = np.random.default_rng(0)
  p = jnp.asarray(rng.normal(size=p_shape), dtype)
  x = jnp.asarray(rng.normal(size=(3, 5) + p_shape), dtype)
  plain = {"add_rows": jnp.add, "scale_rows": jnp.multiply}[op]

  def loss(fn, x, p):
    return jnp.sum(jnp.tanh(fn(x, p)).astype(jnp.float32))
  ours = jax.value_and_grad(functools.partial(loss, lambda x, p: getattr(ops, op)(x, p, matmul)), (0, 1))(x, p)
  theirs = jax.value_and_grad(functools.partial(loss, plain), (0, 1))(x, p)
  assert ours[0] == theirs[0]
  np.testing.assert_array_equal(ours[1][0], theirs[1][0])
  ours_g, theirs_g = np.asarray(ours[1][1], np.float32), np.asarray(theirs[1][1], np.float32)
  assert ours[1][1].dtype == p.dtype and ours_g.shape == p_shape
  assert np.max(np.abs(ours_g - theirs_g)) <= TOLERANCE[jnp.dtype(dtype).type] * np.max(np.abs(theirs_g))


def test_a_row_parameter_that_is_not_the_trailing_axes_is_named():
  with pytest.raises(ValueError, match=r"p\[4\] is not the trailing axes of x\[3, 5, 8\]"):
    ops.add_rows(jnp.ones((3, 5, 8)), jnp.ones(4))
