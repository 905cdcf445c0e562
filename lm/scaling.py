"""Scaling-law fits and compute-optimal planning.

    python -m lm.scaling fit --results=TABLE.csv --law={kaplan,saturating,isoflop,chinchilla} --out=FIT.json
        [--params=params_nonembedding|params_total] [--flops=flops_6n|flops_exact] [--loss=eval_loss]
        [--bootstrap=200] [--seed=0]
    python -m lm.scaling plan --fit=FIT.json (--flops=C | --device_hours=H --device=h100 [--mfu=0.4])
    python -m lm.scaling plot --results=TABLE.csv --out_dir=DIR [--fit=FIT.json ...]

The laws, with N parameters, D training tokens, C training FLOPs, L loss:
  kaplan      L(N) = (N_c / N)^alpha                 Kaplan et al. (2020), eq. 1.1
  saturating  L(N) = E + A / N^alpha                 the same with an irreducible loss
  isoflop     per budget a parabola of L in log N (and in log D); then
              N_opt = N_coef C^a, D_opt = D_coef C^b  Hoffmann et al. (2022), Approach 2
  chinchilla  L(N, D) = E + A / N^alpha + B / D^beta  Approach 3: Huber (delta 1e-3) on
              log L, L-BFGS from a grid of initialisations (section 3.3, Appendix D.2);
              a = beta / (alpha + beta), b = alpha / (alpha + beta)
The N-only laws take each model size's best run (Kaplan's L(N) is for models trained to
convergence); the others take every run. Intervals are 95% percentile bootstraps over
resampled runs (within each budget for isoflop), seeded; the samples are kept in FIT.json
so plans and plots can draw bands. Results tables follow design.md section 6, where the
flops_* columns are the total training FLOPs of a run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys

import numpy as np
import pandas as pd
from scipy import optimize, special

LAWS = ("kaplan", "saturating", "isoflop", "chinchilla")
PARAMS_COLUMNS = ("params_nonembedding", "params_total")
FLOPS_COLUMNS = ("flops_6n", "flops_exact")
HUBER_DELTA = 1e-3
# Hoffmann et al. Appendix D.2: alpha, beta in {0, 0.5, ..., 2}, e in {-1, -.5, ..., 1},
# a, b in {0, 5, ..., 25}: 5 * 5 * 5 * 6 * 6 = 4500 starting points.
GRID = {"exponent": np.arange(0, 2.01, 0.5), "e": np.arange(-1, 1.01, 0.5), "log_coef": np.arange(0, 25.1, 5)}
CONFIDENCE = 0.95
BUDGET_GAP_DECADES = 0.1  # runs whose FLOPs differ by more than this start a new budget


class FitError(ValueError):
  """A table or a fit that cannot give an answer; the message says why."""


# ---- the results table ----

def load_results(path: str, params: str = "params_nonembedding", flops: str = "flops_6n",
                 loss: str = "eval_loss", status: str | None = "finished") -> pd.DataFrame:
  """The runs of a results table as columns N, D, C, loss and budget (a budget id).

  A `flops_budget` column (a sweep's nominal budget) groups IsoFLOP runs; without one,
  runs (and rows whose flops_budget is empty: standalone runs) are grouped by their FLOPs (group_budgets). A budget's C is the geometric mean of
  its runs' `flops` column, so fit with the definition the sweep was budgeted in: at
  CPU scale flops_exact is 1.3x (p10m) to 7x (p50k) flops_6n, so one 6N budget spans
  a wide range of exact FLOPs.
  """
  if params not in PARAMS_COLUMNS or flops not in FLOPS_COLUMNS:
    raise FitError(f"--params must be one of {PARAMS_COLUMNS} and --flops one of {FLOPS_COLUMNS}.")
  table = pd.read_parquet(path) if str(path).endswith(".parquet") else pd.read_csv(path)
  missing = [c for c in (params, flops, loss, "tokens") if c not in table.columns]
  if missing:
    raise FitError(f"{path} has no column(s) {missing}; its columns are {list(table.columns)}.")
  if status and "status" in table.columns:
    table = table[table["status"] == status]
  runs = pd.DataFrame({"N": table[params], "D": table["tokens"], "C": table[flops], "loss": table[loss]})
  if "flops_budget" in table.columns:
    runs["budget"] = table["flops_budget"]
  runs = runs.dropna(subset=["N", "D", "C", "loss"])
  runs = runs[(runs[["N", "D", "C", "loss"]] > 0).all(axis=1)].reset_index(drop=True)
  if len(runs) < 3:
    raise FitError(f"{path}: {len(runs)} usable runs (status={status!r}, positive {params}, tokens, "
                   f"{flops}, {loss}); a fit needs at least 3.")
  if "budget" not in runs:
    runs["budget"] = group_budgets(runs["C"].to_numpy())
  elif runs["budget"].isna().any():  # standalone runs collected beside sweep points: grouped by their FLOPs
    free = runs["budget"].isna()
    runs.loc[free, "budget"] = group_budgets(runs.loc[free, "C"].to_numpy())
  return runs


def group_budgets(c: np.ndarray) -> np.ndarray:
  """A budget label per run: runs whose FLOPs lie within BUDGET_GAP_DECADES of the next
  smaller run share one; the label is the group's geometric-mean FLOPs."""
  order = np.argsort(c)
  log_c = np.log10(c[order])
  group = np.concatenate([[0], np.cumsum(np.diff(log_c) > BUDGET_GAP_DECADES)])
  labels = np.empty(len(c))
  for g in np.unique(group):
    labels[order[group == g]] = 10 ** log_c[group == g].mean()
  return labels


# ---- log-space Huber fits of sums of power laws (saturating, chinchilla) ----

def _lse_residuals(theta, log_x, log_loss):
  """theta = [a_1..a_k, alpha_1..alpha_k, e] (or a batch of them, [..., 2k + 1]); the
  prediction is log(sum_i e^(a_i - alpha_i log x_i) + e^e) for each run."""
  k = len(log_x)
  theta = np.asarray(theta)[..., None]  # broadcast against the runs
  terms = [theta[..., i, :] - theta[..., k + i, :] * log_x[i] for i in range(k)]
  stacked = np.stack(terms + [np.broadcast_to(theta[..., -1, :], terms[0].shape)])
  top = stacked.max(axis=0)
  exp = np.exp(stacked - top)
  total = exp.sum(axis=0)
  return top + np.log(total) - log_loss, exp / total  # residuals, softmax weights of the terms


def _huber_objective(theta, log_x, log_loss, delta):
  r, w = _lse_residuals(theta, log_x, log_loss)
  dr = np.clip(r, -delta, delta)  # d huber / d r
  k = len(log_x)
  grad = np.concatenate([[dr @ w[i] for i in range(k)], [-(dr * w[i]) @ log_x[i] for i in range(k)], [dr @ w[k]]])
  return special.huber(delta, r).sum(), grad


def _grid(k: int) -> np.ndarray:
  """Starting points for k power-law terms: [a_1..a_k, alpha_1..alpha_k, e]."""
  axes = [GRID["log_coef"]] * k + [GRID["exponent"]] * k + [GRID["e"]]
  return np.array(list(itertools.product(*axes)))


def _huber_fit(log_x, log_loss, n_starts=None, extra_starts=(), delta=HUBER_DELTA):
  """L-BFGS from the best `n_starts` grid points (all 4500 for chinchilla when None) plus
  `extra_starts`; the lowest final objective wins."""
  starts = _grid(len(log_x))
  if n_starts and n_starts < len(starts):  # rank the grid by its starting objective
    r, _ = _lse_residuals(starts, log_x, log_loss)
    starts = starts[np.argsort(special.huber(delta, r).sum(axis=1))[:n_starts]]
  starts = np.concatenate([np.asarray(list(extra_starts)).reshape(-1, starts.shape[1]), starts])
  best = None
  # local: threadpoolctl sets KMP_DUPLICATE_LIB_OK in os.environ when imported, and importing
  # lm changes no process state (tests/test_process_flags.py)
  from threadpoolctl import threadpool_limits
  with threadpool_limits(limits=1, user_api="blas"):  # see _minimize
    for x0 in starts:
      res = _minimize(x0, log_x, log_loss, delta)
      if best is None or res.fun < best.fun:
        best = res
  return best.x


def _minimize(x0, log_x, log_loss, delta):
  """One L-BFGS run. Callers limit BLAS to one thread: scipy's L-BFGS-B makes BLAS calls
  on 5 x 5 matrices, and OpenBLAS's thread hand-offs made each iteration ~1 ms instead
  of ~0.05 ms on a busy 2-core host (2.0 s against 0.11 s for 20 fits).

  Tight tolerances: the objective is ~1e-4 (1% residuals in Huber's linear part), where
  scipy's defaults (ftol 2e-9, gtol 1e-5) stop L-BFGS early, next to its start (the
  failure Besiroglu et al. 2024 found in Hoffmann et al.'s fit); early stops near the warm
  start made the bootstrap intervals here 1.5x too narrow.
  """
  return optimize.minimize(_huber_objective, x0, args=(log_x, log_loss, delta), jac=True, method="L-BFGS-B",
                           options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 2000})


