"""Parameter, FLOP and memory accounting, device peak and MFU (docs/conventions.md, Parameters and FLOPs).

Counts are closed-form functions of a ModelConfig, checked in tests against the real
parameter pytree, the matmuls in the jaxpr of the train step, XLA's cost analysis of the
compiled step and the residuals autodiff saves.

Symbols: L layers, D d_model, H heads, G kv heads, K head dim, F d_ff, V vocab,
S sequence length. A multiply-add counts as 2 FLOPs.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from lm import cpu_gemm
from lm.cache import cache_root
from lm.model import ModelConfig


@dataclasses.dataclass(frozen=True)
class ParamCounts:
  total: int
  embedding: int      # token embedding + learned position table
  nonembedding: int   # total - embedding (an untied output head counts here)


def layer_params(cfg) -> int:
  """One Transformer block: attention, MLP, two norms."""
  d, h, g, k, f = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff
  attn = d * h * k + 2 * d * g * k + h * k * d          # q, k, v, o
  mlp = (3 if cfg.mlp == "swiglu" else 2) * d * f       # (gate, up,) down
  if cfg.use_bias:
    attn += h * k + 2 * g * k + d
    mlp += (2 * f if cfg.mlp == "swiglu" else f) + d
  return attn + mlp + 2 * norm_params(cfg)


def norm_params(cfg) -> int:
  return cfg.d_model * (2 if cfg.norm == "layernorm" and cfg.use_bias else 1)


def param_counts(cfg) -> ParamCounts:
  embedding = cfg.vocab_size * cfg.d_model
  if cfg.positions == "learned":
    embedding += cfg.max_seq_len * cfg.d_model
  head = 0 if cfg.tie_embeddings else cfg.d_model * cfg.vocab_size
  nonembedding = cfg.n_layers * layer_params(cfg) + norm_params(cfg) + head
  return ParamCounts(total=embedding + nonembedding, embedding=embedding, nonembedding=nonembedding)


def params_total(cfg) -> int:
  return param_counts(cfg).total


def params_embedding(cfg) -> int:
  return param_counts(cfg).embedding


def params_nonembedding(cfg) -> int:
  return param_counts(cfg).nonembedding


def count_params(params) -> int:
  """Parameters in a pytree of arrays (or ShapeDtypeStructs)."""
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


# ---- FLOPs ----

def flops_6n(cfg) -> float:
  """Kaplan et al. (2020): 6 FLOPs per non-embedding parameter per training token."""
  return 6.0 * param_counts(cfg).nonembedding


def forward_flops_breakdown(cfg, seq_len: int) -> dict[str, float]:
  """Forward FLOPs per token by term, Hoffmann et al. (2022) Appendix F.

  Generalised to GQA (k and v project to G heads, not H) and gated MLPs (three D x F
  matmuls, not two). As in the paper: the attention logits are counted over the full
  S^2 with no causal discount, the softmax as 3 FLOPs per logit, the embedding as a
  matmul with a one-hot (XLA does a gather and counts 0), and norms, biases, activations
  and residual adds not at all.
  """
  d, h, g, k, f, v, s = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff, cfg.vocab_size, seq_len
  n = cfg.n_layers
  return {
      "embed": 2 * v * d,
      "qkv": n * 2 * d * (h + 2 * g) * k,   # 2 * 3 * d * (k * h) for multi-head
      "logits": n * 2 * s * k * h,          # Q K^T: one query row against S keys
      "softmax": n * 3 * h * s,
      "values": n * 2 * s * k * h,          # softmax @ V
      "out": n * 2 * h * k * d,
      "mlp": n * 2 * d * f * (3 if cfg.mlp == "swiglu" else 2),
      "head": 2 * d * v,
  }


def forward_flops_per_token(cfg, seq_len: int) -> float:
  """Hoffmann et al. (2022), Appendix F, per token: the sum of forward_flops_breakdown."""
  return float(sum(forward_flops_breakdown(cfg, seq_len).values()))


def flops_exact(cfg, seq_len: int) -> float:
  """Training FLOPs per token: forward + backward (2x forward), Hoffmann et al. Appendix F
  as printed, the embedding's 2VD included. Kept for comparison with papers; lm runs the
  embedding as a gather, so this counts work that never runs (39% of p50k's count, 22% of
  configs/default.py's). Use flops_executed for sweeps, fits, plans and MFU.
  """
  return 3.0 * forward_flops_per_token(cfg, seq_len)


def flops_executed(cfg, seq_len: int) -> float:
  """Training FLOPs per token that run: 3x the forward's matmuls, without the embedding.

  The embedding lookup is a gather (0 FLOPs); the output logits (the head's 2DV, tied or
  not) are in, as are the attention logits and weighted values over the full S^2 (the
  reference and XLA attention compute every masked logit) and the softmax at Appendix
  F's 3 FLOPs per logit. Norms, activations, residual adds and the loss are not counted:
  XLA's cost analysis of the compiled train step is this plus that elementwise surplus,
  below 2.5 / d_model of it for the ladder's Llama shapes (tests/test_flops.py).

  Model FLOPs: the same model is the same point on the compute axis however it is
  rematerialised, so remat's recompute is not here (flops_recomputed; their sum is what
  hardware utilisation divides by).
  """
  b = forward_flops_breakdown(cfg, seq_len)
  return 3.0 * (sum(b.values()) - b["embed"])


def flops_recomputed(cfg, seq_len: int) -> float:
  """Forward FLOPs per token that remat runs a second time in the backward pass.

  'full' remat reruns each block's forward except the MLP down-projection, whose output
  the backward never needs; 'dots' keeps the outputs of the weight matmuls (lm.ops.dense)
  and reruns only the attention core (logits, softmax, weighted values).
  """
  if cfg.remat == "none":
    return 0.0
  b = forward_flops_breakdown(cfg, seq_len)
  if cfg.remat == "dots":
    return float(sum(b[t] for t in ("logits", "softmax", "values")))
  down_proj = cfg.n_layers * 2 * cfg.d_model * cfg.d_ff
  return float(sum(b[t] for t in ("qkv", "logits", "softmax", "values", "out", "mlp")) - down_proj)


# The results-table names of the FLOP definitions (docs/conventions.md, Parameters and FLOPs), the executed count first.
FLOPS_DEFINITIONS = ("flops_executed", "flops_exact", "flops_6n")


def flops_per_token(cfg, seq_len: int, definition: str = "flops_executed") -> float:
  """Training FLOPs per token by a definition's results-table name (FLOPS_DEFINITIONS)."""
  if definition == "flops_6n":
    return flops_6n(cfg)
  if definition == "flops_exact":
    return flops_exact(cfg, seq_len)
  if definition == "flops_executed":
    return flops_executed(cfg, seq_len)
  raise ValueError(f"unknown FLOP definition {definition!r}; use one of {FLOPS_DEFINITIONS}.")


