"""A CPU IsoFLOP experiment over two decades of executed compute, with WSD branching:
5 budgets (1e11 .. 1e13 flops_executed) x 5 sizes each, 10 sizes in all.

    python -m experiments.sweep --config=experiments/sweeps/isoflop_cpu_wsd.py --sweep_dir=DIR --dry_run --parallel=2
    python -m experiments.sweep --config=experiments/sweeps/isoflop_cpu_wsd.py --sweep_dir=DIR --parallel=2
    python -m lm.scaling fit --results=DIR/results.csv --law=isoflop      # N = params_nonembedding, C = flops_executed

What differs from experiments/sweeps/isoflop_cpu.py (the committed 3-budget result), and why:
  - C counts flops_executed (what runs: no gathered-embedding term), the fits' default axis,
    so the budgets, the fits and MFU share one definition.
  - Two decades (1e11 .. 1e13) at half-decade steps instead of one decade at three budgets.
    The first run of this config (2026-12-01) spanned 3e10 .. 3e12: 3e10's minimum sat at its
    smallest size and its seed replicates differed by up to 16%, so the IsoFLOP bootstrap lost
    that budget's bracket in 28% of its draws and refused an interval. 3e10 is dropped and
    1e13 added; the held-out run moves to 3e13.
  - Every point is a cooldown branch (cooldown_fraction 0.2, 1-sqrt; Hägele et al. 2024): one
    stable run per size, checkpointed at each of its budgets' decay starts. The dry run prints
    the FLOPs this spends against the same points from scratch.
  - Each budget runs the 5 sizes around its expected optimum (budget_models), from the first
    run's minima (8.3K at 1e11, 17K at 3e11, 44.8K at 1e12, 104K at 3e12) and its L(N, D) fit's
    N_opt of 290K at 1e13: p100k .. p2m there. ~7K at 1e11 needs models below the ladder, so
    w8l1 (d_model 8, one layer, one head of 8), w16l1 (the p8k width, one layer), p8k and w24
    (ladder.shape(24)) extend it downwards; the ladder's rule otherwise (configs/ladder.py shapes).
  - batch 4, bytes, eval at the end on 64 batches, warmup 10% (of each size's shortest point,
    one warmup per stable run): as isoflop_cpu.py, for the reasons its docstring gives.
  - seeds (0, 1) at the two cheapest budgets: the fits' noise comes from those replicates.
  - LR: the recipe's (lm/recipe.py) for each width, also below the ladder. The recipe's weight
    decay and beta2 are p50k's for the shapes below the ladder, and every rung's are computed
    for the ladder tier's batch and steps, not this sweep's (the results table records them).
Results: experiments/results/isoflop_cpu_wsd/ (README there: commands, load, the fits, the
backtests, the held-out run, branch against from scratch).
"""

from ml_collections import ConfigDict
from ml_collections.config_dict import placeholder

from configs import ladder
from lm import recipe


def get_config(arg=None):
  del arg
  s = ConfigDict()
  s.name = "isoflop_cpu_wsd"
  s.config = "configs/ladder.py"
  s.kind = "isoflop"
  s.models = ("w8l1", "w16l1", "p8k", "w24", "p50k", "p100k", "p200k", "p400k", "p1m", "p2m")
  # Below the ladder: p50k's config with the shape replaced and the recipe's LR for that width
  # (configs/ladder.py applied the recipe for p50k's d_model 32 before the shape changes).
  below = lambda name, **m: {"arg": "p50k", "experiment": f"ladder_{name}", "model": m,  # noqa: E731
                             "optim": {"lr": recipe.learning_rate(m["d_model"])}}
  s.shapes = ConfigDict({
      "w8l1": below("w8l1", **{**ladder.shape(16), "d_model": 8, "n_layers": 1, "head_dim": 8, "d_ff": 32}),
      "w16l1": below("w16l1", **{**ladder.shape(16), "n_layers": 1}),
      "p8k": below("p8k", **ladder.shape(16)),
      "w24": below("w24", **ladder.shape(24)),
  })
  s.budgets = (1e11, 3e11, 1e12, 3e12, 1e13)
  s.budget_models = (("w8l1", "w16l1", "p8k", "w24", "p50k"),
                     ("w16l1", "p8k", "w24", "p50k", "p100k"),
                     ("p8k", "w24", "p50k", "p100k", "p200k"),
                     ("w24", "p50k", "p100k", "p200k", "p400k"),
                     ("p100k", "p200k", "p400k", "p1m", "p2m"))
  s.seeds = (0, 1)                     # seed replicates of the two cheapest budgets: the fits' noise
  s.seed_budgets = (1e11, 3e11)
  s.flops_definition = "flops_executed"
  s.cooldown_fraction = 0.2
  s.cooldown_shape = "1-sqrt"
  s.min_steps = 100
  s.max_steps = placeholder(int)
  s.warmup_fraction = 0.1
  s.evals = 1
  s.checkpoints = 4
  s.overrides = ConfigDict({
      "data": {"data_dir": placeholder(str), "tokenizer": "bytes"},
      "train": {"batch_size": 4, "eval_steps": 64, "samples": 0},
      "logging": {"tensorboard": False, "progress": False},
  })
  return s