def fit_saturating(n, loss, n_starts=None, extra_starts=()):
  theta = _huber_fit([np.log(n)], np.log(loss), n_starts, extra_starts)
  return {"E": math.exp(theta[2]), "A": math.exp(theta[0]), "alpha": theta[1]}, theta


def fit_chinchilla(n, d, loss, n_starts=None, extra_starts=()):
  theta = _huber_fit([np.log(n), np.log(d)], np.log(loss), n_starts, extra_starts)
  p = {"E": math.exp(theta[4]), "A": math.exp(theta[0]), "B": math.exp(theta[1]),
       "alpha": theta[2], "beta": theta[3]}
  return {**p, **chinchilla_optimum_exponents(p)}, theta


def chinchilla_optimum_exponents(p) -> dict:
  """Minimising L(N, C / (k N)) gives N_opt = G (C/k)^a, D_opt = (C/k)^b / G (Hoffmann eq. 4)."""
  s = p["alpha"] + p["beta"]
  return {"a": p["beta"] / s, "b": p["alpha"] / s,
          "G": (p["alpha"] * p["A"] / (p["beta"] * p["B"])) ** (1 / s)}


def fit_kaplan(n, loss):
  """Least squares in log-log: log L = alpha log N_c - alpha log N."""
  slope, intercept = np.polyfit(np.log(n), np.log(loss), 1)
  alpha = -slope
  return {"alpha": alpha, "N_c": math.exp(intercept / alpha)}


