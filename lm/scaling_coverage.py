"""Coverage benchmark: how often each nominal 95% interval of lm.scaling holds the truth.

    python -m lm.scaling_coverage [--seeds=100] [--noise=0.005,0.01,0.02] [--designs=...] [--json=OUT]

Synthetic tables from a known law on realistic designs, at several noise levels, each
fitted as a real table would be; for every interval the share of seeds whose interval
holds the true value. Each must lie in [90%, 99%] (BAND), judged where at least MIN_JUDGED
seeds gave an interval (a design that refuses nearly always has too few to say). Intervals checked:
  isoflop a, b          (lm/scaling_isoflop.py; truth: the law's exact optima along the design's budgets)
  chinchilla E, A, B, alpha, beta, a, b   (profile likelihood, lm/scaling_lnd.py; truth: the law's)
  prediction            a held-out run at 3x the largest budget, at the law's optimum: its noisy loss
and, for comparison, the bootstraps they replaced (`old`): Approach 2 with runs resampled
within each budget, failures dropped (lm.scaling before the scaling-trust issue), and
optionally (--old_chinchilla, slow) Hoffmann et al.'s Huber fit with runs resampled.
A refused interval (too many failed draws) is counted as refused, not as a miss: it
states that the design cannot give one.

Designs (DESIGNS):
  cpu_isoflop   the CPU IsoFLOP sweep (experiments/results/isoflop_cpu): budgets 3e11, 1e12,
                3e12 FLOPs, here of flops_executed; widths 16-80 of lm/ladder.py's rule at
                vocab 259 (bytes), 512 tokens a step; law: the L(N, D) fit of that table
  ladder_dense  the same law and budgets with 7 widths (16-112) in every budget: a sweep
                with sizes on both sides of each minimum
  synthetic     lm/scaling_synthetic.py's sweep (5 budgets, 22 runs, C = 6 N D) and TRUE_LAW
  cpu_wsd       the two-decade CPU sweep (experiments/sweeps/isoflop_cpu_wsd.py): budgets 1e11 ..
                1e13 flops_executed, its 5 shapes a budget (w8l1 .. p2m), the two cheapest budgets
                at two seeds (35 runs); law: the L(N, D) fit of its committed table
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time

import numpy as np
import pandas as pd

from lm import flops, ladder, scaling, scaling_huber, scaling_isoflop, scaling_lnd, scaling_synthetic

BAND = (0.90, 0.99)
# Below this many printed intervals a coverage is not judged: 4 of 4 is 100% and says nothing
# (a 95% interval's coverage from 20 seeds has a binomial SE of ~5 points).
MIN_JUDGED = 20
# L(N, D) fitted (lm/scaling_lnd.py) to experiments/results/isoflop_cpu/results.csv, N =
# params_nonembedding: the law the CPU designs draw from.
CPU_LAW = {"E": 0.5766, "A": 7.7425, "B": 12774.15, "alpha": 0.23596, "beta": 0.75263}
CPU_BUDGETS = (3e11, 1e12, 3e12)
TOKENS_PER_STEP = 512  # the CPU IsoFLOP sweep's batch 4 x 128
CHINCHILLA_QUANTITIES = ("E", "A", "B", "alpha", "beta", "a", "b")
# L(N, D) fitted to experiments/results/isoflop_cpu_wsd/results.csv (FIT_chinchilla.json there).
WSD_LAW = {"E": 0.81249, "A": 8.252644, "B": 4155.14, "alpha": 0.280339, "beta": 0.677503}
WSD_BUDGETS = (1e11, 3e11, 1e12, 3e12, 1e13)
WSD_REPLICATED = (1e11, 3e11)  # budgets whose runs ran at two seeds
# The sweep's shapes (experiments/sweeps/isoflop_cpu_wsd.py): ladder widths, and below the
# ladder p8k's shape (width 16) with fewer layers or a narrower model.
WSD_SHAPES = {"w8l1": (16, dict(d_model=8, n_layers=1, head_dim=8, d_ff=32)), "w16l1": (16, dict(n_layers=1)),
              "p8k": (16, {}), "w24": (24, {}), "p50k": (32, {}), "p100k": (48, {}), "p200k": (64, {}),
              "p400k": (80, {}), "p1m": (112, {}), "p2m": (160, {})}
WSD_BUDGET_SHAPES = (("w8l1", "w16l1", "p8k", "w24", "p50k"), ("w16l1", "p8k", "w24", "p50k", "p100k"),
                     ("p8k", "w24", "p50k", "p100k", "p200k"), ("w24", "p50k", "p100k", "p200k", "p400k"),
                     ("p100k", "p200k", "p400k", "p1m", "p2m"))


def _ladder_design(widths_per_budget, budgets=CPU_BUDGETS, vocab=259, seq=128, replicated=()) -> pd.DataFrame:
  """One run per (budget, model) at the sweep's 512 tokens a step; two at a `replicated` budget.
  A model is a ladder width or (width, shape fields that replace the ladder's)."""
  rows = []
  for budget, widths in zip(budgets, widths_per_budget):
    for w in [w for w in widths for _ in range(2 if budget in replicated else 1)]:
      width, changes = w if isinstance(w, tuple) else (w, {})
      m = dataclasses.replace(ladder.model_config(width, vocab, seq), **changes)
      per_token = flops.flops_executed(m, seq)
      steps = round(budget / (per_token * TOKENS_PER_STEP))
      d = steps * TOKENS_PER_STEP
      rows.append({"N": float(flops.params_nonembedding(m)), "D": float(d), "C": per_token * d, "budget": budget})
  return pd.DataFrame(rows)


def designs() -> dict:
  """name -> (runs with N, D, C, budget; the true law)."""
  syn = scaling_synthetic.isoflop_table(noise=0.0)
  syn = syn[syn["status"] == "finished"]
  syn_runs = pd.DataFrame({"N": syn["params_nonembedding"], "D": syn["tokens"], "C": syn["flops_6n"],
                           "budget": syn["flops_budget"]}).reset_index(drop=True)
  return {"cpu_isoflop": (_ladder_design([(16, 32, 48, 64)] + [(16, 32, 48, 64, 80)] * 2), CPU_LAW),
          "ladder_dense": (_ladder_design([tuple(range(16, 113, 16))] * 3), CPU_LAW),
          "synthetic": (syn_runs, scaling_synthetic.TRUE_LAW),
          "cpu_wsd": (_ladder_design([[WSD_SHAPES[m] for m in ms] for ms in WSD_BUDGET_SHAPES], WSD_BUDGETS,
                                     replicated=WSD_REPLICATED), WSD_LAW)}


def truths(runs: pd.DataFrame, law: dict) -> dict:
  """The true values the intervals should hold, and the held-out run (N, D, mean loss)."""
  budgets = sorted(runs["budget"].unique())
  paths = scaling_isoflop.budget_paths(runs, budgets)
  n_opt, d_opt = scaling_isoflop.law_optima(law, paths)
  c = [float(np.exp(np.log(runs.loc[runs["budget"] == b, "C"]).mean())) for b in budgets]
  iso = scaling_isoflop.lines(c, n_opt, d_opt)
  coef, lo, hi = paths[budgets[-1]]
  shifted = {"next": (coef + np.array([0.0] * (len(coef) - 1) + [math.log(3)]), lo, hi + 0.5)}
  (n_new,), (d_new,) = scaling_isoflop.law_optima(law, shifted)
  out = {f"isoflop_{k}": iso[k] for k in ("a", "b")}
  out.update({f"chinchilla_{k}": v for k, v in {**law, **scaling_lnd.optimum_exponents(law)}.items()})
  out["held_out"] = (n_new, d_new, float(scaling_lnd.chinchilla_loss(law, n_new, d_new)))
  return out


def _inside(iv, value) -> bool:
  return iv[0] <= value <= iv[1]


def old_isoflop_interval(runs, draws, rng):
  """Approach 2's bootstrap before the scaling-trust issue: runs resampled within each budget,
  a resample that fails dropped, one fitted on the budgets it could bracket kept; percentiles."""
  budgets = [(np.log(g["C"]).mean(), np.log10(g["N"].to_numpy()), g["loss"].to_numpy())
             for _, g in runs.groupby("budget")]
  a = []
  for _ in range(draws):
    log_c, log_n = [], []
    for c, x, y in budgets:
      i = rng.integers(0, len(x), len(x))
      fit = scaling_isoflop.parabola_minimum(x[i], y[i])
      if fit is not None:
        log_c.append(c)
        log_n.append(fit[0] * math.log(10))
    if len(log_c) >= 2:
      a.append(np.polyfit(log_c, log_n, 1)[0])
  return list(np.percentile(a, [2.5, 97.5])) if a else None


def old_chinchilla_intervals(runs, draws, rng):
  """Hoffmann et al.'s Huber fit with runs resampled (percentile intervals), as lm.scaling had it."""
  p, theta = scaling_huber.fit_chinchilla_huber(runs["N"], runs["D"], runs["loss"], 32)
  samples = {k: [] for k in ("alpha", "beta", "a")}
  for _ in range(draws):
    r = runs.iloc[rng.integers(0, len(runs), len(runs))]
    q, _ = scaling_huber.fit_chinchilla_huber(r["N"], r["D"], r["loss"], 4, [theta])
    for k in samples:
      samples[k].append(q[k])
  return {k: list(np.percentile(v, [2.5, 97.5])) for k, v in samples.items()}


def one_table(runs, law, truth, noise, seed, draws=200, old=True, old_chinchilla=False,
              quantities=CHINCHILLA_QUANTITIES) -> dict:
  """Hits (True/False), refusals (None) and failure rates of every interval on one noisy table
  (`quantities`: the L(N, D) parameters whose profile intervals are checked)."""
  rng = np.random.default_rng(seed)
  sim = runs.assign(loss=scaling_lnd.chinchilla_loss(law, runs["N"], runs["D"])
                    * np.exp(noise * rng.standard_normal(len(runs))))
  out = {}
  iso = scaling.fit(sim, "isoflop", bootstrap=draws, seed=seed)
  out["isoflop_failure_rate"] = iso["failure_rate"]
  for k in ("a", "b"):
    out[f"isoflop_{k}"] = None if iso.get("refused") else _inside(iso["intervals"][k], truth[f"isoflop_{k}"])
  problem = scaling_lnd.Problem(sim["N"], sim["D"], sim["loss"])
  s_min, p = scaling_lnd.fit(problem)
  nz = scaling.noise(sim, s_min, scaling_lnd.N_PARAMS)
  iv = scaling_lnd.intervals(problem, s_min, p, nz["s2"], nz["df"], quantities=quantities)
  for k in quantities:
    out[f"chinchilla_{k}"] = _inside(iv[k]["interval"], truth[f"chinchilla_{k}"])
  n_new, d_new, mean_new = truth["held_out"]
  y_new = mean_new * math.exp(noise * rng.standard_normal())
  out["prediction"] = _inside(scaling_lnd.prediction_interval(problem, s_min, p, nz["s2"], nz["df"], n_new, d_new),
                              y_new)
  if old:
    old_iv = old_isoflop_interval(sim, 100, rng)
    out["old_isoflop_a"] = None if old_iv is None else _inside(old_iv, truth["isoflop_a"])
  if old_chinchilla:
    for k, v in old_chinchilla_intervals(sim, 60, rng).items():
      out[f"old_chinchilla_{k}"] = _inside(v, truth[f"chinchilla_{k}"])
  return out


def coverage(design: str, noise: float, seeds: int, first_seed: int = 0, **kw) -> dict:
  """{interval: {"coverage", "judged", "refused"}} over `seeds` tables, plus failure rates."""
  runs, law = designs()[design]
  truth = truths(runs, law)
  results = [one_table(runs, law, truth, noise, first_seed + s, **kw) for s in range(seeds)]
  out = {}
  for key in results[0]:
    if key.endswith("failure_rate"):
      out[key] = float(np.mean([r[key] for r in results]))
      continue
    judged = [r[key] for r in results if r.get(key) is not None]
    out[key] = {"coverage": float(np.mean(judged)) if judged else None, "judged": len(judged),
                "refused": sum(r.get(key) is None for r in results)}
  return out


def judgeable(cell) -> bool:
  return cell["coverage"] is not None and cell["judged"] >= MIN_JUDGED


def in_band(cell, band=BAND) -> bool:
  return cell["coverage"] is not None and band[0] <= cell["coverage"] <= band[1]


def format_table(rows: list[dict], band=BAND) -> str:
  keys = [k for k in rows[0]["coverage"] if not k.endswith("failure_rate")]
  head = f"{'design':13} {'noise':>6} " + " ".join(f"{k:>16}" for k in keys) + f" {'iso fail':>8}"
  lines = [head]
  for r in rows:
    cells = []
    for k in keys:
      c = r["coverage"][k]
      mark = ("" if k.startswith("old_") or c["coverage"] is None else "~" if not judgeable(c)
              else "" if in_band(c, band) else "!")
      shown = "refused" if c["coverage"] is None else f"{c['coverage']:.0%}"
      refused = f" ({c['refused']}r)" if c["refused"] else ""
      cells.append(f"{shown + mark + refused:>16}")
    lines.append(f"{r['design']:13} {r['noise']:6.1%} " + " ".join(cells)
                 + f" {r['coverage']['isoflop_failure_rate']:8.1%}")
  lines.append(f"(share of seeds whose 95% interval held the truth; ! outside [{band[0]:.0%}, {band[1]:.0%}]; "
               f"~ fewer than {MIN_JUDGED} seeds gave an interval, not judged; (Nr): N seeds refused an interval; "
               "old_*: the replaced bootstraps, for comparison)")
  return "\n".join(lines)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--seeds", type=int, default=100)
  ap.add_argument("--noise", default="0.005,0.01,0.02", help="lognormal sigmas of the loss, comma-separated")
  ap.add_argument("--designs", default=",".join(designs()))
  ap.add_argument("--draws", type=int, default=200, help="isoflop bootstrap draws per table")
  ap.add_argument("--old_chinchilla", action="store_true", help="also the old Huber + run bootstrap (slow)")
  ap.add_argument("--json", help="write the table as JSON here")
  ap.add_argument("--from_json", help="print the table of an earlier --json and its verdict; run nothing")
  args = ap.parse_args(argv)
  if args.from_json:
    with open(args.from_json) as fh:
      rows = json.load(fh)
    print(format_table(rows))
    return verdict(rows)
  rows = []
  start = time.time()
  for design in args.designs.split(","):
    for noise in (float(x) for x in args.noise.split(",")):
      t = time.time()
      cov = coverage(design, noise, args.seeds, draws=args.draws, old_chinchilla=args.old_chinchilla)
      rows.append({"design": design, "noise": noise, "seeds": args.seeds, "coverage": cov})
      print(f"{design} noise {noise:.1%}: {time.time() - t:.0f} s", flush=True)
      if args.json:  # after every row, so a long run that stops keeps what it measured
        with open(args.json, "w") as fh:
          json.dump(rows, fh, indent=1)
  print(format_table(rows))
  print(f"{args.seeds} seeds per row, {time.time() - start:.0f} s in all")
  return verdict(rows)


def verdict(rows) -> int:
  """1 (and a line naming them) if a judged interval's coverage lies outside BAND, else 0."""
  bad = [(r["design"], r["noise"], k) for r in rows for k, c in r["coverage"].items()
         if not k.endswith("failure_rate") and not k.startswith("old_") and judgeable(c) and not in_band(c)]
  print("every judged interval within the band" if not bad else f"outside the band: {bad}")
  return 1 if bad else 0


if __name__ == "__main__":
  raise SystemExit(main())
