"""Parameter, FLOP and memory accounting against the real model and XLA's own counts.

What XLA counts (cost_analysis()["flops"] of the compiled value_and_grad of the loss),
established here on CPU for the shapes below:
  - every matmul as 2mnk, exactly: the matmuls in the jaxpr equal our analytic count
    minus two terms, with no tolerance (test_matmuls_in_the_jaxpr_...);
  - the embedding lookup as a gather: 0 FLOPs where Appendix F counts a one-hot matmul,
    2VD per token forward (6VD per training token);
  - the softmax as the elementwise ops it is (~8 per logit forward and backward, where
    Appendix F says 3), and every other elementwise op at 1 FLOP: norms, biases, GELU
    (~23 per element forward and backward), SiLU, RoPE, residual adds, the loss;
  - a while loop's body once: under scan_layers the count holds one layer, not L.
So XLA = matmuls + elementwise, and at a fixed sequence length the elementwise surplus
falls as 1/D (per token it grows with D and F, the matmuls with D^2 and D F; the
softmax's part grows with H S): measured on CPU at S = 64 as 3.1/D of the matmuls for the
GPT-2 family (GELU-tanh, LayerNorm, biases) and 1.9/D for the Llama family (SwiGLU,
RMSNorm), at D = 64, 128 and 256; at D = 1024, S = 1024 it was 4.0/D and 3.1/D.

These comparisons hold on CPU, where CI runs. On an H200 (jax 0.11.2) the same small f32
shapes gave 3.7/D and 3.8/D, but XLA:GPU counts a matmul it hands to cuBLASLt
(`__cublas$lt$matmul`, e.g. any 4096^3 GEMM) as 0 FLOPs, so a bf16 step at D = 1024
reported 0.3x its matmul FLOPs: MFU must come from the analytic counts, never from
cost_analysis.
"""

import contextlib
import dataclasses
import io
import json
import math
import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
import pytest
from jax.ad_checkpoint import print_saved_residuals

from lm import flops, ladder, steps
from lm.model import Transformer
from tests.helpers import tiny_model_config

FAMILIES = {
    # GPT-2: learned positions, LayerNorm with biases, GELU with d_ff = 4D, tied head, MHA.
    "gpt2": dict(positions="learned", norm="layernorm", mlp="gelu", use_bias=True, tie_embeddings=True,
                 n_kv_heads=4, d_ff=512),
    # Llama: RoPE, RMSNorm, SwiGLU with d_ff ~ 8D/3, no biases, untied head, GQA.
    "llama": dict(positions="rope", norm="rmsnorm", mlp="swiglu", use_bias=False, tie_embeddings=False,
                  n_kv_heads=2, d_ff=352),
    # Llama-shaped but multi-query with a tied head (small Llama-3.2-like).
    "llama_mqa_tied": dict(positions="rope", norm="rmsnorm", mlp="swiglu", use_bias=False, tie_embeddings=True,
                           n_kv_heads=1, d_ff=352),
}
# XLA's elementwise surplus over the matmuls is below C / D for each family: measured
# 3.1/D and 1.9/D, bounds with ~30% headroom for other XLA versions. At D = 128 that is
# 3.1% for GPT-2 and 2.0% for Llama; the smallest matmul the analytic count could drop
# (the attention output projection, 2 D^2 per layer) would add ~7%, and any double count
# would make the surplus negative.
SURPLUS_PER_WIDTH = {"gpt2": 4.0, "llama": 2.5, "llama_mqa_tied": 2.5}
BATCH, SEQ, VOCAB = 3, 64, 512  # batch 3: no weight dimension is 3, so residuals sort by shape


# The counts below read dot_general in the jaxpr and XLA's cost analysis, which counts a custom
# call as 0 FLOPs: under model.matmul='blas' (the CPU default, lm/cpu_gemm.py) the weight
# products are custom calls, so these configs keep XLA's product ('custom_vjp', same FLOPs).
XLA_PRODUCT = "custom_vjp"


def _config(family, d_model=128, seq=SEQ, vocab=VOCAB, **overrides):
  kw = dict(FAMILIES[family], n_heads=4, n_layers=2, matmul=XLA_PRODUCT)
  kw["d_ff"] = kw["d_ff"] * d_model // 128
  kw.update(overrides)
  return tiny_model_config(vocab_size=vocab, d_model=d_model, max_seq_len=seq, **kw)


def _loss(params, model, tokens_BT):
  logits = model.apply({"params": params}, tokens_BT[:, :-1])
  return optax.softmax_cross_entropy_with_integer_labels(logits, tokens_BT[:, 1:]).mean()