# Columns of a results table (docs/conventions.md, Results schema, plus what summary.json adds) that the
# FLOP counts need, and the defaults older tables may lack: lm's Llama-style layers.
SHAPE_COLUMNS = ("n_layers", "d_model", "n_heads", "n_kv_heads", "d_ff", "vocab_size", "seq_len")
SHAPE_DEFAULTS = {"mlp": "swiglu", "tie_embeddings": True}


def model_config_from_row(row) -> ModelConfig:
  """A ModelConfig with the shape a results-table row records (a dict or pandas row).

  head_dim defaults to d_model / n_heads, mlp to 'swiglu' and tie_embeddings to True
  (lm's defaults, and every ladder rung below d_model 4096); anything else the counts need
  must be there, or ValueError names it. Only what the FLOP counts read matters: norms,
  positions and biases are not counted (an untied head moves flops_6n, not the others).
  """
  get = row.get if hasattr(row, "get") else (lambda k, default=None: row[k] if k in row else default)
  missing = [c for c in SHAPE_COLUMNS if get(c) is None or get(c) != get(c)]  # None or NaN
  if missing:
    raise ValueError(f"a results row without {missing} cannot give its FLOPs; those columns come from summary.json "
                     "(lm/metrics.py) and experiments.collect: re-collect the runs, or add them by hand.")
  d, h = int(get("d_model")), int(get("n_heads"))
  head = get("head_dim")
  head = int(head) if head is not None and head == head else d // h
  mlp = get("mlp") if isinstance(get("mlp"), str) else SHAPE_DEFAULTS["mlp"]
  tie = get("tie_embeddings")
  tie = SHAPE_DEFAULTS["tie_embeddings"] if tie is None or tie != tie else bool(tie)
  return ModelConfig(vocab_size=int(get("vocab_size")), n_layers=int(get("n_layers")), d_model=d, n_heads=h,
                     n_kv_heads=int(get("n_kv_heads")), head_dim=head, d_ff=int(get("d_ff")),
                     max_seq_len=int(get("seq_len")), mlp=mlp, tie_embeddings=tie)


