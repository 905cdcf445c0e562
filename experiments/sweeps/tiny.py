"""A smoke sweep on configs/tiny.py: seconds per point (tests, demos of the sweep runner).

    python -m experiments.sweep --config=experiments/sweeps/tiny.py --sweep_dir=/tmp/tiny_sweep [--dry_run]
    python -m experiments.sweep --config=experiments/sweeps/tiny.py:isoflop --sweep_dir=/tmp/tiny_iso

'grid' (default): two widths x one token budget of 128 steps (128 x 8 x 32 = 32,768 tokens);
'faults': the same two points, plus one that diverges (lr 1e6: a NaN gradient by step 3) and
  one that fails (an eval split the corpus lacks: lm.main exits with a config error);
'isoflop': two FLOP budgets x three widths;
'branched': the isoflop points as WSD cooldown branches (20%, 1-sqrt) of one stable run per width.
"""

from ml_collections import ConfigDict
from ml_collections.config_dict import placeholder


def get_config(arg=None):
  s = ConfigDict()
  s.name = f"tiny_{arg or 'grid'}"
  s.config = "configs/tiny.py"
  s.shapes = ConfigDict({
      "d16": {"model": {"d_model": 16, "n_heads": 2, "n_kv_heads": 1, "d_ff": 32}},
      "d32": {"model": {"d_model": 32}},  # configs/tiny.py as it is
      "d48": {"model": {"d_model": 48, "n_heads": 4, "n_kv_heads": 2, "d_ff": 96}},
      "diverge": {"optim": {"lr": 1e6}},
      "broken": {"data": {"eval_split": "no_such_split"}},
  })
  s.flops_definition = "flops_exact"
  s.warmup_fraction = 0.1
  s.evals = 1
  s.checkpoints = 4                    # every 32 steps of 128
  s.min_steps = 5
  s.max_steps = placeholder(int)
  s.overrides = ConfigDict({
      "data": {"data_dir": placeholder(str)},  # the tests' shared corpus: --config.overrides.data.data_dir=DIR
      "train": {"samples": 0, "eval_steps": 2},
      "logging": {"tensorboard": False},
  })
  if arg in (None, "grid", "faults"):
    s.kind = "grid"
    s.models = ("d16", "d32") + (("diverge", "broken") if arg == "faults" else ())
    s.budgets = (128 * 8 * 32,)         # tokens
  elif arg in ("isoflop", "branched"):
    s.kind = "isoflop"
    s.models = ("d16", "d32", "d48")
    s.budgets = (3e9, 6e9)              # flops_exact; d32 spends ~0.24 MFLOP a token: 3e9 ~ 50 steps
    if arg == "branched":
      s.cooldown_fraction = 0.2
      s.cooldown_shape = "1-sqrt"
  else:
    raise ValueError(f"unknown variant {arg!r}; use 'grid', 'faults', 'isoflop' or 'branched'.")
  return s