def _abstract(cfg, seq=SEQ):
  model = Transformer(cfg)
  params = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))["params"]
  return model, params, jax.ShapeDtypeStruct((BATCH, seq + 1), jnp.int32)


def _train_step(model):
  return jax.value_and_grad(lambda p, t: _loss(p, model, t))


def _xla_flops(cfg, seq=SEQ):
  model, params, tokens = _abstract(cfg, seq)
  return jax.jit(_train_step(model)).lower(params, tokens).compile().cost_analysis()["flops"]


def _jaxpr_dot_flops(jaxpr) -> int:
  """2 * prod(output) * prod(contracted) over every dot_general, into sub-jaxprs (x scan length),
  but a 1-D lhs: lm.ops.add_rows and scale_rows sum a cotangent over its rows as ones[T] @ g[T, N], the
  reduction jax's own rule does as a reduce_sum, which the analytic count leaves out too."""
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general" and eqn.invars[0].aval.ndim > 1:
      (contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[i] for i in contract)
    times = eqn.params["length"] if eqn.primitive.name == "scan" else 1
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          total += times * _jaxpr_dot_flops(sub.jaxpr)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          total += times * _jaxpr_dot_flops(sub)
  return total


def _matmul_part(cfg, seq=SEQ):
  """Analytic training matmul FLOPs of one step: flops_exact less the embedding (a gather)
  and the softmax (elementwise)."""
  b = flops.forward_flops_breakdown(cfg, seq)
  return 3 * (sum(b.values()) - b["embed"] - b["softmax"]) * BATCH * seq


# ---- parameters ----

@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("scan_layers", [False, True])
def test_parameter_counts_match_the_parameter_pytree(family, scan_layers):
  cfg = _config(family, scan_layers=scan_layers)
  _, params, _ = _abstract(cfg)
  assert flops.params_total(cfg) == flops.count_params(params)
  embedding = params["embedding"].size + (params["pos_embedding"].size if "pos_embedding" in params else 0)
  assert flops.params_embedding(cfg) == embedding
  assert flops.params_nonembedding(cfg) == flops.count_params(params) - embedding
  assert ("head" in params) == (not cfg.tie_embeddings)


def test_flops_6n_is_six_per_nonembedding_parameter():
  cfg = _config("llama")
  assert flops.flops_6n(cfg) == 6 * flops.params_nonembedding(cfg)
  assert flops.flops_per_token(cfg, SEQ, "flops_6n") == flops.flops_6n(cfg)
  assert flops.flops_per_token(cfg, SEQ, "flops_exact") == flops.flops_exact(cfg, SEQ)
  with pytest.raises(ValueError, match="flops_6n"):
    flops.flops_per_token(cfg, SEQ, "6nd")


def test_flops_exact_approaches_6n_plus_attention_for_a_wide_model():
  """Appendix F's own check, on a Llama-2-7B-like shape at S=4096: the weight matmuls are
  exactly 6 x the weight-matrix parameters (all non-embedding parameters but the norms),
  and attention adds 6 * 2 S D L per token on top: 2 S D L / N = 2*4096*4096*32/6.6e9
  = 16% more than 6N."""
  cfg = tiny_model_config(vocab_size=32000, d_model=4096, n_heads=32, n_kv_heads=32, n_layers=32, d_ff=11008,
                          max_seq_len=4096, tie_embeddings=False)
  b = flops.forward_flops_breakdown(cfg, 4096)
  weights = 3 * (b["qkv"] + b["out"] + b["mlp"] + b["head"])
  norms = (2 * cfg.n_layers + 1) * cfg.d_model
  assert weights == 6 * (flops.params_nonembedding(cfg) - norms)
  attention = 3 * (b["logits"] + b["values"] + b["softmax"])
  s, d, n = 4096, cfg.d_model, cfg.n_layers
  assert attention == 3 * n * (4 * s * d + 3 * cfg.n_heads * s)
  assert attention / weights == pytest.approx(2 * s * d * n / (weights / 6), rel=0.01)  # softmax: 0.6%
  assert 0.15 < attention / weights < 0.17


# ---- FLOPs: the jaxpr's matmuls exactly, XLA's count within a stated surplus ----

@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("variant", [{}, {"scan_layers": True}, {"attention": "reference"},
                                     {"remat": "full"}, {"remat": "dots", "scan_layers": True}])
