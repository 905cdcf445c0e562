"""IsoFLOP profiles (Hoffmann et al. 2022, Approach 2) and intervals that hold on the table's own design.

The estimate is the paper's: per budget, parabolas of the loss in log10 N and in log10 D;
their vertices N_opt, D_opt; then least-squares lines log N_opt = log N_coef + a log C and
log D_opt = log D_coef + b log C over the budgets.

The estimate is biased by the design: an IsoFLOP curve E + A N^-alpha + B D^-beta is not
a parabola, and a parabola through sizes placed asymmetrically around the optimum moves
the vertex. On the CPU IsoFLOP design (lm/scaling_coverage.py, cpu_isoflop) noise-free
losses give a = 0.74 where the law's own optima along the budgets give 0.837; with 7
widths in every budget (ladder_dense) 0.525. Percentile intervals around the estimate
therefore cover the truth far less often than they claim.

The interval is a parametric bootstrap of the whole procedure on the same design (same
N and D of every run, same budgets) that corrects the bias and carries the correction's
own uncertainty:
  1. losses drawn from the L(N, D) fit theta (lm/scaling_lnd.py) with the measured noise
     (its variance drawn from s^2 nu / chi^2_nu, so a noise level measured on nu degrees
     of freedom widens the draws as a t does);
  2. per draw, Approach 2 (a*) and a refit of L(N, D) (theta*), whose design bias
     bias(theta*) = Approach 2 on theta*'s noise-free losses - the exponent of theta*'s
     exact optima along the budgets;
  3. the corrected estimate a_c = a_hat - bias(theta), and the basic (pivotal) interval
     a_c - (q(a* - bias(theta*)) - a(theta)) at q = 97.5% and 2.5%.
Pivoting through the bias of theta alone (not re-estimated per draw) covered 67% on the
ladder_dense design, because the bias moves with E, which those tables do not pin down.
FIT.json keeps the paper's estimate as `a` and the corrected one beside it.

A draw in which any budget used by the estimate has no bracketed parabola (opens
downward, or its vertex outside the sizes run) is a failure: it is counted, never
dropped in silence, and never fitted on fewer budgets (that would be another
estimator). Intervals are refused when more than MAX_FAILURE_RATE of the draws fail:
if the failed draws would all have fallen in one tail, dropping a fraction f of them
moves the 2.5% and 97.5% points so that a 95% interval covers as little as (1 - f) 95%;
5% keeps that above 90%, the lower edge of the coverage band lm/scaling_coverage.py
checks.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from lm import scaling_lnd

MAX_FAILURE_RATE = 0.05
CONFIDENCE = 0.95
OPTIMUM_GRID = 1601
REFIT_GRID = 16  # the L(N, D) refit of each draw: a 16 x 16 exponent grid, then a polish
REFIT_XATOL = 1e-5


class IsoflopError(ValueError):
  """A table from which Approach 2 cannot give an estimate."""


def parabola_minimum(x, loss):
  """Vertex of a least-squares parabola loss(x): (x_min, loss_min, (c2, c1, c0)), or None
  unless it opens upward and lies within the x that were run (an unbracketed minimum is
  an extrapolation)."""
  if len(np.unique(x)) < 3:
    return None
  c2, c1, c0 = np.polyfit(x, loss, 2)
  if c2 <= 0:
    return None
  x_min = -c1 / (2 * c2)
  if not x.min() <= x_min <= x.max():
    return None
  return x_min, c0 + c1 * x_min + c2 * x_min ** 2, (c2, c1, c0)


def minima(runs: pd.DataFrame) -> list[dict]:
  """Per budget: its C (geometric mean of the runs' C), its runs, and where both parabolas
  are bracketed ("used"), N_opt, D_opt, the loss there and the parabolas' coefficients."""
  out = []
  for budget, g in runs.groupby("budget"):
    n_fit = parabola_minimum(np.log10(g["N"].to_numpy()), g["loss"].to_numpy())
    d_fit = parabola_minimum(np.log10(g["D"].to_numpy()), g["loss"].to_numpy())
    c = g["C"].to_numpy()
    row = {"budget": float(budget), "C": float(np.exp(np.log(c).mean())), "n_runs": int(len(g)),
           "C_spread_decades": float(np.log10(c.max() / c.min())),
           "used": n_fit is not None and d_fit is not None}
    if row["used"]:
      row.update(N_opt=10 ** n_fit[0], D_opt=10 ** d_fit[0], loss_opt=n_fit[1],
                 parabola_N=list(n_fit[2]), parabola_D=list(d_fit[2]))
    else:
      row["why"] = "no bracketed parabola in " + ("N" if n_fit is None else "D")
    out.append(row)
  return out


def lines(c, n_opt, d_opt) -> dict:
  """a, b, N_coef, D_coef of the least-squares lines through the minima in log-log."""
  log_c = np.log(c)
  a, log_n0 = np.polyfit(log_c, np.log(n_opt), 1)
  b, log_d0 = np.polyfit(log_c, np.log(d_opt), 1)
  return {"a": float(a), "b": float(b), "N_coef": math.exp(log_n0), "D_coef": math.exp(log_d0)}


def estimate(runs: pd.DataFrame) -> tuple[dict, list[dict]]:
  """(a, b, N_coef, D_coef), the per-budget minima. Budgets without a bracketed minimum are
  left out and say why; at least 2 must remain."""
  mins = minima(runs)
  used = [m for m in mins if m["used"]]
  if len(used) < 2:
    raise IsoflopError(f"{len(used)} of {len(mins)} budgets have a bracketed minimum (>= 3 model sizes with the "
                       "lowest loss inside the range run); the power laws need at least 2.")
  return lines([m["C"] for m in used], [m["N_opt"] for m in used], [m["D_opt"] for m in used]), mins


# ---- the law's own optima along each budget ----

def budget_paths(runs: pd.DataFrame, budgets) -> dict:
  """Per budget, log D as a polynomial in log N through its runs (degree 2, or 1 for two
  sizes): the line the budget's runs lie on, C fixed (exactly D = C / (k N) for 6N FLOPs;
  gently curved for counts with attention and a vocabulary term)."""
  out = {}
  for budget in budgets:
    g = runs[runs["budget"] == budget]
    x, y = np.log(g["N"].to_numpy()), np.log(g["D"].to_numpy())
    out[budget] = (np.polyfit(x, y, min(2, len(np.unique(x)) - 1)), x.min(), x.max())
  return out


def law_optima(p: dict, paths: dict) -> tuple[np.ndarray, np.ndarray]:
  """(N*, D*) per budget: where L(N, D(N)) of the law p is least along each budget's path,
  searched over the sizes run and 1.15 nats (half a decade) beyond. The law's values may
  be arrays [k] (k laws at once): then N*, D* are [k, budgets], else [budgets].

  A grid of OPTIMUM_GRID points in log N and the parabola through the least one and its
  neighbours: the spacing is ~0.005 nats, so the vertex is exact to ~1e-6 in log N.
  """
  law = {k: np.asarray(p[k], float)[..., None] for k in ("E", "A", "B", "alpha", "beta")}
  n_opt, d_opt = [], []
  for coef, lo, hi in paths.values():
    x = np.linspace(lo - 1.15, hi + 1.15, OPTIMUM_GRID)
    y = np.polyval(coef, x)
    loss = law["E"] + law["A"] * np.exp(-law["alpha"] * x) + law["B"] * np.exp(-law["beta"] * y)
    k = np.clip(np.argmin(loss, axis=-1), 1, OPTIMUM_GRID - 2)
    f0, f1, f2 = (np.take_along_axis(loss, (k + j)[..., None], -1)[..., 0] for j in (-1, 0, 1))
    h = x[1] - x[0]
    with np.errstate(divide="ignore", invalid="ignore"):
      step = np.where(f0 - 2 * f1 + f2 > 0, 0.5 * h * (f0 - f2) / (f0 - 2 * f1 + f2), 0.0)
    x_min = x[k] + np.clip(step, -h, h)
    n_opt.append(np.exp(x_min))
    d_opt.append(np.exp(np.polyval(coef, x_min)))
  return np.stack(n_opt, -1), np.stack(d_opt, -1)


# ---- the parametric bootstrap ----

def _vertices(x, y_draws):
  """Vectorised parabola vertices of draws [k, n] over one budget's x: (x_min [k], opens
  upward [k], inside the x run [k])."""
  design = np.stack([x ** 2, x, np.ones_like(x)], axis=1)
  c2, c1, _ = (np.linalg.pinv(design) @ y_draws.T)
  with np.errstate(divide="ignore", invalid="ignore"):
    x_min = -c1 / (2 * c2)
  return x_min, c2 > 0, (x_min >= x.min()) & (x_min <= x.max())


def _approach2(budgets, log_c, losses):
  """Approach 2 on loss draws [k, runs] of each budget: ({a, b, N_coef, D_coef} as arrays [k],
  log N_coef and log D_coef; opens upward in every budget [k]; bracketed in every budget [k])."""
  up, inside, log_n, log_d = True, True, [], []
  for (x_n, x_d), y in zip(budgets, losses):
    xn, upn, inn = _vertices(x_n, y)
    xd, upd, ind = _vertices(x_d, y)
    up, inside = up & upn & upd, inside & inn & ind
    log_n.append(xn * math.log(10))
    log_d.append(xd * math.log(10))
  design = np.linalg.pinv(np.stack([log_c, np.ones_like(log_c)], axis=1))
  with np.errstate(invalid="ignore"):
    (a, ln0), (b, ld0) = design @ np.array(log_n), design @ np.array(log_d)
  return {"a": a, "b": b, "N_coef": ln0, "D_coef": ld0}, up, inside


def _law_lines(laws: dict, paths: dict, log_c) -> dict:
  """a, b, log N_coef, log D_coef of the lines through the laws' exact optima (arrays [k])."""
  n_opt, d_opt = law_optima(laws, paths)
  design = np.linalg.pinv(np.stack([log_c, np.ones_like(log_c)], axis=1))
  (a, ln0), (b, ld0) = design @ np.log(n_opt).T, design @ np.log(d_opt).T
  return {"a": a, "b": b, "N_coef": ln0, "D_coef": ld0}


def bootstrap(runs: pd.DataFrame, law: dict, s2: float, df: int, draws: int = 400, seed: int = 0,
              confidence: float = CONFIDENCE) -> dict:
  """Intervals for a, b, N_coef, D_coef by the parametric bootstrap of the module docstring.

  Returns {"intervals", "samples" (pivoted draws, for bands), "estimate_corrected" (the
  estimate minus the design bias under the fitted law), "n_draws", "n_failed",
  "failure_rate", "refused" (a reason or None), "bias" (design bias under the fitted law),
  "law_exponents" (a, b of the fitted law's optima along these budgets)}.
  """
  params, mins = estimate(runs)
  used = [m["budget"] for m in mins if m["used"]]
  sub = runs[runs["budget"].isin(used)]
  groups = [sub[sub["budget"] == b] for b in used]
  budgets = [(np.log10(g["N"].to_numpy()), np.log10(g["D"].to_numpy())) for g in groups]
  log_c = np.log([m["C"] for m in mins if m["used"]])
  paths = budget_paths(sub, used)
  n, d = sub["N"].to_numpy(), sub["D"].to_numpy()
  rng = np.random.default_rng(seed)
  sigma = np.sqrt(s2 * df / rng.chisquare(df, draws))  # [draws]
  mean = scaling_lnd.chinchilla_loss(law, n, d)
  y = mean[None, :] * np.exp(sigma[:, None] * rng.standard_normal((draws, len(sub))))  # [draws, runs]
  split = np.cumsum([len(g) for g in groups])[:-1]
  star, up, inside = _approach2(budgets, log_c, np.split(y, split, axis=1))
  # The design bias under each draw's own refitted law, so the correction's uncertainty is in the interval.
  refits = [scaling_lnd.refit(scaling_lnd.Problem(n, d, y_i), (law["alpha"], law["beta"]), REFIT_GRID, REFIT_XATOL)[1]
            for y_i in y]
  laws = {k: np.array([q[k] for q in refits]) for k in ("E", "A", "B", "alpha", "beta")}
  bias_star = _bias(laws, budgets, log_c, paths, n, d, split)
  law_hat = {k: np.array([law[k]]) for k in laws}
  bias_hat = _bias(law_hat, budgets, log_c, paths, n, d, split)
  truth = {k: float(v[0]) for k, v in _law_lines(law_hat, paths, log_c).items()}
  failed = ~(up & inside) | ~bias_star["ok"]
  n_failed = int(failed.sum())
  rate = n_failed / draws
  hat = {"a": params["a"], "b": params["b"], "N_coef": math.log(params["N_coef"]), "D_coef": math.log(params["D_coef"])}
  corrected = {k: hat[k] - float(bias_hat[k][0]) for k in hat}
  conv = lambda k: math.exp if k in ("N_coef", "D_coef") else float
  out = {"n_draws": draws, "n_failed": n_failed, "failure_rate": rate, "budgets_used": used,
         "law_exponents": {"a": truth["a"], "b": truth["b"]}, "refused": None, "intervals": {}, "samples": {},
         "bias": {k: float(bias_hat[k][0]) for k in hat},
         "estimate_corrected": {k: conv(k)(v) for k, v in corrected.items()}}
  if rate > MAX_FAILURE_RATE:
    out["refused"] = (f"{n_failed} of {draws} simulated tables ({rate:.0%}) had a budget without a bracketed "
                      f"minimum, above the {MAX_FAILURE_RATE:.0%} a 95% interval can lose (lm/scaling_isoflop.py); "
                      "run more sizes per budget, centred on its minimum")
    return out
  tail = (1 - confidence) / 2
  ok = ~failed
  for k in hat:
    # The basic bootstrap of the corrected estimator: its draws' errors about the fitted
    # law's truth, flipped onto the corrected estimate.
    pivoted = corrected[k] - ((star[k] - bias_star[k])[ok] - truth[k])
    lo, hi = np.quantile(pivoted, [tail, 1 - tail])
    out["intervals"][k] = [conv(k)(lo), conv(k)(hi)]
    out["samples"][k] = [conv(k)(v) for v in pivoted]
  return out


def _bias(laws, budgets, log_c, paths, n, d, split) -> dict:
  """Approach 2 on each law's noise-free losses minus the law's own optima lines: the design
  bias (arrays [k]); "ok" where every noise-free parabola opens upward."""
  mean = scaling_lnd.chinchilla_loss({k: v[:, None] for k, v in laws.items()}, n[None, :], d[None, :])
  noise_free, up, _ = _approach2(budgets, log_c, np.split(mean, split, axis=1))
  exact = _law_lines(laws, paths, log_c)
  return {**{k: noise_free[k] - exact[k] for k in exact}, "ok": up}
