"""A CPU-sized IsoFLOP experiment (Hoffmann et al. 2022, Approach 2): 3 budgets x 4-5 sizes, 16 min on 2 cores.

    python -m experiments.sweep --config=experiments/sweeps/isoflop_cpu.py --sweep_dir=DIR --dry_run
    python -m experiments.sweep --config=experiments/sweeps/isoflop_cpu.py --sweep_dir=DIR --parallel=2

Results, commands and fits: experiments/results/isoflop_cpu/README.md.

Models: the ladder's CPU rungs p50k..p400k (configs/ladder.py: shapes, the lr rule
min(6e-3, 3e-4 x 4096 / d_model) = 6e-3 for all of them, cosine schedule) and one rung below
the ladder, p8k = ladder.shape(16) (2 layers, d_model 16, one head of 16), so the smallest
budget's minimum is bracketed. What departs from the CPU tier, and why:
  - data.tokenizer = 'bytes' (V = 259), not the 4096-piece SentencePiece. With V = 4096 the
    embedding and output layers are 50-90% of these models' flops_exact (p50k: 1.99M FLOPs a
    token, 6N = 0.27M), so at the budgets 2 cores afford in 30 minutes (<= 3e12) every IsoFLOP
    curve fell all the way down to the smallest model (pilot at 1e12: p50k 5.76 < p100k 6.12 <
    p200k 6.31 < p400k 6.41 < p1m 6.51 nats/token, batch 16; at 3e11 with batch 4: p8k 5.63 <
    p50k 6.05). With bytes flops_exact is 1.3x (p400k) to 3.0x (p8k) 6N and the curves have minima inside the
    ladder (pilots: 3e11 p8k 1.732 ~ p50k 1.743 < p100k 2.34; 1e12 p50k 1.405 < p100k 1.466
    < p8k 1.602 < p200k 1.617 nats/byte). Losses are nats per byte-token (eval_bpb in bits).
  - train.batch_size = 4 (512 tokens a step), not 16: these runs are step-limited (a larger
    model learns less per step early on), and 4x the steps for the same tokens lowered p50k's
    loss at 1e12 from 5.76 to 5.25 (SentencePiece pilot); on 2 cores a token costs no more time
    at batch 4 than at 16 (p50k 75 ms vs 360 ms a step under the same load).
  - eval at the end only, on 64 batches (32,768 tokens of the validation split, the same for
    every point); warmup 10% of the steps; checkpoints every quarter of a point (preemption).
Budgets are flops_exact (docs/conventions.md, Parameters and FLOPs): fit with `lm.scaling fit --flops=flops_exact`.
Each budget runs the sizes that bracket its optimum (budget_models), ~4x apart at most.
"""

from ml_collections import ConfigDict
from ml_collections.config_dict import placeholder

from configs import ladder


def get_config(arg=None):
  del arg
  s = ConfigDict()
  s.name = "isoflop_cpu"
  s.config = "configs/ladder.py"
  s.kind = "isoflop"
  s.models = ("p8k", "p50k", "p100k", "p200k", "p400k")
  # p8k: the ladder's rule one width below its smallest rung, on the p50k config (lr, CPU tier).
  s.shapes = ConfigDict({"p8k": {"arg": "p50k", "experiment": "ladder_p8k", "model": ladder.shape(16)}})
  s.budgets = (3e11, 1e12, 3e12)
  s.budget_models = (("p8k", "p50k", "p100k", "p200k"),
                     ("p8k", "p50k", "p100k", "p200k", "p400k"),
                     ("p8k", "p50k", "p100k", "p200k", "p400k"))
  s.flops_definition = "flops_exact"
  s.min_steps = 100
  s.max_steps = placeholder(int)
  s.warmup_fraction = 0.1
  s.evals = 1
  s.checkpoints = 4
  s.overrides = ConfigDict({
      "data": {"data_dir": placeholder(str), "tokenizer": "bytes"},
      "train": {"batch_size": 4, "eval_steps": 64, "samples": 0},
      "logging": {"tensorboard": False, "progress": False},
      # The committed results predate lm/recipe.py: the points keep the settings they trained with.
      "recipe": "", "optim": {"lr": 6e-3, "b2": 0.95, "weight_decay": 0.1}, "model": {"parameterization": "sp"},
  })
  return s
