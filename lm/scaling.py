"""Scaling-law fits on results tables, with intervals that mean what they say.

    python -m lm.scaling fit --results=TABLE.csv --law={kaplan,saturating,isoflop,chinchilla} --out=FIT.json
        [--params=params_nonembedding|params_total] [--flops=flops_executed|flops_exact|flops_6n]
        [--loss=eval_loss (any metric column)] [--bootstrap=200] [--seed=0]
    python -m lm.scaling plan --fit=FIT.json (--flops=C | --device_hours=H --device=h100 [--mfu=0.4 --mfu_flops=...])
    python -m lm.scaling backtest --results=TABLE.csv --law=chinchilla --holdout=largest_budget [--json=OUT]
    python -m lm.scaling plot --results=TABLE.csv --out_dir=DIR [--fit=FIT.json ...]
    python -m lm.scaling report --results=TABLE.csv --out_dir=DIR
(the command line is lm/scaling_cli.py; tables lm/scaling_table.py; plans lm/scaling_plan.py;
backtests lm/scaling_backtest.py; figures and the Markdown report lm/scaling_plots.py,
lm/scaling_report.py).

The laws, with N parameters, D training tokens, C training FLOPs, L loss (or any metric):
  kaplan      L(N) = (N_c / N)^alpha                 Kaplan et al. (2020), eq. 1.1
  saturating  L(N) = E + A / N^alpha                 the same with an irreducible loss
  isoflop     per budget a parabola of L in log N (and in log D); then
              N_opt = N_coef C^a, D_opt = D_coef C^b  Hoffmann et al. (2022), Approach 2
  chinchilla  L(N, D) = E + A / N^alpha + B / D^beta  Approach 3, a = beta / (alpha + beta)
The N-only laws take each model size's best run; the others take every run.

Definitions (docs/conventions.md, Parameters and FLOPs; lm/scaling_table.py): every fit states which N and
which C it used, by default the non-embedding N and C = flops_executed (the FLOPs that
run), and a pair that counts different things (non-embedding N with flops_exact's
embedding matmul, say) is refused with the flags that fix it.

Intervals (95%): chinchilla's are profile-likelihood intervals (lm/scaling_lnd.py), with
the L(N, D) profile over E in FIT.json and prediction intervals for new runs; isoflop's a
parametric bootstrap of Approach 2 on the table's own design from the L(N, D) fit, its
design bias re-estimated in every draw (lm/scaling_isoflop.py); the N-only laws' a
bootstrap of the best runs. The noise comes from seed replicates when the table has them
and from the residuals otherwise. Every bootstrap counts its failed draws and refuses to
print an interval when more than MAX_FAILURE_RATE fail (lm/scaling_isoflop.py says why
5%). lm/scaling_coverage.py measures that each interval covers the truth 90-99% of the
time.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from lm import flops as flops_lib
from lm import ladder, scaling_huber, scaling_isoflop, scaling_lnd
from lm.scaling_lnd import chinchilla_loss  # noqa: F401  (this module's interface, with the table's below)
from lm.scaling_table import (BUDGET_GAP_DECADES, DEFAULT_FLOPS, DEFAULT_PARAMS, DEFINITIONS, FLOPS_COLUMNS,  # noqa: F401
                              PAIRS, PARAMS_COLUMNS, FitError, check_definitions, definitions, group_budgets,
                              load_results, noise, pair_flags, provenance, pure_error, read_table, same_definitions)

LAWS = ("kaplan", "saturating", "isoflop", "chinchilla")
CONFIDENCE = 0.95
MAX_FAILURE_RATE = scaling_isoflop.MAX_FAILURE_RATE
# ---- fits ----

def _frontier(runs):
  """Each model size's best run (for the N-only laws)."""
  return runs.loc[runs.groupby("N")["loss"].idxmin()]


def fit_kaplan(n, loss):
  """Least squares in log-log: log L = alpha log N_c - alpha log N."""
  slope, intercept = np.polyfit(np.log(n), np.log(loss), 1)
  alpha = -slope
  return {"alpha": float(alpha), "N_c": math.exp(intercept / alpha)}


def _fit_n_only(law, runs, n_starts=None, warm=None):
  best = _frontier(runs)
  if best["N"].nunique() < 3:
    raise FitError(f"{best['N'].nunique()} model sizes; an N-only law needs at least 3.")
  if law == "kaplan":
    return fit_kaplan(best["N"].to_numpy(), best["loss"].to_numpy()), None
  return scaling_huber.fit_saturating(best["N"].to_numpy(), best["loss"].to_numpy(), n_starts,
                                      [] if warm is None else [warm])