# ---- IsoFLOP profiles (Approach 2) ----

def parabola_minimum(x, loss):
  """Vertex of a least-squares parabola loss(x); None unless it opens upward and lies
  within the x that were run (an unbracketed minimum is an extrapolation)."""
  if len(np.unique(x)) < 3:
    return None
  c2, c1, c0 = np.polyfit(x, loss, 2)
  if c2 <= 0:
    return None
  x_min = -c1 / (2 * c2)
  if not x.min() <= x_min <= x.max():
    return None
  return x_min, c0 + c1 * x_min + c2 * x_min ** 2, (c2, c1, c0)


def isoflop_minima(runs: pd.DataFrame) -> list[dict]:
  """Per budget: the loss-minimising N and D from parabolas in log10 N and log10 D."""
  out = []
  for budget, g in runs.groupby("budget"):
    n_fit = parabola_minimum(np.log10(g["N"].to_numpy()), g["loss"].to_numpy())
    d_fit = parabola_minimum(np.log10(g["D"].to_numpy()), g["loss"].to_numpy())
    row = {"budget": float(budget), "C": float(np.exp(np.log(g["C"]).mean())), "n_runs": len(g),
           "used": n_fit is not None and d_fit is not None}
    if row["used"]:
      row.update(N_opt=10 ** n_fit[0], D_opt=10 ** d_fit[0], loss_opt=n_fit[1],
                 parabola_N=list(n_fit[2]), parabola_D=list(d_fit[2]))
    out.append(row)
  return out


def fit_isoflop(runs: pd.DataFrame):
  minima = isoflop_minima(runs)
  used = [m for m in minima if m["used"]]
  if len(used) < 2:
    raise FitError(f"{len(used)} of {len(minima)} budgets have a bracketed minimum (>= 3 model sizes with "
                   "the lowest loss inside the range run); the power laws need at least 2.")
  log_c = np.log([m["C"] for m in used])
  a, log_n0 = np.polyfit(log_c, np.log([m["N_opt"] for m in used]), 1)
  b, log_d0 = np.polyfit(log_c, np.log([m["D_opt"] for m in used]), 1)
  return {"a": a, "b": b, "N_coef": math.exp(log_n0), "D_coef": math.exp(log_d0)}, minima


# ---- one entry point for every law, with bootstrap intervals ----

def _frontier(runs):
  """Each model size's best run (for the N-only laws)."""
  return runs.loc[runs.groupby("N")["loss"].idxmin()]