def flops_per_token_from_row(row, definition: str = "flops_executed") -> float:
  """Training FLOPs per token of the run a results-table row describes (model_config_from_row)."""
  return flops_per_token(model_config_from_row(row), int(row["seq_len"]), definition)


def flops_executed_column(table) -> np.ndarray:
  """flops_executed (total training FLOPs) for every row of a results table: the per-token
  count from the shape columns times `tokens`. For tables made before the column existed."""
  return np.array([flops_per_token_from_row(r) * float(r["tokens"]) for _, r in table.iterrows()])


# ---- memory ----

def _itemsize(dtype) -> int:
  return jnp.dtype(dtype).itemsize


def activation_bytes_per_token(cfg, seq_len: int) -> dict[str, float]:
  """Bytes per token that the forward pass keeps for the backward pass, by part.

  Models what autodiff of this implementation saves (checked against
  jax.ad_checkpoint.print_saved_residuals in tests), with c = compute-dtype bytes:
    per layer, no remat: two norms, each (3D + 2) f32 (input, x^2, normalised x,
      rsqrt terms; norms run in f32) + D c (the output); q, k, v and the attention
      output (2H + 2G) K c; RoPE's cos/sin 2K f32; per attention logit (H S of them)
      9 + c bytes (mask 1, masked logits and exp f32, probabilities c) + 8H for the
      row sums, or only 4H (log-sum-exp) for cuDNN flash attention; MLP 6F c (GELU-tanh
      and SwiGLU both keep six F-wide tensors);
    remat 'full': only the block input D c per layer is kept, and one layer's full set
      is live while that layer's backward runs ('transient'); 'dots' also keeps the
      weight matmuls' outputs that the backward reads: q, k, v (H + 2G) K c, the MLP's
      input projection (2F for SwiGLU, F for GELU) c and one D-wide projection D c;
    outside the layers: the final norm and exp(logits) for the loss, V f32.
  The S^2 term dominates long sequences: S=4096, H=32 is 1.7 MB per token per layer.
  On an H200 with jax 0.11.2 the same count was within 1% for Llama shapes (xla and cuDNN
  attention) and 7% high for GPT-2 shapes (that jax keeps one F-wide GELU tensor fewer).
  """
  d, h, g, k, f, v, s = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff, cfg.vocab_size, seq_len
  c = _itemsize(cfg.dtype)
  norms = 2 * ((3 * d + 2) * 4 + d * c)
  attn = (2 * h + 2 * g) * k * c + (2 * k * 4 if cfg.positions == "rope" else 0)
  attn += 4 * h if cfg.attention == "cudnn" else (9 + c) * h * s + 8 * h
  layer = norms + attn + 6 * f * c
  outside = (3 * d + 2) * 4 + d * c + v * 4 + 16  # final norm, exp(logits), labels and small terms
  if cfg.remat == "none":
    return {"layers": cfg.n_layers * layer, "transient": 0.0, "outside": outside}
  kept = d * c
  if cfg.remat == "dots":
    kept += ((h + 2 * g) * k + (2 * f if cfg.mlp == "swiglu" else f) + d) * c
  return {"layers": cfg.n_layers * kept, "transient": layer, "outside": outside}


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
  """Bytes for one training step over all devices; divide by the shards for one device."""
  params: float
  grads: float
  optimizer: float
  activations: float
  weight_casts: float = 0.0  # compute-dtype copies of the weights (bf16 compute, f32 params)

  @property
  def total(self) -> float:
    return self.params + self.grads + self.optimizer + self.activations + self.weight_casts

  def __str__(self):
    gib = lambda x: f"{x / 2**30:.3g} GiB"
    return (f"params {gib(self.params)}, grads {gib(self.grads)}, optimizer {gib(self.optimizer)}, "
            f"activations {gib(self.activations)}, weight casts {gib(self.weight_casts)}, total {gib(self.total)}")


