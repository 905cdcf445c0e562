"""Figures of scaling fits: IsoFLOP curves, the compute-optimal frontier with its band, and
tokens per parameter. Each function draws on a matplotlib Axes (notebooks); write_pngs
saves all three without a display (`python -m lm.scaling plot`).
"""

from __future__ import annotations

import os

import numpy as np
from matplotlib.figure import Figure

from lm import scaling

LAW_STYLE = {"isoflop": dict(color="C0", label="IsoFLOP (Approach 2)"),
             "chinchilla": dict(color="C3", label="L(N, D) fit (Approach 3)")}


def _budgets(fit_json):
  return [b for b in fit_json.get("budgets", []) if b["used"]]


def isoflop_curves(ax, runs, iso_fit):
  """Loss against N, one colour per budget, with each budget's parabola and its minimum."""
  cmap = _colormap(runs["budget"].nunique())
  minima = {b["budget"]: b for b in iso_fit["budgets"]}
  for i, (budget, g) in enumerate(sorted(runs.groupby("budget"), key=lambda kv: kv[0])):
    colour = cmap(i)
    ax.scatter(g["N"], g["loss"], color=colour, s=18, label=f"C = {budget:.1e}")
    m = minima.get(float(budget))
    if m and m["used"]:
      c2, c1, c0 = m["parabola_N"]
      x = np.linspace(np.log10(g["N"].min()), np.log10(g["N"].max()), 50)
      ax.plot(10 ** x, c0 + c1 * x + c2 * x ** 2, color=colour, lw=1)
      ax.scatter([m["N_opt"]], [m["loss_opt"]], color=colour, marker="*", s=120, edgecolor="k", zorder=3)
  ax.set(xscale="log", xlabel="parameters N", ylabel="loss (nats/token)", title="IsoFLOP curves")
  ax.legend(fontsize=7)


def _colormap(n):
  import matplotlib
  return matplotlib.colormaps["viridis"].resampled(max(n, 2))


def _flops_grid(fits, runs=None, decades=1.0):
  cs = [b["C"] for f in fits for b in _budgets(f)]
  if runs is not None:
    cs += list(runs["C"])
  lo, hi = np.log10(min(cs)) - decades, np.log10(max(cs)) + decades
  return np.logspace(lo, hi, 60)


def frontier(ax_n, ax_d, fits, runs=None):
  """N_opt and D_opt against C for each fit that has an allocation, with bootstrap bands;
  an IsoFLOP fit's per-budget minima as points."""
  c = _flops_grid(fits, runs)
  for f in fits:
    if f["law"] not in LAW_STYLE:
      continue
    style = LAW_STYLE[f["law"]]
    n, d = scaling.optimal_allocation(f, c)
    ax_n.plot(c, n, **style)
    ax_d.plot(c, d, **style)
    band = scaling.allocation_band(f, c)
    if band is not None:
      lo_n, hi_n, lo_d, hi_d = band
      ax_n.fill_between(c, lo_n, hi_n, color=style["color"], alpha=0.15, lw=0)
      ax_d.fill_between(c, lo_d, hi_d, color=style["color"], alpha=0.15, lw=0)
    used = _budgets(f)
    if used:
      ax_n.scatter([b["C"] for b in used], [b["N_opt"] for b in used], color=style["color"], edgecolor="k", zorder=3)
      ax_d.scatter([b["C"] for b in used], [b["D_opt"] for b in used], color=style["color"], edgecolor="k", zorder=3)
  band_pct = f"{fits[0].get('confidence', 0.95):.0%}" if fits else ""
  ax_n.set(xscale="log", yscale="log", xlabel="training FLOPs C", ylabel="N_opt (parameters)",
           title=f"Compute-optimal model size ({band_pct} band)")
  ax_d.set(xscale="log", yscale="log", xlabel="training FLOPs C", ylabel="D_opt (tokens)",
           title=f"Compute-optimal tokens ({band_pct} band)")
  ax_n.legend(fontsize=8)


def tokens_per_param(ax, fits, runs=None):
  """D_opt / N_opt against C: constant when a == b (Chinchilla's ~20)."""
  c = _flops_grid(fits, runs)
  for f in fits:
    if f["law"] not in LAW_STYLE:
      continue
    style = LAW_STYLE[f["law"]]
    n, d = scaling.optimal_allocation(f, c)
    ax.plot(c, d / n, **style)
    band = scaling.bootstrap_band(f, c, of=lambda n_opt, d_opt: d_opt / n_opt)
    if band is not None:
      ax.fill_between(c, *band, color=style["color"], alpha=0.15, lw=0)
    used = _budgets(f)
    if used:
      ax.scatter([b["C"] for b in used], [b["D_opt"] / b["N_opt"] for b in used], color=style["color"],
                 edgecolor="k", zorder=3)
  ax.set(xscale="log", yscale="log", xlabel="training FLOPs C", ylabel="D_opt / N_opt",
         title="Compute-optimal tokens per parameter")
  ax.legend(fontsize=8)


def write_pngs(runs, fits, out_dir) -> list[str]:
  """isoflop.png, frontier.png and tokens_per_param.png under out_dir; the paths."""
  os.makedirs(out_dir, exist_ok=True)
  iso = next(f for f in fits if f["law"] == "isoflop")
  paths = []

  def save(fig, name):
    path = os.path.join(out_dir, name)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    paths.append(path)

  fig = Figure(figsize=(6, 4.5))
  isoflop_curves(fig.add_subplot(), runs, iso)
  save(fig, "isoflop.png")
  fig = Figure(figsize=(11, 4.5))
  frontier(fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2), fits, runs)
  save(fig, "frontier.png")
  fig = Figure(figsize=(6, 4.5))
  tokens_per_param(fig.add_subplot(), fits, runs)
  save(fig, "tokens_per_param.png")
  return paths