def _fit_once(law, runs, n_starts=None, warm=None):
  """(parameters, extras) of one law on one table; `warm` seeds the Huber fits."""
  extra = [] if warm is None else [warm]
  if law == "kaplan":
    best = _frontier(runs)
    return fit_kaplan(best["N"].to_numpy(), best["loss"].to_numpy()), {}
  if law == "saturating":
    best = _frontier(runs)
    p, theta = fit_saturating(best["N"].to_numpy(), best["loss"].to_numpy(), n_starts, extra)
    return p, {"theta": theta}
  if law == "chinchilla":
    p, theta = fit_chinchilla(runs["N"].to_numpy(), runs["D"].to_numpy(), runs["loss"].to_numpy(), n_starts, extra)
    return p, {"theta": theta}
  if law == "isoflop":
    p, minima = fit_isoflop(runs)
    return p, {"budgets": minima}
  raise FitError(f"unknown law {law!r}; use one of {LAWS}.")


def _resample(runs, rng, law):
  if law == "isoflop":  # within each budget, so every budget keeps its runs' count
    return pd.concat([g.iloc[rng.integers(0, len(g), len(g))] for _, g in runs.groupby("budget")])
  if law in ("kaplan", "saturating"):
    best = _frontier(runs)
    return best.iloc[rng.integers(0, len(best), len(best))]
  return runs.iloc[rng.integers(0, len(runs), len(runs))]


def fit(runs: pd.DataFrame, law: str, bootstrap: int = 200, seed: int = 0, n_starts: int | None = 128,
        bootstrap_starts: int = 4) -> dict:
  """Fit `law` to the runs; returns the FIT.json dict (without the provenance fields).

  The Huber fits start L-BFGS from the `n_starts` grid points with the lowest starting
  objective (None: all 4500, as Hoffmann et al.; 45 s for the 24-run synthetic table,
  against ~1 s for 128, which found the same optimum). Bootstrap fits start from the
  full-data optimum plus the `bootstrap_starts` best grid points of each resample (200
  resamples: ~15 s); with tight tolerances they land where 16 cold starts per resample
  do, and their spread of alpha matched the scatter over fresh noise draws.
  """
  params, extras = _fit_once(law, runs, n_starts)
  rng = np.random.default_rng(seed)
  samples = {k: [] for k in params}
  for _ in range(bootstrap):
    try:
      p, _ = _fit_once(law, _resample(runs, rng, law), bootstrap_starts, extras.get("theta"))
    except (FitError, np.linalg.LinAlgError):
      continue  # a resample with too few distinct sizes or no bracketed minimum
    for k in samples:
      samples[k].append(float(p[k]))
  tail = (1 - CONFIDENCE) / 2 * 100
  intervals = {k: [float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))] for k, v in samples.items() if v}
  out = {"law": law, "params": {k: float(v) for k, v in params.items()}, "intervals": intervals,
         "confidence": CONFIDENCE, "n_points": int(len(runs)), "n_bootstrap": bootstrap,
         "n_bootstrap_ok": len(next(iter(samples.values()))), "seed": seed, "bootstrap": samples}
  if law == "chinchilla":
    out.update(huber_delta=HUBER_DELTA, n_starts=min(n_starts or math.inf, len(_grid(2))),
               flops_per_param_token=float(np.median(runs["C"] / (runs["N"] * runs["D"]))))
  if law == "isoflop":
    out["budgets"] = extras["budgets"]
  if law in ("kaplan", "saturating"):
    out["n_sizes"] = int(runs["N"].nunique())
  return out


# ---- compute-optimal allocation and planning ----

def optimal_allocation(fit_json: dict, flops, params: dict | None = None):
  """(N_opt, D_opt) at training FLOPs `flops` under a fit (or its `params` override, e.g.
  one bootstrap sample). Chinchilla fits convert FLOPs to N D with the table's own
  FLOPs per parameter-token (6 for flops_6n with non-embedding N)."""
  p = params or fit_json["params"]
  c = np.asarray(flops, dtype=float)
  if fit_json["law"] == "isoflop":
    return p["N_coef"] * c ** p["a"], p["D_coef"] * c ** p["b"]
  if fit_json["law"] == "chinchilla":
    e = chinchilla_optimum_exponents(p)
    x = c / fit_json["flops_per_param_token"]   # = N D
    n = e["G"] * x ** e["a"]
    return n, x / n
  raise FitError(f"a {fit_json['law']} fit has no data term, so no compute-optimal allocation; "
                 "fit --law=isoflop or --law=chinchilla to plan.")


