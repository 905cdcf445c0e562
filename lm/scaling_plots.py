"""Figures of scaling fits: IsoFLOP curves, the compute-optimal frontier with its band,
tokens per parameter, the L(N, D) profile over E and backtests. Each function draws on a
matplotlib Axes (notebooks); write_pngs saves the first three without a display
(`python -m lm.scaling plot`), lm/scaling_report.py all of them.

Every figure names its definitions (which N, which C, which loss), its design (budgets,
sizes, runs, seed replicates) and its uncertainty (which interval, or why none), so a
figure read alone says what it shows. Axes use the fits' own definitions.
"""

from __future__ import annotations

import os

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from lm import scaling, scaling_lnd

LAW_STYLE = {"isoflop": dict(color="C0", label="IsoFLOP (Approach 2)"),
             "chinchilla": dict(color="C3", label="L(N, D) fit (Approach 3)")}


def _budgets(fit_json):
  return [b for b in fit_json.get("budgets", []) if b["used"]]


def definitions_line(runs=None, fits=()) -> str:
  d = next((f["definitions"] for f in fits if f.get("definitions")), None) or (runs.attrs.get("definitions")
                                                                             if runs is not None else None)
  if not d:
    return "definitions not recorded"
  return f"N = {d['N']}, C = {d['C']}, loss = {d['loss']}"


def design_line(runs) -> str:
  reps = int((runs["replicate"] >= 0).sum()) if "replicate" in runs else 0
  return (f"{runs['budget'].nunique()} budgets, {runs['N'].nunique()} sizes, {len(runs)} runs, "
          + (f"{reps} in seed replicates" if reps else "no seed replicates"))


def uncertainty_line(f) -> str:
  pct = f"{f.get('confidence', 0.95):.0%}"
  if f.get("refused"):
    return f"{LAW_STYLE.get(f['law'], {}).get('label', f['law'])}: no band ({f['refused'][:60]}...)"
  if not f.get("n_bootstrap"):
    return f"{f['law']}: no band (no bootstrap draws)"
  return (f"{f['law']}: {pct} band, {f['n_bootstrap']} draws, {f.get('n_bootstrap_failed', 0)} failed")


def _caption(ax, lines):
  ax.text(0.01, 0.01, "\n".join(lines), transform=ax.transAxes, fontsize=6.5, va="bottom", ha="left", color="0.3")


def _colormap(n):
  return matplotlib.colormaps["viridis"].resampled(max(n, 2))


def isoflop_curves(ax, runs, iso_fit, why_no_fit: str | None = None):
  """Loss against N, one colour per budget, with each budget's parabola and its minimum;
  without a fit (iso_fit None) the runs alone, captioned with `why_no_fit`."""
  cmap = _colormap(runs["budget"].nunique())
  minima = {b["budget"]: b for b in iso_fit["budgets"]} if iso_fit else {}
  for i, (budget, g) in enumerate(sorted(runs.groupby("budget"), key=lambda kv: kv[0])):
    colour = cmap(i)
    ax.scatter(g["N"], g["loss"], color=colour, s=18, label=f"C = {budget:.2g}")
    m = minima.get(float(budget))
    if m and m["used"]:
      c2, c1, c0 = m["parabola_N"]
      x = np.linspace(np.log10(g["N"].min()), np.log10(g["N"].max()), 50)
      ax.plot(10 ** x, c0 + c1 * x + c2 * x ** 2, color=colour, lw=1)
      ax.scatter([m["N_opt"]], [m["loss_opt"]], color=colour, marker="*", s=120, edgecolor="k", zorder=3)
  d = (iso_fit or {}).get("definitions") or runs.attrs.get("definitions") or {}
  ax.set(xscale="log", xlabel=f"N ({d.get('N', 'parameters')})", ylabel=d.get("loss", "loss"),
         title="IsoFLOP curves (stars: parabola vertices)" if iso_fit else "IsoFLOP curves (no IsoFLOP fit)")
  ax.legend(fontsize=7, loc="upper right")
  _caption(ax, [definitions_line(runs, [iso_fit] if iso_fit else []), design_line(runs)]
           + ([f"no IsoFLOP fit: {why_no_fit[:90]}"] if why_no_fit else []))


def _flops_grid(fits, runs=None, decades=1.0):
  cs = [b["C"] for f in fits for b in _budgets(f)]
  if runs is not None:
    cs += list(runs["C"])
  lo, hi = np.log10(min(cs)) - decades, np.log10(max(cs)) + decades
  return np.logspace(lo, hi, 60)


def frontier(ax_n, ax_d, fits, runs=None):
  """N_opt and D_opt against C for each fit that has an allocation, with bootstrap bands;
  an IsoFLOP fit's per-budget minima as points."""
  shared = scaling.same_definitions(fits, "draw")
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
  if runs is not None:
    for ax in (ax_n, ax_d):
      ax.axvspan(runs["C"].min(), runs["C"].max(), color="0.9", zorder=0, lw=0)
  c_name, n_name = shared["C"] or "FLOPs", shared["N"] or "parameters"
  ax_n.set(xscale="log", yscale="log", xlabel=f"training C ({c_name})", ylabel=f"N_opt ({n_name})",
           title="Compute-optimal model size (grey: the fitted budgets)")
  ax_d.set(xscale="log", yscale="log", xlabel=f"training C ({c_name})", ylabel="D_opt (tokens)",
           title="Compute-optimal tokens")
  ax_n.legend(fontsize=8, loc="upper left")
  _caption(ax_d, [definitions_line(runs, fits)] + ([design_line(runs)] if runs is not None else [])
           + [uncertainty_line(f) for f in fits if f["law"] in LAW_STYLE])


