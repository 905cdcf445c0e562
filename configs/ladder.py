"""A ladder of Llama-style model sizes from ~50K to ~70B non-embedding parameters.

    python -m lm.main --config=configs/ladder.py:p5m --workdir=runs/p5m
    python -m configs.ladder            # the table: shapes and parameter counts

A rung's name is its approximate non-embedding parameter count (Kaplan's N, what the
scaling fits use by default; lm/flops.py:params_nonembedding); the exact counts are in
`rungs()`. Every shape follows one rule, from the width d_model alone:
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
  - lr:      3e-4 x 4096 / d_model, at most 6e-3: Llama-3-8B's 3e-4 and 70B's 1.5e-4,
             and 1/width below (muP-like for Adam); a starting point for an lr sweep.
Two tiers, each with one tokenizer, since losses in nats per token compare only across
runs that share a vocabulary:
  - CPU (p50k .. p20m): the default State of the Union corpus and its 4096-piece
    SentencePiece; sequences of 128, batches of 16, 'reference' attention (the faster on
    CPU) and a default step count that spends ~1e13 FLOPs, 50 to 1000 steps: with
    lm.main on 2 cores p50k ran at 13.4K tokens/s (1000 steps ~2.5 min) and p20m at 330
    tokens/s (50 steps ~5 min).
  - accelerator (p50m .. p70b): vocabulary 32000 (a SentencePiece trained on a large
    corpus, e.g. --config.data.dataset=c4 prepared as array_record; Llama-2's size),
    bf16 compute, sequences of 2048 (4096 from p1b) and 0.5M-4M-token batches, about
    20 tokens per parameter (Chinchilla) by default; from p1b the layers are scanned and
    rematerialised and parameters sharded over all devices (mesh.fsdp=-1).
"""

from __future__ import annotations

import math

from configs import base
from lm.errors import ConfigError

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


def _round_up(x: int, m: int) -> int:
  return -(-x // m) * m


def shape(d_model: int) -> dict:
  """The `model.` fields of the rung `d_model` wide (the rule in the module docstring)."""
  n_layers = round(math.sqrt(d_model) / 2) if d_model <= 4096 else round(d_model / 102.4)
  head_dim = 16 if d_model <= 128 else 32 if d_model <= 320 else 64 if d_model <= 2560 else 128
  n_heads = d_model // head_dim
  return dict(n_layers=n_layers, d_model=d_model, n_heads=n_heads, head_dim=head_dim,
              n_kv_heads=8 if d_model >= 2048 else n_heads,
              d_ff=_round_up(7 * d_model // 2, 256 if d_model >= 1024 else 16),
              tie_embeddings=d_model < 4096)


def human(n: float) -> str:
  """45,000 -> '45K', 1.25e9 -> '1.25B': three significant figures at most."""
  for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
    if abs(n) >= scale:
      return f"{n / scale:.3g}{unit}"
  return f"{n:.3g}"


def _unknown(name) -> ConfigError:
  listing = ", ".join(f"{n} ({human(_count(n))})" for n in RUNGS)
  return ConfigError(f"unknown ladder rung {name!r}; use configs/ladder.py:NAME with NAME one of: {listing} "
                     "(non-embedding parameters in brackets; `python -m configs.ladder` prints the table).")


def get_config(arg=None):
  if arg not in RUNGS:
    raise _unknown(arg)
  d_model = RUNGS[arg]
  cfg = base.get_config()
  cfg.experiment = f"ladder_{arg}"
  m, t, o = cfg.model, cfg.train, cfg.optim
  m.update(shape(d_model))
  m.positions, m.norm, m.mlp, m.use_bias = "rope", "rmsnorm", "swiglu", False
  o.lr = min(6e-3, 3e-4 * 4096 / d_model)
  if d_model <= CPU_TIER_MAX_WIDTH:
    cfg.data.vocab_size = CPU_VOCAB
    cfg.data.seq_len = m.max_seq_len = 128
    t.batch_size = 16                                # 16 x 128 = 2,048 tokens a step
    m.attention = "reference"
    t.steps = _cpu_steps(cfg)
    o.warmup_steps = t.steps // 10
    t.eval_every = t.checkpoint_every = max(50, t.steps // 5)
  else:
    cfg.data.vocab_size = ACCELERATOR_VOCAB
    m.dtype = "bfloat16"
    big = d_model >= 2048
    cfg.data.seq_len = m.max_seq_len = 4096 if big else 2048
    t.batch_size = 1024 if d_model >= 4096 else 256  # 4M / 0.5M (1M from p1b) tokens a step
    t.steps = _round_up(int(20 * _params(cfg) / (t.batch_size * cfg.data.seq_len)), 100)
    o.warmup_steps = min(2000, t.steps // 10)
    t.eval_every = t.checkpoint_every = 1000
    if big:
      m.scan_layers, m.remat = True, "full"
      cfg.mesh.data, cfg.mesh.fsdp = 1, -1
  return cfg


def model_config(cfg):
  from lm.model import ModelConfig  # local: `python -m configs.ladder` and get_config stay light
  return ModelConfig.from_config(cfg.model, cfg.data.vocab_size)


def _params(cfg, which="params_total") -> int:
  from lm import flops
  return getattr(flops, which)(model_config(cfg))


def _count(name: str, which: str = "params_nonembedding") -> int:
  return _params(get_config(name), which)


def _cpu_steps(cfg) -> int:
  """Steps that spend CPU_FLOPS_BUDGET (flops_exact), to the nearest 50, between 50 and 1000."""
  from lm import flops
  per_step = flops.flops_exact(model_config(cfg), cfg.data.seq_len) * cfg.train.batch_size * cfg.data.seq_len
  return int(min(1000, max(50, 50 * round(CPU_FLOPS_BUDGET / per_step / 50))))


def rungs() -> list[dict]:
  """Every rung: name, config address, shape, vocabulary and parameter counts."""
  from lm import flops
  out = []
  for name in RUNGS:
    cfg = get_config(name)
    counts = flops.param_counts(model_config(cfg))
    out.append(dict(name=name, config=f"configs/ladder.py:{name}", **{k: cfg.model[k] for k in (
        "n_layers", "d_model", "n_heads", "n_kv_heads", "d_ff")}, vocab_size=cfg.data.vocab_size,
        seq_len=cfg.data.seq_len, params_total=counts.total, params_nonembedding=counts.nonembedding))
  return out


def nearest(n_params: float, which: str = "params_nonembedding") -> dict:
  """The rung whose `which` count is nearest `n_params` in log space (x2 and /2 tie)."""
  if which not in ("params_nonembedding", "params_total"):
    raise ValueError(f"which={which!r}: use 'params_nonembedding' or 'params_total'.")
  if not n_params > 0:
    raise ValueError(f"n_params={n_params} must be positive.")
  return min(rungs(), key=lambda r: abs(math.log(r[which] / n_params)))


def table() -> str:
  head = f"{'name':6} {'layers':>6} {'d_model':>7} {'heads':>5} {'kv':>3} {'d_ff':>6} {'vocab':>6} {'seq':>5} " \
         f"{'params':>15} {'non-embedding':>15}"
  rows = [f"{r['name']:6} {r['n_layers']:6d} {r['d_model']:7d} {r['n_heads']:5d} {r['n_kv_heads']:3d} "
          f"{r['d_ff']:6d} {r['vocab_size']:6d} {r['seq_len']:5d} {r['params_total']:15,d} "
          f"{r['params_nonembedding']:15,d}" for r in rungs()]
  return "\n".join([head] + rows)


if __name__ == "__main__":
  print(table())