def _percentiles(samples: dict, confidence: float) -> dict:
  tail = (1 - confidence) / 2 * 100
  return {k: [float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))] for k, v in samples.items() if v}


def _fit_n_only_with_bootstrap(law, runs, bootstrap, seed, n_starts, bootstrap_starts, confidence):
  """N-only laws: a bootstrap of each size's best run, failures counted."""
  params, theta = _fit_n_only(law, runs, n_starts)
  rng = np.random.default_rng(seed)
  best = _frontier(runs)
  samples, failed = {k: [] for k in params}, 0
  for _ in range(bootstrap):
    resample = best.iloc[rng.integers(0, len(best), len(best))]
    try:
      p, _ = _fit_n_only(law, resample, bootstrap_starts, theta)
    except (FitError, np.linalg.LinAlgError):
      failed += 1  # a resample with fewer than 3 distinct sizes
      continue
    for k in samples:
      samples[k].append(float(p[k]))
  out = {"params": {k: float(v) for k, v in params.items()}, "n_sizes": int(runs["N"].nunique()),
         "interval_method": "percentile bootstrap of each size's best run"}
  out.update(_bootstrap_record(samples, bootstrap, failed, confidence))
  return out


def _bootstrap_record(samples, draws, failed, confidence, intervals=None):
  rate = failed / draws if draws else 0.0
  refused = None
  if draws and rate > MAX_FAILURE_RATE:
    refused = (f"{failed} of {draws} bootstrap draws ({rate:.0%}) could not be fitted, above the "
               f"{MAX_FAILURE_RATE:.0%} a 95% interval can lose (lm/scaling_isoflop.py)")
  if intervals is None:
    intervals = {} if refused else _percentiles(samples, confidence)
  return {"intervals": intervals, "bootstrap": samples, "n_bootstrap": draws, "n_bootstrap_ok": draws - failed,
          "n_bootstrap_failed": failed, "failure_rate": rate, "refused": refused}


def _fit_chinchilla(runs, bootstrap, seed, confidence):
  problem = scaling_lnd.Problem(runs["N"], runs["D"], runs["loss"])
  s_min, p = scaling_lnd.fit(problem)
  nz = noise(runs, s_min, scaling_lnd.N_PARAMS)
  iv = scaling_lnd.intervals(problem, s_min, p, nz["s2"], nz["df"], confidence)
  # Parametric bootstrap draws, for bands of the frontier (scaling_plan): losses from the
  # fit with the measured noise, refitted from a coarse grid.
  rng = np.random.default_rng(seed)
  samples = {k: [] for k in p}
  mean = chinchilla_loss(p, problem.n, problem.d)
  for sigma in np.sqrt(nz["s2"] * nz["df"] / rng.chisquare(nz["df"], bootstrap)):
    y = mean * np.exp(sigma * rng.standard_normal(problem.size))
    _, q = scaling_lnd.fit(scaling_lnd.Problem(problem.n, problem.d, y), points=40)
    for k in samples:
      samples[k].append(float(q[k]))
  out = {"params": p, "interval_method": "profile likelihood, F(1, nu) threshold (lm/scaling_lnd.py)",
         "bounded": {k: v["bounded"] for k, v in iv.items()}, "noise": nz, "sum_sq": s_min,
         "e_profile": scaling_lnd.e_profile(problem, p),
         "band_method": "basic parametric bootstrap: 2 g(fit) - g(draw)",
         "flops_per_param_token": float(np.median(runs["C"] / (runs["N"] * runs["D"]))),
         # The runs themselves (a few dozen numbers), so a plan can give a prediction interval.
         "data": {k: [float(x) for x in runs[k]] for k in ("N", "D", "loss")}}
  out.update(_bootstrap_record(samples, bootstrap, 0, confidence, {k: v["interval"] for k, v in iv.items()}))
  return out


