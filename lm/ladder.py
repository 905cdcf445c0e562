"""The model ladder's size rule: Llama-style shapes from ~50K to ~70B non-embedding parameters.

configs/ladder.py turns a rung into a training config (`--config=configs/ladder.py:p5m`);
this module holds the rule itself, so that library code (scaling plans, synthetic
tables) can use it without importing configs/.

A rung's name is its approximate non-embedding parameter count (Kaplan's N,
lm/flops.py:params_nonembedding); the exact counts are in `rungs()`. Every shape follows
one rule, from the width d_model alone:
  - depth:   n_layers = round(sqrt(d_model) / 2) up to d_model 4096, i.e. the aspect
             ratio d_model / n_layers = 2 sqrt(d_model) grows from 11 (d 32) to 128
             (d 4096): Llama-3.2-3B is 3072 wide and 28 deep, Llama-3-8B 4096 and 32.
             Wider still, d_model / n_layers = 102.4 as in Llama-3-70B (8192 x 80).
  - heads:   head_dim 16 up to d_model 128, 32 up to 320, 64 up to 2560, then 128;
             n_heads = d_model / head_dim.
  - kv:      multi-head below d_model 2048; 8 kv heads (GQA) from 2048 (Llama-3).
  - d_ff:    3.5 d_model for SwiGLU (Llama-3-8B: 14336 = 3.5 x 4096; 70B: 28672), a
             multiple of 256 from d_model 1024.
  - head:    embeddings tied below d_model 4096 (Llama-3.2-1B/3B), untied above (8B, 70B).
  - lr:      lr() is the earlier SP rule, 3e-4 x 4096 / d_model, at most 6e-3 (Llama-3-8B's
             3e-4 and 70B's 1.5e-4), kept for the synthetic tables; the configs train
             with lm/recipe.py's parameterization (recipe.MODEL_FIELDS) and hyperparameters.
Two tiers, each with one tokenizer, since losses in nats per token compare only across
runs that share a vocabulary:
  - CPU (p50k .. p20m): the default State of the Union corpus and its 4096-piece
    SentencePiece; sequences of 128, batches of 16, 'reference' attention (the faster on
    CPU) and a default step count that spends ~1e13 FLOPs (flops_exact), 50 to 1000 steps:
    with lm.main on 2 cores p50k ran at 13.4K tokens/s (1000 steps ~2.5 min) and p20m at
    330 tokens/s (50 steps ~5 min).
  - accelerator (p50m .. p70b): vocabulary 32000 (Llama-2's size), bf16 compute,
    sequences of 2048 (4096 from p1b) and 0.5M-4M-token batches, about 20 tokens per
    parameter (Chinchilla) by default; from p1b the layers are scanned and rematerialised
    and parameters sharded over all devices.
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from lm import flops, recipe
from lm.model import ModelConfig

# name -> d_model; everything else follows from the rule above.
RUNGS = {
    "p50k": 32, "p100k": 48, "p200k": 64, "p400k": 80, "p1m": 112, "p2m": 160, "p5m": 224,
    "p10m": 288, "p20m": 384,
    "p50m": 512, "p100m": 768, "p200m": 896, "p500m": 1280, "p1b": 2048, "p2b": 2560, "p3b": 3072,
    "p7b": 4096, "p30b": 6144, "p70b": 8192,
}
CPU_TIER_MAX_WIDTH = 384
CPU_VOCAB, ACCELERATOR_VOCAB = 4096, 32000
CPU_FLOPS_BUDGET = 1e13  # default steps of a CPU rung: ~4 min at the ~45 GFLOP/s p20m trained at
COUNTS = ("params_nonembedding", "params_total")


def _round_up(x: int, m: int) -> int:
  return -(-x // m) * m


def head_dim(d_model: int) -> int:
  return 16 if d_model <= 128 else 32 if d_model <= 320 else 64 if d_model <= 2560 else 128


def shape(d_model: int) -> dict:
  """The `model.` shape fields of the rung `d_model` wide (the rule in the module docstring)."""
  n_layers = round(math.sqrt(d_model) / 2) if d_model <= 4096 else round(d_model / 102.4)
  n_heads = d_model // head_dim(d_model)
  return dict(n_layers=n_layers, d_model=d_model, n_heads=n_heads, head_dim=head_dim(d_model),
              n_kv_heads=8 if d_model >= 2048 else n_heads,
              d_ff=_round_up(7 * d_model // 2, 256 if d_model >= 1024 else 16),
              tie_embeddings=d_model < 4096)


ARCHITECTURE = dict(positions="rope", norm="rmsnorm", mlp="swiglu", use_bias=False)


def tier(d_model: int) -> dict:
  """The data and run settings of a rung's tier: vocab_size, seq_len, batch_size (sequences)
  and the model's numerics (dtype, attention, remat, scan_layers)."""
  if d_model <= CPU_TIER_MAX_WIDTH:
    return dict(vocab_size=CPU_VOCAB, seq_len=128, batch_size=16, dtype="float32", attention="reference",
                remat="none", scan_layers=False)
  big = d_model >= 2048
  return dict(vocab_size=ACCELERATOR_VOCAB, seq_len=4096 if big else 2048,
              batch_size=1024 if d_model >= 4096 else 256,  # 4M / 0.5M (1M from p1b) tokens a step
              dtype="bfloat16", attention="xla", remat="full" if big else "none", scan_layers=big)