def bootstrap_band(fit_json: dict, flops, of=lambda n, d: (n, d)):
  """Percentile band (lo, hi) over the bootstrap samples of of(N_opt, D_opt) at `flops`;
  None when the fit kept no samples."""
  samples = fit_json.get("bootstrap") or {}
  count = fit_json.get("n_bootstrap_ok", 0)
  if not count:
    return None
  values = np.stack([np.asarray(of(*optimal_allocation(fit_json, flops, {k: v[i] for k, v in samples.items()})))
                     for i in range(count)])
  tail = (1 - fit_json["confidence"]) / 2 * 100
  return np.percentile(values, tail, axis=0), np.percentile(values, 100 - tail, axis=0)


def allocation_band(fit_json: dict, flops):
  """Percentile band of (N_opt, D_opt) over the bootstrap samples: arrays lo_N, hi_N, lo_D, hi_D."""
  band = bootstrap_band(fit_json, flops)
  if band is None:
    return None
  (lo_n, lo_d), (hi_n, hi_d) = band
  return lo_n, hi_n, lo_d, hi_d


def predicted_loss(fit_json: dict, n, d):
  if fit_json["law"] != "chinchilla":
    return None
  return chinchilla_loss(fit_json["params"], n, d)


def chinchilla_loss(p: dict, n, d):
  """L(N, D) = E + A / N^alpha + B / D^beta."""
  return p["E"] + p["A"] / np.asarray(n, float) ** p["alpha"] + p["B"] / np.asarray(d, float) ** p["beta"]


def plan(fit_json: dict, flops: float) -> dict:
  """N_opt, D_opt, tokens per parameter (with bootstrap intervals) and the nearest ladder rung."""
  from configs import ladder  # local: fits need no model code
  n, d = (float(x) for x in optimal_allocation(fit_json, flops))
  out = {"flops": flops, "N_opt": n, "D_opt": d, "tokens_per_param": d / n}
  band = allocation_band(fit_json, flops)
  if band is not None:
    lo_n, hi_n, lo_d, hi_d = (float(x) for x in band)
    out.update(N_interval=[lo_n, hi_n], D_interval=[lo_d, hi_d])
  loss = predicted_loss(fit_json, n, d)
  if loss is not None:
    out["loss"] = float(loss)
  rung = ladder.nearest(n, fit_json.get("params_column", "params_nonembedding"))
  out["rung"] = {k: rung[k] for k in ("name", "config", "params_nonembedding", "params_total")}
  return out


def device_hours_to_flops(hours: float, device: str, mfu: float, dtype: str = "bfloat16") -> float:
  """hours x 3600 s x the device's spec-sheet peak x the assumed MFU."""
  from lm import flops as flops_lib
  peak = flops_lib.spec_peak_flops(device, dtype)
  if peak is None:
    raise FitError(f"no spec-sheet peak for device {device!r} in {dtype}; known devices: "
                   f"{', '.join(flops_lib.SPEC_PEAK_FLOPS)}.")
  return hours * 3600 * peak * mfu


def format_plan(p: dict) -> str:
  from configs.ladder import human
  iv = lambda key: f" ({human(p[key][0])}-{human(p[key][1])})" if key in p else ""
  lines = [f"compute      {p['flops']:.3g} FLOPs",
           f"N_opt        {human(p['N_opt'])} parameters{iv('N_interval')}",
           f"D_opt        {human(p['D_opt'])} tokens{iv('D_interval')}",
           f"tokens/param {p['tokens_per_param']:.3g}"]
  if "loss" in p:
    lines.append(f"loss         {p['loss']:.4g} (predicted)")
  r = p["rung"]
  lines.append(f"nearest rung {r['name']} ({human(r['params_nonembedding'])} non-embedding, "
               f"{human(r['params_total'])} total): --config={r['config']}")
  return "\n".join(lines)


# ---- command line ----