def test_matmuls_in_the_jaxpr_equal_the_analytic_count(family, variant):
  cfg = _config(family, **variant)
  model, params, tokens = _abstract(cfg)
  jaxpr = jax.make_jaxpr(_train_step(model))(params, tokens).jaxpr
  recompute = flops.flops_recomputed(cfg, SEQ) * BATCH * SEQ
  if cfg.remat != "none":  # the recomputed forward adds its softmax to the analytic count, not to the dots
    recompute -= cfg.n_layers * 3 * cfg.n_heads * SEQ * BATCH * SEQ
  assert (cfg.remat == "none") == (recompute == 0)
  assert _jaxpr_dot_flops(jaxpr) == _matmul_part(cfg) + recompute
  # flops_executed is exactly those matmuls (remat's recompute aside) plus Appendix F's softmax.
  softmax = 3 * flops.forward_flops_breakdown(cfg, SEQ)["softmax"] * BATCH * SEQ
  assert flops.flops_executed(cfg, SEQ) * BATCH * SEQ == _matmul_part(cfg) + softmax


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:GPU counts cuBLAS GEMMs as 0 FLOPs (module docstring)")
@pytest.mark.parametrize("family,d_model", [("gpt2", 128), ("llama", 128), ("llama_mqa_tied", 128), ("gpt2", 64)])
def test_xla_cost_analysis_is_the_matmuls_plus_an_elementwise_surplus_below_c_over_d(family, d_model):
  cfg = _config(family, d_model=d_model)
  xla = _xla_flops(cfg)
  matmuls = _matmul_part(cfg)
  surplus = xla / matmuls - 1
  assert 0 < surplus < SURPLUS_PER_WIDTH[family] / d_model, surplus
  # flops_executed (the matmuls plus 3 FLOPs a logit for the softmax) sits just below XLA;
  # flops_exact is far above it: XLA does not count the embedding's 6VD, a gather.
  executed = flops.flops_executed(cfg, SEQ) * BATCH * SEQ
  assert 0 < xla / executed - 1 < SURPLUS_PER_WIDTH[family] / d_model
  exact = flops.flops_exact(cfg, SEQ) * BATCH * SEQ
  embed = 3 * flops.forward_flops_breakdown(cfg, SEQ)["embed"] * BATCH * SEQ
  assert exact - embed == pytest.approx(executed) and xla < exact


# The CPU ladder's shapes, with the sweep's byte vocabulary (V = 259, batch 4: the CPU
# IsoFLOP sweep, where the embedding is 4-17% of flops_exact) and the ladder's own
# SentencePiece (V = 4096, batch 16, where it is 13-39%). XLA's surplus over
# flops_executed on the compiled train step (AdamW included) measured 1.35/D to 2.5/D
# here (d_model 16 to 224); the bound has 40% headroom.
TRAIN_STEP_SURPLUS_PER_WIDTH = 3.5


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:GPU counts cuBLAS GEMMs as 0 FLOPs (module docstring)")
@pytest.mark.parametrize("d_model,vocab,batch", [(16, 259, 4), (80, 259, 4), (32, 4096, 16), (224, 4096, 16)])
def test_executed_flops_match_xla_on_the_compiled_train_step_of_cpu_ladder_shapes(d_model, vocab, batch):
  cfg = dataclasses.replace(ladder.model_config(d_model, vocab, 128), matmul=XLA_PRODUCT)
  model, params, _ = _abstract(cfg)
  optimizer = optax.adamw(1e-3)
  state = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": params,
           "opt_state": jax.eval_shape(optimizer.init, params)}
  batch_spec = {k: jax.ShapeDtypeStruct((batch, 128), jnp.int32) for k in steps.TRAIN_KEYS}
  step = jax.jit(steps.make_train_step(model, optimizer, lambda s: 1e-3))
  xla = step.lower(state, batch_spec).compile().cost_analysis()["flops"] / (batch * 128)
  executed = flops.flops_executed(cfg, 128)
  assert 0 < xla / executed - 1 < TRAIN_STEP_SURPLUS_PER_WIDTH / d_model, xla / executed