def train_memory(cfg, seq_len: int, batch_size: int, optimizer_states: int = 2,
                 optimizer_dtype="float32") -> MemoryEstimate:
  """Parameters, gradients, optimizer state (AdamW: 2 moments) and activations.

  Activations scale with the tokens in flight (batch_size * seq_len, per micro-batch
  under gradient accumulation); the rest with the parameter count. XLA's temporaries
  (fusion buffers, collectives) come on top.
  """
  n = params_total(cfg)
  p, c = _itemsize(cfg.param_dtype), _itemsize(cfg.dtype)
  act = activation_bytes_per_token(cfg, seq_len)
  return MemoryEstimate(
      params=n * p, grads=n * p, optimizer=optimizer_states * n * _itemsize(optimizer_dtype),
      activations=batch_size * seq_len * sum(act.values()),
      weight_casts=n * c if cfg.dtype != cfg.param_dtype else 0.0)


# ---- device peak and MFU ----

# Dense (no 2:4 sparsity) peak FLOP/s per chip from the vendors' spec sheets. float32 is
# what jax's default matmul precision runs: one bfloat16 pass on TPU, TF32 tensor cores
# on A100 and later NVIDIA GPUs (docs.jax.dev, "Matmul precision"). On an H200 (jax
# 0.11.2) measure_peak_flops gave 810 TFLOP/s in bf16 (82% of 989) and 396 in f32 (80% of
# the TF32 495), so f32 there does run as TF32.
SPEC_PEAK_FLOPS = {
    "tpu-v4": {"bfloat16": 275e12, "float32": 275e12},
    "tpu-v5e": {"bfloat16": 197e12, "float32": 197e12},
    "tpu-v5p": {"bfloat16": 459e12, "float32": 459e12},
    "tpu-v6e": {"bfloat16": 918e12, "float32": 918e12},
    "a100": {"bfloat16": 312e12, "float16": 312e12, "float32": 156e12},
    "h100": {"bfloat16": 989e12, "float16": 989e12, "float32": 495e12},         # SXM
    "h100-pcie": {"bfloat16": 756e12, "float16": 756e12, "float32": 378e12},
    "h200": {"bfloat16": 989e12, "float16": 989e12, "float32": 495e12},
    "b200": {"bfloat16": 2250e12, "float16": 2250e12, "float32": 1100e12},      # HGX, 1000 W
}

# jax device_kind strings (lower-cased substrings, first match wins) -> SPEC_PEAK_FLOPS key.
_KIND_PATTERNS = (
    ("v5 lite", "tpu-v5e"), ("v5e", "tpu-v5e"), ("v5p", "tpu-v5p"), ("tpu v5", "tpu-v5p"),
    ("v6 lite", "tpu-v6e"), ("v6e", "tpu-v6e"), ("tpu v4", "tpu-v4"),
    ("h100 pcie", "h100-pcie"), ("h100", "h100"), ("h200", "h200"), ("b200", "b200"), ("a100", "a100"),
)


def device_name(device_kind: str) -> str | None:
  """'NVIDIA H100 80GB HBM3' -> 'h100', 'TPU v5 lite' -> 'tpu-v5e'; None when unknown."""
  kind = device_kind.lower()
  if kind in SPEC_PEAK_FLOPS:
    return kind
  return next((name for pattern, name in _KIND_PATTERNS if pattern in kind), None)


# Memory bandwidth per chip from the same spec sheets, bytes/s (what decoding at small batch is bound by).
SPEC_MEMORY_BANDWIDTH = {
    "tpu-v4": 1.2e12, "tpu-v5e": 0.819e12, "tpu-v5p": 2.765e12, "tpu-v6e": 1.64e12,
    "a100": 2.039e12, "h100": 3.35e12, "h100-pcie": 2.0e12, "h200": 4.8e12, "b200": 8.0e12,
}


def spec_memory_bandwidth(device_kind: str) -> float | None:
  """The spec-sheet memory bandwidth of one chip in bytes/s, or None for an unknown kind (CPUs)."""
  name = device_name(device_kind)
  return SPEC_MEMORY_BANDWIDTH.get(name) if name else None