def _parser() -> argparse.ArgumentParser:
  ap = argparse.ArgumentParser(prog="python -m lm.scaling", description=__doc__.split("\n\n")[0])
  sub = ap.add_subparsers(dest="command", required=True)
  f = sub.add_parser("fit", help="fit a scaling law to a results table; write FIT.json")
  f.add_argument("--results", required=True, help="results table (.csv or .parquet), design.md section 6")
  f.add_argument("--law", required=True, choices=LAWS)
  f.add_argument("--out", required=True, help="FIT.json to write")
  f.add_argument("--params", default="params_nonembedding", choices=PARAMS_COLUMNS)
  f.add_argument("--flops", default="flops_6n", choices=FLOPS_COLUMNS)
  f.add_argument("--loss", default="eval_loss")
  f.add_argument("--status", default="finished", help="keep rows with this status ('' keeps all)")
  f.add_argument("--bootstrap", type=int, default=200, help="resamples for the intervals")
  f.add_argument("--seed", type=int, default=0)
  f.add_argument("--n_starts", type=int, default=128,
                 help="L-BFGS starts: the best of the 4500-point grid (4500 = all, as Hoffmann et al.; slower)")
  p = sub.add_parser("plan", help="compute-optimal N and D for a budget")
  p.add_argument("--fit", required=True)
  p.add_argument("--flops", type=float, help="training budget in FLOPs (the fit's FLOP definition)")
  p.add_argument("--device_hours", type=float, help="budget in device-hours (device count x hours)")
  p.add_argument("--device", help="device for --device_hours, e.g. h100, a100, tpu-v5p")
  p.add_argument("--mfu", type=float, default=0.4, help="assumed MFU for --device_hours")
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--json", action="store_true", help="print the plan as JSON")
  g = sub.add_parser("plot", help="write IsoFLOP, frontier and tokens-per-parameter PNGs")
  g.add_argument("--results", required=True)
  g.add_argument("--out_dir", required=True)
  g.add_argument("--fit", action="append", default=[], help="FIT.json to draw (repeatable); "
                 "default: an isoflop fit of the table")
  g.add_argument("--params", default="params_nonembedding", choices=PARAMS_COLUMNS)
  g.add_argument("--flops", default="flops_6n", choices=FLOPS_COLUMNS)
  g.add_argument("--loss", default="eval_loss")
  g.add_argument("--bootstrap", type=int, default=200)
  return ap


def fit_table(results, law, params="params_nonembedding", flops="flops_6n", loss="eval_loss",
              status="finished", **kw) -> dict:
  """load_results + fit, with the provenance fields FIT.json records."""
  runs = load_results(results, params, flops, loss, status or None)
  out = fit(runs, law, **kw)
  return {**out, "results": str(results), "params_column": params, "flops_column": flops, "loss_column": loss}


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  try:
    if args.command == "fit":
      out = fit_table(args.results, args.law, args.params, args.flops, args.loss, args.status,
                      bootstrap=args.bootstrap, seed=args.seed, n_starts=args.n_starts)
      with open(args.out, "w") as fh:
        json.dump(out, fh, indent=1)
      shown = ", ".join(f"{k}={v:.4g}" + (f" [{out['intervals'][k][0]:.4g}, {out['intervals'][k][1]:.4g}]"
                                          if k in out["intervals"] else "") for k, v in out["params"].items())
      print(f"{args.law} fit of {out['n_points']} runs ({args.params}, {args.flops}, {args.loss}): {shown}")
      print(f"wrote {args.out}")
    elif args.command == "plan":
      with open(args.fit) as fh:
        fit_json = json.load(fh)
      if (args.flops is None) == (args.device_hours is None):
        raise FitError("give exactly one of --flops and --device_hours (with --device).")
      budget = args.flops
      if budget is None:
        if not args.device:
          raise FitError("--device_hours needs --device (e.g. h100, a100, tpu-v5p).")
        budget = device_hours_to_flops(args.device_hours, args.device, args.mfu, args.dtype)
        print(f"{args.device_hours:g} {args.device} device-hours x {args.mfu:.0%} MFU ({args.dtype}) = {budget:.3g} FLOPs")
      result = plan(fit_json, budget)
      print(json.dumps(result, indent=1) if args.json else format_plan(result))
    else:
      from lm import scaling_plots
      runs = load_results(args.results, args.params, args.flops, args.loss)
      fits = []
      for path in args.fit:
        with open(path) as fh:
          fits.append(json.load(fh))
      if not any(f["law"] == "isoflop" for f in fits):
        fits.insert(0, fit(runs, "isoflop", bootstrap=args.bootstrap))
      for path in scaling_plots.write_pngs(runs, fits, args.out_dir):
        print(f"wrote {path}")
  except (FitError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