def test_flops_from_a_results_row_equal_the_model_configs_and_missing_shape_columns_are_named():
  cfg = _config("llama", d_model=64)
  row = {"n_layers": cfg.n_layers, "d_model": 64, "n_heads": cfg.n_heads, "n_kv_heads": cfg.n_kv_heads,
         "d_ff": cfg.d_ff, "vocab_size": VOCAB, "seq_len": SEQ, "tokens": 1000.0, "tie_embeddings": False}
  for definition in flops.FLOPS_DEFINITIONS:
    assert flops.flops_per_token_from_row(row, definition) == flops.flops_per_token(cfg, SEQ, definition)
  table = pd.DataFrame([row, {**row, "tokens": 3000.0, "head_dim": 8, "mlp": "gelu"}])
  gelu = dataclasses.replace(cfg, head_dim=8, mlp="gelu")  # an untied head changes flops_6n only
  assert list(flops.flops_executed_column(table)) == [flops.flops_executed(cfg, SEQ) * 1000,
                                                      flops.flops_executed(gelu, SEQ) * 3000]
  with pytest.raises(ValueError, match=r"\['d_ff', 'vocab_size'\]"):
    flops.flops_per_token_from_row({k: v for k, v in row.items() if k not in ("d_ff", "vocab_size")})


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:GPU counts cuBLAS GEMMs as 0 FLOPs (module docstring)")
def test_xla_counts_a_scanned_layer_once():
  """Under scan_layers, cost_analysis holds the loop body once: use the analytic count
  (or an unrolled model) for MFU, never cost_analysis of a scanned step."""
  cfg = _config("llama", d_model=64, n_layers=3)
  unrolled = _xla_flops(cfg)
  per_layer = (unrolled - _xla_flops(dataclasses.replace(cfg, n_layers=1))) / 2
  scanned = _xla_flops(dataclasses.replace(cfg, scan_layers=True))
  assert scanned == pytest.approx(unrolled - 2 * per_layer, rel=0.01)
  assert scanned < unrolled * 0.6


# ---- memory ----

def _saved_residual_bytes(cfg, seq=SEQ):
  """Bytes of the per-token residuals autodiff keeps (parameters and their casts excluded)."""
  model, params, tokens = _abstract(cfg, seq)
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    print_saved_residuals(lambda p, t: _loss(p, model, t), params, tokens)
  total = 0
  for line in out.getvalue().splitlines():
    m = re.match(r"(\w+)\[([\d,]*)\] (.*)", line)
    if not m or "from the argument" in m.group(3):
      continue
    shape = [int(x) for x in m.group(2).split(",") if x]
    if BATCH not in shape[:2] or math.prod(shape) % (BATCH * seq):  # weight casts, per-sequence terms
      continue
    total += math.prod(shape) * {"f32": 4, "bf16": 2, "i32": 4, "bool": 1}[m.group(1)]
  return total


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("variant", [{}, {"dtype": "bfloat16"}, {"remat": "full"}, {"remat": "dots"}])
def test_activation_estimate_matches_the_residuals_autodiff_saves(family, variant):
  cfg = _config(family, **variant)
  est = flops.activation_bytes_per_token(cfg, SEQ)
  saved = _saved_residual_bytes(cfg) / (BATCH * SEQ)
  # Within 1%: what is left is per-sequence terms (positions, the loss's scalars).
  assert (est["layers"] + est["outside"]) == pytest.approx(saved, rel=0.01)
  if cfg.remat != "none":
    full = flops.activation_bytes_per_token(dataclasses.replace(cfg, remat="none"), SEQ)
    assert est["transient"] == full["layers"] / cfg.n_layers


def test_train_memory_adds_up_and_remat_trades_activations():
  cfg = _config("llama", seq=256)
  mem = flops.train_memory(cfg, 256, batch_size=8)
  n = flops.params_total(cfg)
  assert (mem.params, mem.grads, mem.optimizer, mem.weight_casts) == (4 * n, 4 * n, 8 * n, 0)
  assert mem.total == pytest.approx(16 * n + mem.activations)
  remat = flops.train_memory(dataclasses.replace(cfg, remat="full"), 256, batch_size=8)
  assert remat.activations < mem.activations / 1.5
  bf16 = flops.train_memory(dataclasses.replace(cfg, dtype=jnp.bfloat16), 256, batch_size=8)
  assert bf16.weight_casts == 2 * n and bf16.activations < mem.activations
  assert "GiB" in str(mem)


# ---- device peak and MFU ----

@pytest.mark.parametrize("kind,name", [
    ("TPU v4", "tpu-v4"), ("TPU v5 lite", "tpu-v5e"), ("TPU v5p", "tpu-v5p"), ("TPU v5", "tpu-v5p"),
    ("TPU v6 lite", "tpu-v6e"), ("NVIDIA A100-SXM4-80GB", "a100"), ("NVIDIA H100 80GB HBM3", "h100"),
    ("NVIDIA H100 PCIe", "h100-pcie"), ("NVIDIA H200", "h200"), ("NVIDIA B200", "b200"), ("cpu", None)])