def spec_peak_flops(device_kind: str, dtype="bfloat16") -> float | None:
  """The spec-sheet peak of one chip, or None for an unknown kind or dtype (e.g. CPUs)."""
  name = device_name(device_kind)
  return SPEC_PEAK_FLOPS.get(name, {}).get(jnp.dtype(dtype).name) if name else None


def _default_device():
  return jax.devices()[0]


def device_key(device=None, cores: int | None = None) -> str:
  """What a measured peak is cached under: the device kind, and for CPUs the model and the
  cores this process may run on (its affinity mask; `cores` to name another count), so a
  process pinned to a share of the host (a sweep's --parallel points) measures, caches and
  computes its MFU against that share."""
  device = device or _default_device()
  if device.platform != "cpu":
    return device.device_kind
  model = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      model = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
  except (OSError, StopIteration):
    pass
  return f"cpu: {model} x{cores or core_share()[0]}"


def core_share() -> tuple[int, int]:
  """(the cores this process may run on, the host's cores): a sweep point pinned to 1 of 2
  cores has the share 1/2 of the host."""
  host = os.cpu_count() or 1
  return (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else host), host


def default_matmul_size(device) -> int:
  return 2048 if device.platform == "cpu" else 8192


def measure_peak_flops(dtype="float32", n: int | None = None, device=None, iters: int | None = None,
                       trials: int = 3) -> float:
  """FLOP/s of an n x n x n matmul in `dtype` on one device: the best of `trials` timings.

  Each trial queues `iters` matmuls and waits once, so dispatch overlaps compute. n
  defaults to 2048 on CPU (2 * 2048^3 = 17 GFLOP, ~0.1-0.2 s at 100-200 GFLOP/s; 4096
  gave no higher figure on a 2-core host and took 8x as long) and 8192 on accelerators
  (1.1 TFLOP, ~1.4 ms at 800 TFLOP/s).

  On a CPU in float32 where lm/cpu_gemm.py's OpenBLAS kernel runs (model.matmul='blas'),
  it is the faster of XLA's product and that kernel's: the best product lm has here (on the
  2-core AVX2 EPYC of 2026-12-03, XLA's 4096^3 ran 92 GFLOP/s and OpenBLAS's 175), so an MFU
  never divides by a peak below what lm's own products reach.
  """
  device = device or _default_device()
  n = n or default_matmul_size(device)
  iters = iters or (2 if device.platform == "cpu" else 20)
  a = jax.device_put(jax.random.normal(jax.random.key(0), (n, n), dtype), device)
  b = jax.device_put(jax.random.normal(jax.random.key(1), (n, n), dtype), device)
  products = [jax.jit(jnp.matmul)]
  if peak_product(dtype, device) == "xla+openblas":
    products.append(jax.jit(cpu_gemm.gemm))
  best = float("inf")
  for matmul in products:
    matmul(a, b).block_until_ready()  # compile and warm up
    for _ in range(trials):
      start = time.perf_counter()
      outs = [matmul(a, b) for _ in range(iters)]
      jax.block_until_ready(outs)
      best = min(best, (time.perf_counter() - start) / iters)
  return 2.0 * n ** 3 / best


def peak_product(dtype="float32", device=None) -> str:
  """Which products measure_peak_flops times: 'xla', or 'xla+openblas' (CPU, float32, where
  lm/cpu_gemm.py's kernel is available). Cached peaks remember it."""
  device = device or _default_device()
  if device.platform == "cpu" and jnp.dtype(dtype) == jnp.float32 and cpu_gemm.available():
    return "xla+openblas"
  return "xla"


def default_cache_file() -> str:
  """~/.cache/lm/peak_flops.json, or $XDG_CACHE_HOME/lm/peak_flops.json."""
  return os.path.join(cache_root(), "peak_flops.json")


