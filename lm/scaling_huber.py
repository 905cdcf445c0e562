"""Log-space Huber fits of sums of power laws, Hoffmann et al. (2022) section 3.3 / Appendix D.2.

The saturating law L(N) = E + A / N^alpha is fitted this way, and so is Hoffmann et al.'s
own L(N, D) fit (`fit_chinchilla_huber`), kept as the baseline the coverage benchmark
(lm/scaling_coverage.py) compares lm/scaling_lnd.py against: Huber (delta 1e-3) on log L,
L-BFGS from a grid of initialisations.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from scipy import optimize, special

HUBER_DELTA = 1e-3
# Hoffmann et al. Appendix D.2: alpha, beta in {0, 0.5, ..., 2}, e in {-1, -.5, ..., 1},
# a, b in {0, 5, ..., 25}: 5 * 5 * 5 * 6 * 6 = 4500 starting points.
GRID = {"exponent": np.arange(0, 2.01, 0.5), "e": np.arange(-1, 1.01, 0.5), "log_coef": np.arange(0, 25.1, 5)}


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
  """L(N) = E + A / N^alpha: (parameters, theta)."""
  theta = _huber_fit([np.log(n)], np.log(loss), n_starts, extra_starts)
  return {"E": math.exp(theta[2]), "A": math.exp(theta[0]), "alpha": theta[1]}, theta


def fit_chinchilla_huber(n, d, loss, n_starts=None, extra_starts=()):
  """Hoffmann et al.'s L(N, D) fit: (parameters with a = beta / (alpha + beta), theta)."""
  theta = _huber_fit([np.log(n), np.log(d)], np.log(loss), n_starts, extra_starts)
  p = {"E": math.exp(theta[4]), "A": math.exp(theta[0]), "B": math.exp(theta[1]),
       "alpha": float(theta[2]), "beta": float(theta[3])}
  s = p["alpha"] + p["beta"]
  return {**p, "a": p["beta"] / s, "b": p["alpha"] / s}, theta