def test_device_kinds_map_to_spec_sheet_entries(kind, name):
  assert flops.device_name(kind) == name
  spec = flops.spec_peak_flops(kind, "bfloat16")
  assert (spec is None) == (name is None)
  if name:
    assert 1e14 < spec < 1e16
    assert flops.spec_peak_flops(kind, jnp.float32) <= spec


def test_peak_flops_is_measured_once_then_cached(tmp_path, monkeypatch):
  cache = tmp_path / "lm" / "peak.json"
  calls = []
  real = flops.measure_peak_flops

  def counting(dtype, n, device):
    calls.append(dtype)
    return real(dtype, n, device, iters=5, trials=1)

  monkeypatch.setattr(flops, "measure_peak_flops", counting)
  measured, spec = flops.peak_flops("float32", cache_file=str(cache), n=256)
  assert measured > 1e8 and spec is None  # any CPU does 0.1 GFLOP/s; CPUs have no spec entry
  again, _ = flops.peak_flops(np.float32, cache_file=str(cache), n=256)
  assert again == measured and calls == ["float32"]
  flops.peak_flops("bfloat16", cache_file=str(cache), n=256)
  assert calls == ["float32", "bfloat16"]
  entries = json.loads(cache.read_text())
  assert len(entries) == 2 and all(k.startswith("cpu: ") for k in entries)
  flops.peak_flops("float32", cache_file=str(cache), n=256, refresh=True)
  assert len(calls) == 3


def test_a_cpu_float32_peak_times_openblas_too_and_a_cached_xla_only_peak_is_measured_again(tmp_path, monkeypatch):
  """MFU divides by the best product lm has (lm/cpu_gemm.py); an entry cached before the
  kernel existed (no 'product') would be the slower XLA product's, so it is measured again."""
  from lm import cpu_gemm
  if not cpu_gemm.available():
    pytest.skip("lm/cpu_gemm.py's kernel is unavailable here")
  assert flops.peak_product("float32") == "xla+openblas" and flops.peak_product("bfloat16") == "xla"
  timed = []
  real_gemm = cpu_gemm.gemm
  monkeypatch.setattr(cpu_gemm, "gemm", lambda a, b: timed.append(a.shape) or real_gemm(a, b))
  flops.measure_peak_flops("float32", 128, iters=1, trials=1)
  assert timed  # the kernel was among the products timed
  cache = tmp_path / "peak.json"
  key = flops.peak_key("float32")
  cache.write_text(json.dumps({key: {"flops_per_s": 1.0, "n": 256}}))
  measured, _ = flops.peak_flops("float32", cache_file=str(cache), n=128)
  assert measured > 1e8 and json.loads(cache.read_text())[key]["product"] == "xla+openblas"


def test_a_runs_peak_is_measured_now_with_its_load_and_its_share_of_the_cores(tmp_path, monkeypatch):
  """A point pinned to 1 of the host's 2 cores: measured on that core, under the load it had; the
  cached whole-host figure x 1/2 is recorded beside it, and the cache is never written."""
  monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {1})
  monkeypatch.setattr(os, "cpu_count", lambda: 2)
  monkeypatch.setattr(os, "getloadavg", lambda: (3.25, 2.0, 1.0))
  assert flops.core_share() == (1, 2)
  cache = tmp_path / "peak.json"
  host_key = f"{flops.device_key(cores=2)} | float32"
  cache.write_text(json.dumps({host_key: {"flops_per_s": 90e9}}))
  before = cache.read_text()
  peak = flops.measure_run_peak("float32", cache_file=str(cache))
  assert host_key.endswith("x2 | float32") and flops.device_key().endswith("x1")
  assert peak.flops_per_s > 1e8 and peak.load_avg == 3.25 and (peak.cores, peak.host_cores) == (1, 2)
  assert peak.share == 0.5 and peak.cached_share == 45e9  # 90 GFLOP/s x 1/2
  assert cache.read_text() == before
  assert flops.measure_run_peak("float32", cache_file=str(tmp_path / "none.json")).cached_share is None


def test_mfu_and_peak_units():
  # 1 GFLOP/token at 1000 tokens/s on 4 devices of 1 TFLOP/s: 1e12 / 4e12.
  assert flops.mfu(1e9, 1e3, 1e12, 4) == pytest.approx(0.25)
  assert flops.peak_units(jax.devices()) == 1  # 8 simulated CPU devices share one host
