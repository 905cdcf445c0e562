"""The training set of experiments/quality_vs_cost.py: CPU-tier ladder rungs, one token budget.

    python -m experiments.sweep --config=experiments/sweeps/quality_vs_cost.py --sweep_dir=runs/qvc [--dry_run]
    python -m experiments.quality_vs_cost --sweep_dir=runs/qvc --out_dir=experiments/results/quality_vs_cost

Every rung trains on the same D = 204,800 tokens (100 steps x 16 x 128), the same data order
and the ladder's 4096-piece SentencePiece, so quality differences come from size alone.

Why 204,800 tokens: the whole experiment should take ~25 minutes on 2 busy cores. flops_exact
per token (seq 128) is 5.0M (p200k), 11.9M (p1m), 22.7M (p2m), 44.0M (p5m), 75.5M (p10m):
159M for the five. Seen at load 4-7 (2026-11-28): p10m 482 tok/s (36 GFLOP/s), p1m 2,460 tok/s
(29 GFLOP/s); taking ~30 GFLOP/s for all, one token through all five costs 159M / 30G = 5.3 ms,
and 204,800 tokens 1,090 s (18 min), plus ~30 s of start-up, compile and evaluation per rung
(2.5 min) and ~3 min of inference measurement: ~24 min. That is 0.02 (p10m) to 0.4 (p200k)
tokens per parameter, far from compute-optimal (~20): a same-data comparison, not a fit.

'tiny' (tests): configs/tiny.py at two widths, 10 steps of 8 x 32 tokens.
"""

from ml_collections import ConfigDict
from ml_collections.config_dict import placeholder

RUNGS = ("p200k", "p1m", "p2m", "p5m", "p10m")
TOKENS = 100 * 16 * 128  # 204,800


def get_config(arg=None):
  s = ConfigDict()
  s.name = "quality_vs_cost" + (f"_{arg}" if arg else "")
  s.kind = "grid"
  s.flops_definition = "flops_exact"
  s.warmup_fraction = 0.1
  s.evals = 1                          # one evaluation, at the end: eval_loss and eval_bpb
  s.checkpoints = 1                    # the last step only: the measurement loads it
  s.min_steps = 1
  s.max_steps = placeholder(int)
  s.overrides = ConfigDict({
      "data": {"data_dir": placeholder(str)},  # --config.overrides.data.data_dir=DIR (tests: a shared corpus)
      "train": {"samples": 0},
      "logging": {"progress": False},
  })
  if arg is None:
    s.config = "configs/ladder.py"
    s.models = RUNGS
    s.budgets = (TOKENS,)
  elif arg == "tiny":
    s.config = "configs/tiny.py"
    s.shapes = ConfigDict({
        "d16": {"model": {"d_model": 16, "n_heads": 2, "n_kv_heads": 1, "d_ff": 32}},
        "d32": {"model": {"d_model": 32}},
    })
    s.models = ("d16", "d32")
    s.budgets = (10 * 8 * 32,)         # tokens: 10 steps
    s.overrides.train.eval_steps = 2
    s.overrides.logging.tensorboard = False
  else:
    raise ValueError(f"unknown variant {arg!r}; use none (the ladder) or 'tiny'.")
  return s