def _fit_isoflop(runs, bootstrap, seed, confidence):
  spread = runs.groupby("budget")["C"].agg(lambda c: float(np.log10(c.max() / c.min())))
  wide = spread[spread > BUDGET_GAP_DECADES]
  if len(wide):
    d = runs.attrs.get("definitions", {}).get("C", "this C")
    sweep = runs.attrs.get("sweep_flops_definition")
    raise FitError(f"budget(s) {[f'{b:.3g}' for b in wide.index]} span {wide.max():.2f} decades of C={d}, more than "
                   f"{BUDGET_GAP_DECADES}: an IsoFLOP parabola needs one C per budget. "
                   + (f"The sweep budgeted in {sweep[0]}: fit with {pair_flags(sweep[0])}, or re-run it budgeted "
                      f"in {d}." if sweep else "Give the runs one budget each (a flops_budget column)."))
  try:
    params, mins = scaling_isoflop.estimate(runs)
  except scaling_isoflop.IsoflopError as e:
    raise FitError(str(e)) from None
  out = {"params": params, "budgets": mins, "interval_method": "parametric bootstrap of Approach 2 on the table's "
         "design from the L(N, D) fit, its design bias re-estimated in every draw (lm/scaling_isoflop.py)"}
  if not bootstrap:
    return {**out, **_bootstrap_record({k: [] for k in params}, 0, 0, confidence)}
  problem = scaling_lnd.Problem(runs["N"], runs["D"], runs["loss"])
  s_min, law = scaling_lnd.fit(problem)
  nz = noise(runs, s_min, scaling_lnd.N_PARAMS)
  bs = scaling_isoflop.bootstrap(runs, law, nz["s2"], nz["df"], bootstrap, seed, confidence)
  out.update(simulating_law=law, noise=nz, bias=bs["bias"], law_exponents=bs["law_exponents"],
             estimate_corrected=bs["estimate_corrected"])
  record = _bootstrap_record(bs["samples"] or {k: [] for k in params}, bootstrap, bs["n_failed"], confidence,
                             bs["intervals"])
  record["refused"] = bs["refused"]
  return {**out, **record}


def fit(runs: pd.DataFrame, law: str, bootstrap: int = 200, seed: int = 0, n_starts: int | None = 128,
        bootstrap_starts: int = 4, confidence: float = CONFIDENCE) -> dict:
  """Fit `law` to the runs; the FIT.json dict (fit_table adds the provenance).

  `bootstrap` draws: for chinchilla, parametric draws for the frontier's bands (its
  intervals are profiles); for isoflop, the simulated tables of its interval; for the
  N-only laws, resamples of the best runs (`n_starts`, `bootstrap_starts`: their Huber
  fits' starting points, lm/scaling_huber.py).
  """
  if law not in LAWS:
    raise FitError(f"unknown law {law!r}; use one of {LAWS}.")
  if law == "chinchilla":
    out = _fit_chinchilla(runs, bootstrap, seed, confidence)
  elif law == "isoflop":
    out = _fit_isoflop(runs, bootstrap, seed, confidence)
  else:
    out = _fit_n_only_with_bootstrap(law, runs, bootstrap, seed, n_starts, bootstrap_starts, confidence)
  attrs = runs.attrs or {}
  return {"law": law, **out, "confidence": confidence, "n_points": int(len(runs)), "seed": seed,
          "definitions": attrs.get("definitions"), "family": attrs.get("family"),
          "fitted_range": {k: [float(runs[k].min()), float(runs[k].max())] for k in ("N", "D", "C")},
          "design": {"budgets": sorted(float(b) for b in runs["budget"].unique()), "sizes": int(runs["N"].nunique()),
                     "replicated_runs": int((runs.get("replicate", pd.Series([-1])) >= 0).sum())},
          "flops_per_token_fit": _flops_per_token_fit(runs)}


def _flops_per_token_fit(runs) -> list[float]:
  """[slope, intercept] of log(C / D) against log N over the runs: the FLOPs a token costs
  as a power of N, for allocations on tables without a vocabulary (no family)."""
  return [float(x) for x in np.polyfit(np.log(runs["N"]), np.log(runs["C"] / runs["D"]), 1)]


def fit_table(results, law, params=DEFAULT_PARAMS, flops=DEFAULT_FLOPS, loss="eval_loss", status="finished",
              **kw) -> dict:
  """load_results + fit, with the provenance and settings FIT.json records."""
  runs = load_results(results, params, flops, loss, status or None)
  out = fit(runs, law, **kw)
  return {**out, "params_column": params, "flops_column": flops, "loss_column": loss,
          "settings": {"law": law, "status": status, **kw}, "provenance": provenance(results)}


# ---- compute-optimal allocation ----

def family_flops(fit_json: dict):
  """(log N, log FLOPs per token) along the model family the fit plans for: lm/ladder.py's
  size rule at the table's vocabulary and sequence length, every width with whole heads,
  counted in the fit's own N and C definitions. Without a family (a table with no
  vocab_size / seq_len, or several), the table's own power law of FLOPs per token in N."""
  fam, d = fit_json.get("family"), fit_json.get("definitions")
  if fam and d:
    rows = [ladder.model_config(w, fam["vocab_size"], fam["seq_len"]) for w in ladder.widths()]
    n = np.array([getattr(flops_lib, d["N"])(m) for m in rows], float)
    c = np.array([flops_lib.flops_per_token(m, fam["seq_len"], d["C"]) for m in rows], float)
    order = np.argsort(n)
    return np.log(n[order]), np.log(c[order])
  slope, intercept = fit_json.get("flops_per_token_fit") or (1.0, math.log(fit_json.get("flops_per_param_token", 6.0)))
  log_n = np.linspace(math.log(1e3), math.log(1e12), 400)
  return log_n, intercept + slope * log_n


