"""L(N, D) = E + A / N^alpha + B / D^beta (Hoffmann et al. 2022, Approach 3): the fit, its
profiles, confidence intervals and prediction intervals.

The objective is least squares on relative residuals r = (L(N, D) - loss) / loss, which
is least squares on log loss to second order in r (at 1% residuals the two differ by
0.5% of r): a Gaussian likelihood for multiplicative noise. For fixed exponents the model
is linear in (E, A, B), so the fit is a variable projection: non-negative least squares
for the coefficients at every (alpha, beta) of a grid, then a local polish of the
exponents. That finds the global optimum without starting points (Hoffmann et al.'s
L-BFGS from 4500 starts can stop early next to a start: Besiroglu et al. 2024), keeps E,
A and B >= 0 exactly, and makes profiles cheap: a profile holds one quantity and
re-optimises the rest.

Why not Hoffmann et al.'s Huber loss (delta 1e-3 on log loss): at the 0.5-5% residuals
of small sweeps it is an L1 fit, which has no calibrated likelihood-ratio threshold, and
the run bootstrap around it under-covered the true exponents on synthetic tables
(lm/scaling_coverage.py prints the numbers).

Intervals (95% unless told) are profile-likelihood intervals with the small-sample
F(1, nu) threshold, {t : (S(t) - S_min) / s^2 <= F(1, nu)}, where S(t) is the least sum
of squares with the quantity held at t and s^2 the noise variance on nu degrees of
freedom (the residuals' S_min / (n - 5), or the seeds' pure error: lm/scaling.py). That
is exact for a linear model and honest for this one: where the table cannot pin a
quantity down (E on the CPU IsoFLOP table) the profile is flat and the interval runs to
the edge of its domain, which `bounded` records. A prediction interval for a new run at
(N, D) is the set of losses y the law and the table absorb together: refit with
(N, D, y) added and keep y while the sum of squares rises by at most s^2 F(1, nu); for a
linear model that is the textbook y_hat +- t s sqrt(1 + h).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from scipy import optimize, stats

CONFIDENCE = 0.95
N_PARAMS = 5
EXPONENT_RANGE = (0.01, 3.0)  # alpha, beta; Hoffmann et al.'s grid spans 0-2
REPORTED = ("E", "A", "B", "alpha", "beta", "a", "b")  # every parameter gets a profile interval
_SUPPORTS = [s for k in (1, 2, 3) for s in itertools.combinations(range(3), k)]
_COEF = {"E": 0, "A": 1, "B": 2}
COARSE_CHUNK = 8
COEF_GRID = 36  # a held coefficient's exponents: coarse profiles on this grid, polishes from its best point


def chinchilla_loss(p: dict, n, d):
  """L(N, D) = E + A / N^alpha + B / D^beta."""
  return p["E"] + p["A"] / np.asarray(n, float) ** p["alpha"] + p["B"] / np.asarray(d, float) ** p["beta"]


def optimum_exponents(p) -> dict:
  """For C proportional to N D, minimising L(N, C / (k N)) gives N_opt ~ C^a, D_opt ~ C^b with
  a = beta / (alpha + beta), b = alpha / (alpha + beta) (Hoffmann et al. eq. 4)."""
  s = p["alpha"] + p["beta"]
  return {"a": p["beta"] / s, "b": p["alpha"] / s}


class Problem:
  """One table's least-squares problem in variable-projection form.

  Columns are scaled by the geometric means of N and D (N_ref, D_ref), so the normal
  equations stay well conditioned at any exponent: the coefficients solved for are
  (E, A N_ref^-alpha, B D_ref^-beta), and rows are divided by the loss (relative residuals).
  `fixed` = (name, value) holds E, A or B at a value in its own units.
  """

  def __init__(self, n, d, loss):
    self.n, self.d, self.loss = (np.asarray(x, float) for x in (n, d, loss))
    self.log_n_ref, self.log_d_ref = np.log(self.n).mean(), np.log(self.d).mean()
    self.u = np.log(self.n) - self.log_n_ref  # log(N / N_ref)
    self.v = np.log(self.d) - self.log_d_ref
    self._inv_loss, self._ones = 1.0 / self.loss, np.ones(len(self.loss))

  @property
  def size(self) -> int:
    return len(self.loss)

  def _columns(self, alpha, beta):
    """[..., n, 3]: (1, (N/N_ref)^-alpha, (D/D_ref)^-beta) / loss, for arrays of exponents."""
    alpha, beta = np.asarray(alpha, float)[..., None], np.asarray(beta, float)[..., None]
    ones = np.ones(np.broadcast_shapes(alpha.shape, beta.shape, (self.size,)))
    return np.stack([ones, ones * np.exp(-alpha * self.u), ones * np.exp(-beta * self.v)], axis=-1) / self.loss[:, None]

  def _scaled_value(self, fixed, alpha, beta):
    name, value = fixed
    log_ref = {"E": 0.0, "A": self.log_n_ref, "B": self.log_d_ref}[name]
    exponent = {"E": 0.0, "A": alpha, "B": beta}[name]
    return value * np.exp(-np.asarray(exponent, float) * log_ref)

  def sum_sq(self, alpha, beta, fixed=None):
    """Least sum of squares at arrays of (alpha, beta): exact non-negative least squares by
    enumerating the supports (the optimum is the unconstrained fit on its support, which is
    feasible, so the least feasible support fit is it): seven small batched solves."""
    s, _ = self._solve(alpha, beta, fixed)
    return s

  def _solve(self, alpha, beta, fixed=None):
    x = self._columns(alpha, beta)
    y = np.ones(x.shape[:-1])
    free = [0, 1, 2]
    if fixed is not None:
      j = _COEF[fixed[0]]
      y = y - x[..., j] * self._scaled_value(fixed, alpha, beta)[..., None]
      free.remove(j)
    best_s = (y ** 2).sum(-1)  # the empty support
    best_c = np.zeros(x.shape[:-2] + (3,))
    for support in _SUPPORTS:
      if not set(support) <= set(free):
        continue
      xs = x[..., list(support)]
      gram = np.einsum("...ij,...ik->...jk", xs, xs)
      gram = gram + 1e-13 * np.trace(gram, axis1=-2, axis2=-1)[..., None, None] * np.eye(len(support))
      c = np.linalg.solve(gram, np.einsum("...ij,...i->...j", xs, y)[..., None])[..., 0]
      s = ((y - np.einsum("...ij,...j->...i", xs, c)) ** 2).sum(-1)
      ok = (c >= 0).all(-1) & (s < best_s)
      best_s = np.where(ok, s, best_s)
      full = np.zeros_like(best_c)
      full[..., list(support)] = c
      best_c = np.where(ok[..., None], full, best_c)
    if fixed is not None:
      best_c[..., _COEF[fixed[0]]] = self._scaled_value(fixed, alpha, beta)
    return best_s, best_c

  def sum_sq_one(self, alpha: float, beta: float, fixed=None) -> float:
    """sum_sq at one point, through scipy's NNLS (~30 us; the batched form costs ~300 us)."""
    x = np.empty((self.size, 3))
    x[:, 0] = self._inv_loss
    x[:, 1] = np.exp(-alpha * self.u) * self._inv_loss
    x[:, 2] = np.exp(-beta * self.v) * self._inv_loss
    y = self._ones
    cols = [0, 1, 2]
    if fixed is not None:
      j = _COEF[fixed[0]]
      y = y - x[:, j] * float(self._scaled_value(fixed, alpha, beta))
      cols.remove(j)
      x = x[:, cols]
    return float(optimize.nnls(x, y)[1] ** 2)

  def params(self, alpha: float, beta: float, fixed=None) -> dict:
    """The law's parameters at exponents (alpha, beta), coefficients solved for."""
    _, coef = self._solve(alpha, beta, fixed)
    e, a_ref, b_ref = (float(c) for c in coef)
    p = {"E": e, "A": a_ref * math.exp(alpha * self.log_n_ref), "B": b_ref * math.exp(beta * self.log_d_ref),
         "alpha": float(alpha), "beta": float(beta)}
    return {**p, **optimum_exponents(p)}

  def with_run(self, n0, d0, y0) -> "Problem":
    return Problem(np.append(self.n, n0), np.append(self.d, d0), np.append(self.loss, y0))