def peak_flops(dtype="float32", device=None, *, cache_file: str | None = None, refresh: bool = False,
               n: int | None = None) -> tuple[float, float | None]:
  """(measured, spec-sheet or None) peak FLOP/s of one device in `dtype`.

  The measurement runs once per device kind and dtype and is cached in a JSON file
  (default_cache_file()); `refresh` measures again. On CPU every simulated device shares
  the host's cores, so the measured figure is the host's, not one device's.
  """
  device = device or _default_device()
  dtype = jnp.dtype(dtype).name
  path = cache_file or default_cache_file()
  key = f"{device_key(device)} | {dtype}"
  cache = {}
  if os.path.exists(path):
    with open(path) as f:
      cache = json.load(f)
  product = peak_product(dtype, device)
  if refresh or key not in cache or cache[key].get("product", "xla") != product:
    n = n or default_matmul_size(device)
    cache[key] = {"flops_per_s": measure_peak_flops(dtype, n, device), "n": n, "product": product,
                  "jax": jax.__version__, "measured": datetime.datetime.now().isoformat(timespec="seconds")}
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
      json.dump(cache, f, indent=1, sort_keys=True)
    os.replace(tmp, path)  # atomic: a concurrent reader sees the old file or the new one
  return cache[key]["flops_per_s"], spec_peak_flops(device.device_kind, dtype)


@dataclasses.dataclass(frozen=True)
class RunPeak:
  """The peak a run's MFU divides by, measured as it starts (measure_run_peak), and what it
  was measured under."""
  flops_per_s: float               # one device (on CPU: the cores this process may use)
  load_avg: float | None           # the host's 1-minute load average just before the matmuls
  cores: int                       # the cores this process may run on (its affinity mask)
  host_cores: int
  seconds: float                   # what measuring took
  cached_host: float | None = None  # the cached figure for the whole host (peak_flops), if any
  key: str = ""                    # peak_key(): what it was measured on; a resume elsewhere measures again

  @property
  def share(self) -> float:
    return self.cores / self.host_cores

  @property
  def cached_share(self) -> float | None:
    """The cached whole-host peak times this process's share: what the share is worth on a
    quiet host, beside the figure measured now under load_avg."""
    return self.cached_host * self.share if self.cached_host else None


RUN_PEAK_N_CPU = 1024  # 2.1 GFLOP a matmul: 7 of them take ~0.8 s at load 8 on the 2-core host, and
# gave 21.9 GFLOP/s there against 18.0-19.0 for 2048 (measured 2026-12, jax 0.10.2): the same figure.


def peak_key(dtype="float32", device=None) -> str:
  """The device (for CPUs: the cores this process may use) and dtype a peak belongs to."""
  return f"{device_key(device)} | {jnp.dtype(dtype).name}"


def measure_run_peak(dtype="float32", device=None, cache_file: str | None = None) -> RunPeak:
  """The peak of one device measured now (a run's start: about a second on CPU), with the load
  it was measured under and this process's share of the host's cores. Never written to the
  cache: a figure timed under load would become every later run's."""
  device = device or _default_device()
  dtype = jnp.dtype(dtype).name
  cores, host = core_share() if device.platform == "cpu" else (1, 1)
  load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
  t0 = time.perf_counter()
  flops = measure_peak_flops(dtype, RUN_PEAK_N_CPU if device.platform == "cpu" else None, device)
  cached = None
  path = cache_file or default_cache_file()
  if os.path.exists(path):
    try:
      with open(path) as f:
        entry = json.load(f).get(f"{device_key(device, cores=host)} | {dtype}")
      cached = entry["flops_per_s"] if entry else None
    except (OSError, ValueError, KeyError):
      cached = None
  return RunPeak(flops, load, cores, host, time.perf_counter() - t0, cached, peak_key(dtype, device))


def peak_units(devices) -> int:
  """How many device peaks a run has: the chips, or the processes for CPU devices
  (simulated CPU devices share one host's cores, whose peak peak_flops measures)."""
  devices = list(devices)
  if devices and devices[0].platform == "cpu":
    return len({d.process_index for d in devices})
  return len(devices)


def mfu(flops_per_token: float, tokens_per_s: float, peak_flops_per_device: float, n_devices: int = 1) -> float:
  """Model FLOPs utilisation: achieved model FLOP/s over the peak of the devices used.

  E.g. GPT-2 small (124M params, flops_exact 1.087 GFLOP/token at S=1024) at 150k
  tokens/s on one H100 (989 TFLOP/s bf16): 1.087e9 * 1.5e5 / 9.89e14 = 0.165.
  """
  return flops_per_token * tokens_per_s / (peak_flops_per_device * n_devices)
