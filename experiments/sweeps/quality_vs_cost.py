"""The training set of experiments/studies/quality_vs_cost.py: CPU-tier ladder rungs, one token budget.

    python -m experiments.sweep --config=experiments/sweeps/quality_vs_cost.py --sweep_dir=runs/qvc [--dry_run]
    python -m experiments.studies.quality_vs_cost --sweep_dir=runs/qvc --out_dir=experiments/results/quality_vs_cost

Every rung trains on the same D = 1,638,400 tokens (800 steps x 16 x 128), the same data
order and the ladder's 4096-piece SentencePiece, so quality differences come from size alone.

Why 1,638,400 tokens: enough for the rungs to leave the unigram plateau and order by size,
in under an hour on 2 quiet cores. The dry run's probe put it at 38 min of training
(p200k 136 ms a step ... p10m 1,160 ms); the measured run is in
experiments/results/quality_vs_cost/README.md. A first version trained 204,800 tokens (100
steps): every rung then stayed within 0.2 bits/byte of the unigram baseline and p2m and p5m
came out worse than p1m, so the table said little about size. Even 1.6M tokens is 0.15
(p10m) to 3.3 (p200k) tokens per parameter, far from compute-optimal (~20): this is a
same-data comparison, not a fit.

'tiny' (tests): configs/tiny.py at two widths, 10 steps of 8 x 32 tokens.
"""

from ml_collections import ConfigDict
from ml_collections.config_dict import placeholder

from lm import ladder as rule

RUNGS = ("p200k", "p1m", "p2m", "p5m", "p10m")
TOKENS = 800 * 16 * 128  # 1,638,400


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
    # The committed results predate lm/recipe.py: each rung keeps the settings it trained with
    # (lm/ladder.py's earlier lr rule, beta2 0.95, decay 0.1, SP).
    s.shapes = ConfigDict({r: {"arg": r, "optim": {"lr": rule.lr(rule.RUNGS[r])}} for r in RUNGS})
    s.overrides.update({"recipe": "", "optim": {"b2": 0.95, "weight_decay": 0.1}, "model": {"parameterization": "sp"}})
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