def optimal_allocation(fit_json: dict, flops, params: dict | None = None, family=None):
  """(N_opt, D_opt) at training FLOPs `flops` under a fit (or its `params` override, e.g.
  one bootstrap draw). Chinchilla fits minimise L(N, C / FLOPs-per-token(N)) along the
  family (family_flops), so every size converts C to tokens with its own FLOPs per token."""
  p = params or fit_json["params"]
  c = np.asarray(flops, dtype=float)
  if fit_json["law"] == "isoflop":
    return p["N_coef"] * c ** p["a"], p["D_coef"] * c ** p["b"]
  if fit_json["law"] == "chinchilla":
    log_n_f, log_fpt_f = family or family_flops(fit_json)
    log_n = np.linspace(log_n_f[0], log_n_f[-1], 3000)
    log_fpt = np.interp(log_n, log_n_f, log_fpt_f)
    log_d = np.log(c)[..., None] - log_fpt  # [..., sizes]
    loss = chinchilla_loss(p, np.exp(log_n), np.exp(log_d))
    k = np.argmin(loss, axis=-1)
    return np.exp(log_n[k]), np.exp(np.take_along_axis(log_d, k[..., None], -1)[..., 0])
  raise FitError(f"a {fit_json['law']} fit has no data term, so no compute-optimal allocation; "
                 "fit --law=isoflop or --law=chinchilla to plan.")


def bootstrap_band(fit_json: dict, flops, of=lambda n, d: (n, d)):
  """(lo, hi) of of(N_opt, D_opt) at `flops` over the fit's bootstrap draws; None when it
  has none or its interval was refused. Chinchilla's draws are pivoted (2 g(fit) - g(draw)
  in log space, the basic bootstrap); isoflop's are stored pivoted already."""
  samples = fit_json.get("bootstrap") or {}
  count = len(next(iter(samples.values()), []))
  if not count or fit_json.get("refused"):
    return None
  family = family_flops(fit_json) if fit_json["law"] == "chinchilla" else None
  draws = np.log(np.stack([np.asarray(of(*optimal_allocation(fit_json, flops, {k: v[i] for k, v in samples.items()},
                                                              family))) for i in range(count)]))
  if fit_json.get("band_method", "").startswith("basic"):
    draws = 2 * np.log(np.asarray(of(*optimal_allocation(fit_json, flops, None, family)))) - draws
  tail = (1 - fit_json["confidence"]) / 2 * 100
  return np.exp(np.percentile(draws, tail, axis=0)), np.exp(np.percentile(draws, 100 - tail, axis=0))


def allocation_band(fit_json: dict, flops):
  """Band of (N_opt, D_opt) over the bootstrap draws: arrays lo_N, hi_N, lo_D, hi_D."""
  band = bootstrap_band(fit_json, flops)
  if band is None:
    return None
  (lo_n, lo_d), (hi_n, hi_d) = band
  return lo_n, hi_n, lo_d, hi_d


def predicted_loss(fit_json: dict, n, d):
  if fit_json["law"] != "chinchilla":
    return None
  return chinchilla_loss(fit_json["params"], n, d)


def prediction_interval(fit_json: dict, n: float, d: float) -> list[float] | None:
  """The fit's confidence-level interval for the loss one new run at (n, d) would measure,
  its noise included (lm/scaling_lnd.py); None for laws without L(N, D) or FIT.json files
  without their runs."""
  if fit_json["law"] != "chinchilla" or "data" not in fit_json:
    return None
  data, nz = fit_json["data"], fit_json["noise"]
  problem = scaling_lnd.Problem(data["N"], data["D"], data["loss"])
  return scaling_lnd.prediction_interval(problem, fit_json["sum_sq"], fit_json["params"], nz["s2"], nz["df"], n, d,
                                         fit_json["confidence"])


if __name__ == "__main__":
  # `python -m lm.scaling ...` runs this file as __main__. The command line lives in
  # lm/scaling_cli.py because its plot and report commands draw with lm/scaling_plots.py,
  # which imports this module; importing the CLI here, only when run as a script, keeps
  # the library free of that cycle.
  import sys
  from lm import scaling_cli
  sys.exit(scaling_cli.main())