def _grid(points: int):
  return np.linspace(*EXPONENT_RANGE, points)


def _polish2(problem: Problem, start, fixed=None, xatol: float = 1e-7) -> tuple[float, tuple[float, float]]:
  """Local minimum over both exponents from `start` (Nelder-Mead on the projected sum of squares)."""
  lo, hi = EXPONENT_RANGE
  fun = lambda x: problem.sum_sq_one(min(max(x[0], lo), hi), min(max(x[1], lo), hi), fixed)
  res = optimize.minimize(fun, np.asarray(start, float), method="Nelder-Mead",
                          options={"xatol": xatol, "fatol": 1e-14, "maxiter": 600,
                                   "initial_simplex": np.asarray(start) + np.array([[0, 0], [0.02, 0], [0, 0.02]])})
  x = np.clip(res.x, lo, hi)
  return float(fun(x)), (float(x[0]), float(x[1]))


def fit(problem: Problem, fixed=None, start=None, points: int = 100) -> tuple[float, dict]:
  """(least sum of squares, parameters). The global search is a `points` x `points` grid of
  (alpha, beta), polished; `start` = (alpha, beta) polishes from there instead (a warm
  start for refits whose optimum moves a little)."""
  if start is None:
    g = _grid(points)
    s = problem.sum_sq(g[:, None], g[None, :], fixed)
    i, j = np.unravel_index(np.argmin(s), s.shape)
    start = (g[i], g[j])
  s, (alpha, beta) = _polish2(problem, start, fixed)
  return s, problem.params(alpha, beta, fixed)


