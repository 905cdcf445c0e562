"""Synthetic results tables drawn from a known scaling law, for tests and for notebooks
until real sweeps replace them.

The runs are an IsoFLOP sweep over the CPU rungs of lm/ladder.py: for each budget,
every rung that gets between MIN and MAX tokens per parameter trains for
C / (6 N) tokens (rounded to whole 2048-token steps), and its loss is
L(N, D) = E + A / N^alpha + B / D^beta with N the non-embedding count, times lognormal
noise (`replicates` seeds per point, each its own noise draw and `seed`). Every column of
docs/conventions.md, Results schema is filled in as training would fill it, and flops_executed too.

    python -m lm.scaling_synthetic --out=notebooks/data/synthetic_isoflop.csv
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import pandas as pd

from lm import flops, ladder, scaling_lnd

# Chosen so the CPU rungs see losses like the State of the Union runs: p50k trained on
# 4M tokens reached 4.37 nats/token, and L(45K, 4M) = 1.8 + 1.79 + 0.79 = 4.38.
TRUE_LAW = {"E": 1.8, "A": 55.0, "alpha": 0.32, "B": 56.0, "beta": 0.28}
BUDGETS = (3e11, 1e12, 3e12, 1e13, 3e13)  # ~6 CPU-hours at the throughput below
TOKENS_PER_PARAM = (0.3, 400.0)   # the range of D / N each budget's sizes span
BYTES_PER_TOKEN = 4.38           # sotu with the 4096-piece SentencePiece (lm.main's report)
TOKENS_PER_S_AT_1M = 2080.0      # CPU throughput ~ N^-0.6 through lm.main's 13.4K tokens/s at p50k, 330 at p20m


def isoflop_table(law: dict = TRUE_LAW, budgets=BUDGETS, noise: float = 0.01, seed: int = 0,
                  tokens_per_param=TOKENS_PER_PARAM, replicates: int = 1) -> pd.DataFrame:
  """One row per run, in the results schema, plus the sweep's nominal `flops_budget`."""
  rng = np.random.default_rng(seed)
  rows = []
  cpu_rungs = [name for name, d in ladder.RUNGS.items() if d <= ladder.CPU_TIER_MAX_WIDTH]
  for budget in budgets:
    for name in cpu_rungs:
      d_model = ladder.RUNGS[name]
      m, tier = ladder.model_config(d_model), ladder.tier(d_model)
      n = flops.params_nonembedding(m)
      tokens_per_step = tier["batch_size"] * tier["seq_len"]
      steps = round(budget / (6 * n) / tokens_per_step)
      tokens = steps * tokens_per_step
      if steps < 1 or not tokens_per_param[0] <= tokens / n <= tokens_per_param[1]:
        continue
      for replicate in range(replicates):
        loss = float(scaling_lnd.chinchilla_loss(law, n, tokens)) * math.exp(noise * rng.standard_normal())
        per_token = flops.flops_exact(m, tier["seq_len"])
        tokens_per_s = TOKENS_PER_S_AT_1M * (1e6 / n) ** 0.6
        rows.append(dict(
            run_id=f"{name}-C{budget:.0e}" + (f"-s{replicate}" if replicates > 1 else ""),
            experiment="isoflop_synthetic", status="finished", n_layers=m.n_layers, d_model=m.d_model,
            n_heads=m.n_heads, n_kv_heads=m.n_kv_heads, d_ff=m.d_ff, vocab_size=m.vocab_size, seq_len=tier["seq_len"],
            batch_size=tier["batch_size"], steps=steps, lr=ladder.lr(d_model), seed=replicate,
            params_total=flops.params_total(m), params_nonembedding=n, tokens=tokens,
            flops_6n=6.0 * n * tokens, flops_exact=per_token * tokens,
            flops_executed=flops.flops_executed(m, tier["seq_len"]) * tokens,
            train_loss=loss * (1 - 0.01 * rng.random()), eval_loss=loss,
            eval_bpb=loss / math.log(2) / BYTES_PER_TOKEN, wall_s=tokens / tokens_per_s, tokens_per_s=tokens_per_s,
            mfu=tokens_per_s * per_token / 100e9, device_kind="cpu", device_count=1, jax_version="synthetic",
            git_commit="synthetic", flops_budget=budget, flops_definition="flops_6n"))
  table = pd.DataFrame(rows)
  # One diverged run, as sweeps have: no losses, and fits must skip it.
  diverged = dict(table.iloc[len(table) // 2], run_id="diverged-example", status="diverged",
                  eval_loss=float("nan"), train_loss=float("nan"), eval_bpb=float("nan"))
  return pd.concat([table, pd.DataFrame([diverged])], ignore_index=True)


def main(argv=None):
  ap = argparse.ArgumentParser(description="Write a synthetic IsoFLOP results table from a known law.")
  ap.add_argument("--out", required=True)
  ap.add_argument("--noise", type=float, default=0.01, help="lognormal sigma of the loss")
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args(argv)
  table = isoflop_table(noise=args.noise, seed=args.seed)
  table.to_csv(args.out, index=False, float_format="%.6g")
  unfinished = int((table["status"] != "finished").sum())
  print(f"wrote {len(table)} runs ({unfinished} not finished) to {args.out}; true law {TRUE_LAW}")


if __name__ == "__main__":
  main()
