"""Backtests: fit without some runs, predict them, and say whether each truth fell inside its interval.

    python -m lm.scaling backtest --results=TABLE.csv --law=chinchilla --holdout=largest_budget [--json=OUT.json]

Hold-out rules (`--holdout`):
  largest_budget   every run of the largest budget (the extrapolation a plan makes in C)
  largest_rung     every run of the largest model (the extrapolation in N)
  COLUMN OP VALUE  e.g. 'C>=1e12', 'N>2e5', 'D<1e6': runs with N, D or C beyond a value
chinchilla predicts each held-out run's loss with a 95% prediction interval (the law's
uncertainty and the run's own noise, lm/scaling_lnd.py). isoflop predicts each held-out
budget's N_opt and D_opt; the truth there is that budget's own parabola vertex, itself
noisy, and the interval is the fit's band for the line (the line's uncertainty only), so
its misses overstate the line's error.
"""

from __future__ import annotations

import operator
import re

import numpy as np
import pandas as pd

from lm import scaling, scaling_isoflop, scaling_lnd
from lm.scaling import FitError

_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
RULES = ("largest_budget", "largest_rung")


def holdout_mask(runs: pd.DataFrame, rule: str) -> np.ndarray:
  """Which runs a rule holds out (module docstring)."""
  if rule == "largest_budget":
    return (runs["budget"] == runs["budget"].max()).to_numpy()
  if rule == "largest_rung":
    return (runs["N"] == runs["N"].max()).to_numpy()
  m = re.fullmatch(r"\s*([NDC])\s*(>=|<=|>|<)\s*([0-9.eE+-]+)\s*", rule)
  if not m:
    raise FitError(f"--holdout={rule!r}: use one of {RULES} or a rule like 'C>=1e12' (N, D or C; >, >=, <, <=).")
  column, op, value = m.group(1), m.group(2), float(m.group(3))
  return _OPS[op](runs[column], value).to_numpy()


def backtest(runs: pd.DataFrame, law: str, holdout: str, bootstrap: int = 200, seed: int = 0,
             confidence: float = scaling.CONFIDENCE) -> dict:
  """The fit on the kept runs, and a prediction with an interval for each held-out one."""
  mask = holdout_mask(runs, holdout)
  if not mask.any() or mask.all():
    raise FitError(f"--holdout={holdout!r} holds out {int(mask.sum())} of {len(runs)} runs; it must leave some on "
                   "each side.")
  kept, held = runs[~mask].copy(), runs[mask]
  kept.attrs = runs.attrs
  if law not in ("chinchilla", "isoflop"):
    raise FitError(f"backtests predict with chinchilla or isoflop fits, not {law!r}.")
  definitions = (runs.attrs or {}).get("definitions")
  out = {"law": law, "holdout": holdout, "n_fitted": int(len(kept)), "n_held_out": int(len(held)),
         "definitions": definitions, "confidence": confidence}
  if law == "chinchilla":
    # The prediction intervals need the fit and its noise only, not the parameters' profiles.
    problem = scaling_lnd.Problem(kept["N"], kept["D"], kept["loss"])
    s_min, params = scaling_lnd.fit(problem)
    nz = scaling.noise(kept, s_min, scaling_lnd.N_PARAMS)
    out.update(fit_params=params, noise=nz)
    rows = []
    for _, r in held.iterrows():
      pred = float(scaling_lnd.chinchilla_loss(params, r["N"], r["D"]))
      lo, hi = scaling_lnd.prediction_interval(problem, s_min, params, nz["s2"], nz["df"], r["N"], r["D"], confidence)
      rows.append({"N": float(r["N"]), "D": float(r["D"]), "C": float(r["C"]), "loss": float(r["loss"]),
                   "predicted": pred, "interval": [lo, hi], "relative_error": pred / r["loss"] - 1,
                   "inside": bool(lo <= r["loss"] <= hi)})
  else:
    f = scaling.fit(kept, law, bootstrap=bootstrap, seed=seed, confidence=confidence)
    out["fit_params"] = f["params"]
    rows = []
    held_minima = scaling_isoflop.minima(held)
    for m in held_minima:
      row = {"budget": m["budget"], "C": m["C"], "n_runs": m["n_runs"], "used": m["used"]}
      n_pred, d_pred = (float(x) for x in scaling.optimal_allocation(f, m["C"]))
      row.update(N_predicted=n_pred, D_predicted=d_pred)
      band = scaling.allocation_band(f, m["C"])
      if band is not None:
        lo_n, hi_n, lo_d, hi_d = (float(x) for x in band)
        row.update(N_interval=[lo_n, hi_n], D_interval=[lo_d, hi_d])
      if m["used"]:
        row.update(N_observed=m["N_opt"], D_observed=m["D_opt"], relative_error=n_pred / m["N_opt"] - 1)
        if band is not None:
          row["inside"] = bool(lo_n <= m["N_opt"] <= hi_n and lo_d <= m["D_opt"] <= hi_d)
      rows.append(row)
    out["refused"] = f.get("refused")
  out["predictions"] = rows
  judged = [r["inside"] for r in rows if "inside" in r]
  errors = [abs(r["relative_error"]) for r in rows if "relative_error" in r]
  out["summary"] = {"inside": int(sum(judged)), "judged": len(judged),
                    "mean_abs_relative_error": float(np.mean(errors)) if errors else None}
  return out


def format_backtest(b: dict) -> str:
  d = b.get("definitions") or {}
  lines = [f"{b['law']} backtest, holdout {b['holdout']}: fitted on {b['n_fitted']} runs, {b['n_held_out']} held out "
           f"(N = {d.get('N')}, C = {d.get('C')}, loss = {d.get('loss')})"]
  pct = f"{b['confidence']:.0%}"
  for r in b["predictions"]:
    if b["law"] == "chinchilla":
      lines.append(f"  N {r['N']:.3g}  D {r['D']:.3g}  C {r['C']:.3g}: observed {r['loss']:.4g}, predicted "
                   f"{r['predicted']:.4g} [{r['interval'][0]:.4g}, {r['interval'][1]:.4g}] ({r['relative_error']:+.1%}) "
                   f"{'inside' if r['inside'] else 'OUTSIDE'} its {pct} prediction interval")
    else:
      iv = (f" [{r['N_interval'][0]:.3g}, {r['N_interval'][1]:.3g}]" if "N_interval" in r else " (no interval)")
      obs = (f"observed N_opt {r['N_observed']:.3g} ({r['relative_error']:+.0%})" if r["used"]
             else "no bracketed minimum to compare")
      verdict = "" if "inside" not in r else (" inside" if r["inside"] else " OUTSIDE")
      lines.append(f"  budget C {r['C']:.3g}: predicted N_opt {r['N_predicted']:.3g}{iv}, {obs}{verdict}")
  s = b["summary"]
  err = "n/a" if s["mean_abs_relative_error"] is None else f"{s['mean_abs_relative_error']:.1%}"
  lines.append(f"  {s['inside']} of {s['judged']} inside; mean |relative error| {err}")
  if b.get("refused"):
    lines.append(f"  no interval: {b['refused']}")
  return "\n".join(lines)