def refit(problem: Problem, start, points: int = 16, xatol: float = 1e-5) -> tuple[float, dict]:
  """fit for a bootstrap draw: polished from the better of a warm start (the fitted law's
  exponents) and a coarse grid's best point, to a looser tolerance (1e-5 in the exponents,
  far inside their spread). ~10 ms against fit's ~50-170 ms."""
  g = _grid(points)
  s = problem.sum_sq(g[:, None], g[None, :])
  i, j = np.unravel_index(np.argmin(s), s.shape)
  if s[i, j] < problem.sum_sq_one(*start):
    start = (g[i], g[j])
  s, (alpha, beta) = _polish2(problem, start, xatol=xatol)
  return s, problem.params(alpha, beta)


# ---- profiles ----

def _exponents_for(quantity: str, t, w):
  """(alpha, beta) with `quantity` held at t, the free coordinate w being the other exponent
  (alpha for a = beta / (alpha + beta), so beta = alpha a / (1 - a))."""
  if quantity == "alpha":
    return t, w
  if quantity == "beta":
    return w, t
  if quantity == "a":
    return w, w * t / (1 - t)
  raise ValueError(f"no exponent profile for {quantity!r}")


class Profile:
  """S(t): the least sum of squares with one quantity (E, A, B, alpha, beta or a) held at t.

  `coarse(ts)` evaluates many t at once on a grid of the free exponents, an upper bound
  (for walking out cheaply); `__call__(t)` polishes one t, from the grid's best point and,
  for E, A and B, from the previous t's optimum too. Polished values are remembered, so a
  t asked twice gives the same answer (root finding needs a function, and the warm start
  would otherwise make the answer depend on what was asked before).
  """

  def __init__(self, problem: Problem, quantity: str):
    self.problem, self.quantity = problem, quantity
    self._start = None  # the exponents of the last polished point: a warm start for the next
    self._seen = {}

  def __call__(self, t: float) -> float:
    t = float(t)
    if t not in self._seen:
      self._seen[t] = self._polished(t)
    return self._seen[t]

  def coarse(self, ts) -> np.ndarray:
    """S at each t minimised over a grid of the free exponents only: never below the true S."""
    ts = np.asarray(ts, float)
    p = self.problem
    if self.quantity in _COEF:
      g = _grid(COEF_GRID)
      return np.array([p.sum_sq(g[:, None], g[None, :], (self.quantity, t)).min() for t in ts])
    alpha, beta = np.broadcast_arrays(*_exponents_for(self.quantity, ts[:, None], _grid(160)[None, :]))
    s = p.sum_sq(np.clip(alpha, *EXPONENT_RANGE), np.clip(beta, *EXPONENT_RANGE))
    s = np.where((beta > EXPONENT_RANGE[1]) | (beta < EXPONENT_RANGE[0]), np.inf, s)
    return s.min(axis=1)

  def _polished(self, t: float) -> float:
    p = self.problem
    if self.quantity in _COEF:
      fixed = (self.quantity, t)
      g = _grid(COEF_GRID)
      s = p.sum_sq(g[:, None], g[None, :], fixed)
      i, j = np.unravel_index(np.argmin(s), s.shape)
      best = _polish2(p, (g[i], g[j]), fixed)
      if self._start is not None:
        best = min(best, _polish2(p, self._start, fixed))
      self._start = best[1]
      return best[0]
    g = _grid(160)
    alpha, beta = np.broadcast_arrays(*_exponents_for(self.quantity, t, g))
    ok = (beta >= EXPONENT_RANGE[0]) & (beta <= EXPONENT_RANGE[1])
    if not ok.any():
      return math.inf
    s = p.sum_sq(alpha[ok], beta[ok])
    k = int(np.argmin(s))
    step = g[1] - g[0]
    lo, hi = g[ok][max(k - 1, 0)] - step * (k == 0), g[ok][min(k + 1, ok.sum() - 1)]
    lo = max(lo, EXPONENT_RANGE[0])

    def at(w):
      a, b = _exponents_for(self.quantity, t, w)
      return p.sum_sq_one(a, min(max(b, EXPONENT_RANGE[0]), EXPONENT_RANGE[1]))

    res = optimize.minimize_scalar(at, bounds=(lo, hi), method="bounded", options={"xatol": 1e-8})
    return min(float(res.fun), float(s[k]))


def threshold(s2: float, df: int, confidence: float = CONFIDENCE) -> float:
  """The rise in the sum of squares a profile interval allows: s^2 F(1, df)."""
  return s2 * stats.f.ppf(confidence, 1, df)