def tokens_per_param(ax, fits, runs=None):
  """D_opt / N_opt against C: constant when a == b (Chinchilla's ~20)."""
  shared = scaling.same_definitions(fits, "draw")
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
  ax.set(xscale="log", yscale="log", xlabel=f"training C ({shared['C'] or 'FLOPs'})",
         ylabel=f"D_opt / N_opt (tokens per {shared['N'] or 'parameter'})", title="Compute-optimal tokens per parameter")
  ax.legend(fontsize=8, loc="upper left")
  _caption(ax, [definitions_line(runs, fits)] + [uncertainty_line(f) for f in fits if f["law"] in LAW_STYLE])


def e_profile(ax, chin_fit):
  """The L(N, D) fit with E held fixed: the rise in the sum of squares (left axis, against
  the 95% profile threshold) and the exponent a there (right axis)."""
  rows = chin_fit["e_profile"]
  e = [r["E"] for r in rows]
  rise = np.array([r["sum_sq"] for r in rows]) - chin_fit["sum_sq"]
  nz = chin_fit["noise"]
  limit = scaling_lnd.threshold(nz["s2"], nz["df"], chin_fit["confidence"])
  ax.plot(e, rise, "k.-", label="rise in sum of squares")
  ax.axhline(limit, color="k", ls=":", lw=1, label=f"{chin_fit['confidence']:.0%} threshold")
  ax.set(xlabel="E held at", ylabel="S(E) - S_min", title="L(N, D): profile over E")
  twin = ax.twinx()
  twin.plot(e, [r["a"] for r in rows], "C3.-", label="a = beta / (alpha + beta)")
  twin.set_ylabel("a at that E", color="C3")
  ax.legend(fontsize=7, loc="upper left")
  _caption(ax, [definitions_line(None, [chin_fit]), f"noise sigma {nz['sigma']:.2%} from {nz['source']} ({nz['df']} df)"])


def backtest(ax, result):
  """Observed against predicted for the held-out runs (or budgets), with the intervals."""
  rows = result["predictions"]
  if result["law"] == "chinchilla":
    obs = [r["loss"] for r in rows]
    pred = [r["predicted"] for r in rows]
    err = np.array([[p - r["interval"][0], r["interval"][1] - p] for p, r in zip(pred, rows)]).T
    label, what = result["definitions"]["loss"] if result.get("definitions") else "loss", "prediction interval"
  else:
    rows = [r for r in rows if r["used"]]
    obs = [r["N_observed"] for r in rows]
    pred = [r["N_predicted"] for r in rows]
    err = (np.array([[p - r["N_interval"][0], r["N_interval"][1] - p] for p, r in zip(pred, rows)]).T
           if rows and all("N_interval" in r for r in rows) else None)
    label, what = "N_opt", "band of the line"
  ax.errorbar(obs, pred, yerr=err, fmt="o", color="C3", capsize=3)
  if obs:
    lo, hi = min(obs + pred), max(obs + pred)
    ax.plot([lo, hi], [lo, hi], "k:", lw=1)
  ax.set(xlabel=f"observed {label}", ylabel=f"predicted {label}",
         title=f"Backtest: {result['law']}, holdout {result['holdout']}")
  s = result["summary"]
  _caption(ax, [definitions_line(None, [result]), f"fitted on {result['n_fitted']}, held out {result['n_held_out']}; "
                f"{s['inside']} of {s['judged']} inside the {result['confidence']:.0%} {what}"])


def _save(fig, out_dir, name, paths):
  path = os.path.join(out_dir, name)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  paths.append(path)


def write_pngs(runs, fits, out_dir, why_no_isoflop: str | None = None) -> list[str]:
  """isoflop.png, frontier.png and tokens_per_param.png under out_dir; the paths. Without
  an IsoFLOP fit among `fits` the IsoFLOP figure shows the runs and `why_no_isoflop`."""
  os.makedirs(out_dir, exist_ok=True)
  iso = next((f for f in fits if f["law"] == "isoflop"), None)
  paths = []
  fig = Figure(figsize=(6.5, 5))
  isoflop_curves(fig.add_subplot(), runs, iso, why_no_isoflop)
  _save(fig, out_dir, "isoflop.png", paths)
  fig = Figure(figsize=(12, 5))
  frontier(fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2), fits, runs)
  _save(fig, out_dir, "frontier.png", paths)
  fig = Figure(figsize=(6.5, 5))
  tokens_per_param(fig.add_subplot(), fits, runs)
  _save(fig, out_dir, "tokens_per_param.png", paths)
  return paths
