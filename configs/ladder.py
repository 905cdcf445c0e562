"""The model ladder as training configs: `--config=configs/ladder.py:NAME`.

    python -m lm.main --config=configs/ladder.py:p5m --workdir=runs/p5m
    python -m configs.ladder            # the table: shapes and parameter counts

The size rule (shapes, tiers, lr, default steps) and the helpers (rungs, nearest, human)
live in lm/ladder.py, which library code uses; this file only turns a rung into a config.
On the CPU tier the batch, attention and step count suit 2 cores; on the accelerator tier
from p1b the layers are scanned and rematerialised and parameters sharded over all devices
(mesh.fsdp=-1). See lm/ladder.py for the rule and the measurements behind it. Every rung's
LR, warmup, Adam beta2, weight decay and parameterization come from lm/recipe.py (for the rung's
N, D and batch); a --config field on the command line is applied afterwards and wins.
"""

from __future__ import annotations

from configs import base
from lm.errors import ConfigError
from lm.ladder import (ACCELERATOR_VOCAB, CPU_FLOPS_BUDGET, CPU_TIER_MAX_WIDTH, CPU_VOCAB, RUNGS, human,  # noqa: F401
                       nearest, rungs, shape, table)
from lm import flops, recipe
from lm import ladder as rule
from lm.model import ModelConfig


def _unknown(name) -> ConfigError:
  by_name = {r["name"]: r for r in rungs()}
  listing = ", ".join(f"{n} ({human(by_name[n]['params_nonembedding'])})" for n in RUNGS)
  return ConfigError(f"unknown ladder rung {name!r}; use configs/ladder.py:NAME with NAME one of: {listing} "
                     "(non-embedding parameters in brackets; `python -m configs.ladder` prints the table).")


def get_config(arg=None):
  if arg not in RUNGS:
    raise _unknown(arg)
  d_model = RUNGS[arg]
  cfg = base.get_config()
  cfg.experiment = f"ladder_{arg}"
  m, t = cfg.model, cfg.train
  m.update(shape(d_model))
  m.update(rule.ARCHITECTURE)
  tier = rule.tier(d_model)
  cfg.data.vocab_size = tier["vocab_size"]
  cfg.data.seq_len = m.max_seq_len = tier["seq_len"]
  t.batch_size = tier["batch_size"]
  if d_model <= CPU_TIER_MAX_WIDTH:
    m.attention = tier["attention"]
    t.steps = rule.cpu_steps(d_model)
    t.eval_every = t.checkpoint_every = max(50, t.steps // 5)
  else:
    m.dtype = tier["dtype"]
    t.steps = rule.accelerator_steps(d_model)
    t.eval_every = t.checkpoint_every = 1000
    if tier["scan_layers"]:
      m.scan_layers, m.remat = True, tier["remat"]
      cfg.mesh.data, cfg.mesh.fsdp = 1, -1
  batch = t.batch_size * cfg.data.seq_len
  recipe.apply(cfg, recipe.hyperparameters(flops.params_nonembedding(model_config(cfg)), t.steps * batch, batch,
                                           d_model))
  return cfg


def model_config(cfg):
  return ModelConfig.from_config(cfg.model, cfg.data.vocab_size)


if __name__ == "__main__":
  print(table())