def profile_interval(profile, estimate: float, limit: float, domain, log: bool = False, steps: int = 40):
  """(lo, hi, bounded_lo, bounded_hi): where profile(t) first rises through `limit` walking
  out from the estimate to each edge of the domain in `steps` steps (in log t when `log`).
  The coarse profile (never below the true one) clears most steps; a step it does not
  clear is checked with the polished profile, and the crossing refined by root finding.
  A side that never crosses ends at the domain's edge, unbounded."""
  to, fro = (math.exp, math.log) if log else ((lambda x: x), (lambda x: x))
  ends = []
  for edge in domain:
    if (edge - estimate) * (1 if edge > estimate else -1) <= 0:
      ends.append((edge, False))
      continue
    ts = [to(x) for x in np.linspace(fro(estimate), fro(edge), steps + 1)[1:]]
    inside, end = estimate, None
    for chunk in range(0, steps, COARSE_CHUNK):  # coarse profiles in chunks: most sides cross early
      batch = ts[chunk:chunk + COARSE_CHUNK]
      for t, s_coarse in zip(batch, profile.coarse(batch)):
        if s_coarse <= limit or profile(t) <= limit:
          inside = t
          continue
        end = (_root(profile, limit, inside, t), True)
        break
      if end is not None:
        break
    ends.append(end or (edge, False))
  (lo, blo), (hi, bhi) = ends
  return lo, hi, blo, bhi


def _root(profile, limit, inside, outside):
  if profile(outside) <= limit:
    return outside
  if profile(inside) > limit:  # `inside` was cleared by the coarse bound, its polish landed above it
    return inside
  return optimize.brentq(lambda t: profile(t) - limit, inside, outside, xtol=1e-7 * max(1.0, abs(inside)), rtol=1e-6)


def intervals(problem: Problem, s_min: float, p: dict, s2: float, df: int, confidence=CONFIDENCE,
              quantities=REPORTED) -> dict:
  """Profile intervals: {name: {"interval": [lo, hi], "bounded": [lo_found, hi_found]}}; an
  unbounded side sits at its domain's edge (exponents 0.01-3, E from 0 to the least loss)."""
  limit = s_min + threshold(s2, df, confidence)
  out = {}
  for q in quantities:
    if q == "b":
      continue
    if q in _COEF:
      domain, log = ((0.0, float(problem.loss.min())), False) if q == "E" else ((p[q] * 1e-4, p[q] * 1e4), True)
      if p[q] <= 0:
        domain, log = ((0.0, float(problem.loss.max()) * 1e3), False)
    else:
      domain, log = ((1e-3, 0.999), False) if q == "a" else (EXPONENT_RANGE, False)
    lo, hi, blo, bhi = profile_interval(Profile(problem, q), p[q], limit, domain, log)
    out[q] = {"interval": [float(lo), float(hi)], "bounded": [bool(blo), bool(bhi)]}
  if "b" in quantities and "a" in out:
    out["b"] = {"interval": [1 - out["a"]["interval"][1], 1 - out["a"]["interval"][0]],
                "bounded": out["a"]["bounded"][::-1]}
  return out


def e_profile(problem: Problem, p: dict, points: int = 13) -> list[dict]:
  """The fit with E held at `points` values from 0 to 95% of the least loss: the sum of
  squares and the exponents there. A flat sum of squares under moving exponents is the
  unidentifiability that FIT.json and the report show."""
  rows = []
  for e in np.linspace(0.0, 0.95 * float(problem.loss.min()), points):
    s, q = fit(problem, fixed=("E", float(e)), points=40)
    rows.append({"E": float(e), "sum_sq": s, **{k: q[k] for k in ("alpha", "beta", "a", "A", "B")}})
  return rows


def prediction_interval(problem: Problem, s_min: float, p: dict, s2: float, df: int, n0: float, d0: float,
                        confidence=CONFIDENCE) -> list[float]:
  """[lo, hi] of the loss one new run at (n0, d0) would have, its noise included."""
  y_hat = float(chinchilla_loss(p, n0, d0))
  limit = s_min + threshold(s2, df, confidence)
  start = (p["alpha"], p["beta"])
  augmented = lambda y: fit(problem.with_run(n0, d0, y), start=start)[0]
  out = []
  for sign in (-1, 1):
    inside, step, found = y_hat, math.sqrt(s2) * y_hat, None
    for _ in range(40):
      y = y_hat * math.exp(sign * step / y_hat)
      if augmented(y) > limit:
        found = optimize.brentq(lambda t: augmented(t) - limit, min(inside, y), max(inside, y), xtol=1e-7 * y_hat)
        break
      inside, step = y, step * 1.5
    out.append(found if found is not None else (0.0 if sign < 0 else math.inf))
  return out