def lr(d_model: int) -> float:
  return min(6e-3, 3e-4 * 4096 / d_model)


def model_config(d_model: int, vocab_size: int | None = None, seq_len: int | None = None) -> ModelConfig:
  """The rung `d_model` wide as a ModelConfig; vocab_size and seq_len default to its tier's
  (give others to follow the rule on another tokenizer, e.g. bytes: 259)."""
  t = tier(d_model)
  return ModelConfig(vocab_size=int(vocab_size or t["vocab_size"]), max_seq_len=int(seq_len or t["seq_len"]),
                     **shape(d_model), **ARCHITECTURE, dtype=jnp.dtype(t["dtype"]), attention=t["attention"],
                     remat=t["remat"], scan_layers=t["scan_layers"], **recipe.MODEL_FIELDS)


def cpu_steps(d_model: int) -> int:
  """Steps that spend CPU_FLOPS_BUDGET (flops_exact) at the CPU tier's batch, to the nearest
  50, between 50 and 1000."""
  t = tier(d_model)
  per_step = flops.flops_exact(model_config(d_model), t["seq_len"]) * t["batch_size"] * t["seq_len"]
  return int(min(1000, max(50, 50 * round(CPU_FLOPS_BUDGET / per_step / 50))))


def accelerator_steps(d_model: int) -> int:
  """~20 tokens per (total) parameter, in whole hundreds of steps."""
  t = tier(d_model)
  tokens = 20 * flops.params_total(model_config(d_model))
  return _round_up(int(tokens / (t["batch_size"] * t["seq_len"])), 100)


def human(n: float) -> str:
  """45,000 -> '45K', 1.25e9 -> '1.25B': three significant figures at most."""
  for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
    if abs(n) >= scale:
      return f"{n / scale:.3g}{unit}"
  return f"{n:.3g}"


def rung(name: str, d_model: int, vocab_size: int | None = None, seq_len: int | None = None) -> dict:
  """One rung: name, config address, shape, vocabulary, parameter counts and training FLOPs
  per token by each definition (lm/flops.py) at its sequence length."""
  m = model_config(d_model, vocab_size, seq_len)
  counts = flops.param_counts(m)
  return dict(name=name, config=f"configs/ladder.py:{name}", **{k: getattr(m, k) for k in (
      "n_layers", "d_model", "n_heads", "n_kv_heads", "d_ff")}, vocab_size=m.vocab_size, seq_len=m.max_seq_len,
      params_total=counts.total, params_nonembedding=counts.nonembedding,
      **{f"{d}_per_token": flops.flops_per_token(m, m.max_seq_len, d) for d in flops.FLOPS_DEFINITIONS})


def rungs(vocab_size: int | None = None, seq_len: int | None = None) -> list[dict]:
  """Every rung (see `rung`); vocab_size and seq_len replace every tier's when given."""
  return [rung(name, d, vocab_size, seq_len) for name, d in RUNGS.items()]


def widths(lo: int = 16, hi: int = 8192) -> list[int]:
  """Every width the rule gives whole heads for (multiples of its head_dim, and from 2048 a
  multiple of the 8 kv heads) from lo to hi: the continuous family between the rungs, for
  frontiers drawn along the rule."""
  def valid(d):
    s = shape(d)
    return d % head_dim(d) == 0 and s["n_heads"] % s["n_kv_heads"] == 0
  return [d for d in range(lo, hi + 1, 16) if valid(d)]


def nearest(n_params: float, which: str = "params_nonembedding", vocab_size=None, seq_len=None) -> dict:
  """The rung whose `which` count is nearest `n_params` in log space (x2 and /2 tie)."""
  if which not in COUNTS:
    raise ValueError(f"which={which!r}: use 'params_nonembedding' or 'params_total'.")
  if not n_params > 0:
    raise ValueError(f"n_params={n_params} must be positive.")
  return min(rungs(vocab_size, seq_len), key=lambda r: abs(math.log(r[which] / n_params)))


def table() -> str:
  head = f"{'name':6} {'layers':>6} {'d_model':>7} {'heads':>5} {'kv':>3} {'d_ff':>6} {'vocab':>6} {'seq':>5} " \
         f"{'params':>15} {'non-embedding':>15}"
  rows = [f"{r['name']:6} {r['n_layers']:6d} {r['d_model']:7d} {r['n_heads']:5d} {r['n_kv_heads']:3d} "
          f"{r['d_ff']:6d} {r['vocab_size']:6d} {r['seq_len']:5d} {r['params_total']:15,d} "
          f"{r['params_nonembedding']:15,d}" for r in rungs()]
  return "\n".join([head] + rows)
