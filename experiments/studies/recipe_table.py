"""The ladder's hyperparameters under lm/recipe.py, one row per rung: what get_config sets.

    python -m experiments.studies.recipe_table       # prints the table as Markdown

Columns: N (non-embedding), D (tokens), B (tokens a step), DeepSeek's B_opt for that N and D,
the LR, warmup steps, Adam beta2, weight decay (and the hidden matrices' µP decay x m), the
AdamW timescale tau = B / (lr wd D) as a fraction of the run, and µP's width ratio m.
"""

from __future__ import annotations

import argparse

from configs import ladder
from lm import flops, recipe


def rows() -> list[dict]:
  out = []
  for name in ladder.RUNGS:
    cfg = ladder.get_config(name)
    m, o, t = cfg.model, cfg.optim, cfg.train
    n = flops.params_nonembedding(ladder.model_config(cfg))
    batch = t.batch_size * cfg.data.seq_len
    tokens = t.steps * batch
    width_ratio = m.d_model / m.base_width if m.base_width else 1.0
    out.append(dict(name=name, d_model=m.d_model, n_layers=m.n_layers, N=n, D=tokens, B=batch,
                    B_opt=recipe.batch_tokens(n, tokens), steps=t.steps, lr=o.lr, warmup=o.warmup_steps, b2=o.b2,
                    wd=o.weight_decay, wd_hidden=o.weight_decay * width_ratio, tau=batch / (o.lr * o.weight_decay * tokens),
                    m=width_ratio, recipe=cfg.recipe, parameterization=m.parameterization))
  return out


def markdown(table: list[dict]) -> str:
  h = ladder.human
  lines = ["| rung | d x L | N | D | B (tokens) | B_opt (DeepSeek) | steps | LR | warmup | beta2 | decay (hidden: x m) | tau | m |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in table:
    lines.append(f"| {r['name']} | {r['d_model']} x {r['n_layers']} | {h(r['N'])} | {h(r['D'])} | {h(r['B'])} | "
                 f"{h(r['B_opt'])} | {r['steps']} | {r['lr']:.3g} | {r['warmup']} | {r['b2']:.4f} | "
                 f"{r['wd']:.3g} ({r['wd_hidden']:.3g}) | {r['tau']:.2f} | {r['m']:.3g} |")
  return "\n".join(lines)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.parse_args(argv)
  table = rows()
  print(f"recipe {table[0]['recipe']!r}, parameterization {table[0]['parameterization']!r}")
  print(markdown(table))


if __name__ == "__main__":
  main()
