"""Quality against cost over a set of models: the Pareto frontier, the price of each step
along it, and figures. Pure numpy / pandas / matplotlib, so a notebook imports it cheaply.

    mask = pareto(table["ms_per_token_b1"], table["eval_bpb"])   # lower is better on both axes
    frontier_steps(table, "ms_per_token_b1", "eval_bpb")         # one row per step along the frontier
    per_doubling(table, "ms_per_token_b1", "eval_bpb")           # bpb per doubling of cost (least squares)

A model is Pareto-optimal when no other model is at most as costly and at most as bad, and
strictly better on one of the two (so of two identical points both stay on the frontier).
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter


def pareto(cost, quality) -> np.ndarray:
  """bool [n]: True where no other point dominates (lower is better for cost and quality).
  NaN in either coordinate is never optimal and dominates nothing."""
  c, q = np.asarray(cost, float), np.asarray(quality, float)
  ok = np.isfinite(c) & np.isfinite(q)
  out = np.zeros(len(c), bool)
  for i in np.flatnonzero(ok):
    no_worse = ok & (c <= c[i]) & (q <= q[i])
    better = (c < c[i]) | (q < q[i])
    out[i] = not np.any(no_worse & better)
  return out


def frontier(table: pd.DataFrame, cost: str, quality: str) -> pd.DataFrame:
  """The Pareto-optimal rows, cheapest first."""
  return table[pareto(table[cost], table[quality])].sort_values([cost, quality]).reset_index(drop=True)


def frontier_steps(table: pd.DataFrame, cost: str, quality: str, label: str = "name") -> pd.DataFrame:
  """Each step from one frontier model to the next more costly one: the cost ratio, the
  quality gained (from - to, positive = better) and the gain per doubling of cost,
  gain / log2(ratio): e.g. 3.2x the ms/token for 0.10 bpb is 0.10 / 1.68 = 0.060 bpb per 2x."""
  f = frontier(table, cost, quality)
  rows = []
  for a, b in zip(f.itertuples(index=False), f.iloc[1:].itertuples(index=False)):
    ca, cb, qa, qb = getattr(a, cost), getattr(b, cost), getattr(a, quality), getattr(b, quality)
    ratio = cb / ca
    rows.append({"from": getattr(a, label), "to": getattr(b, label), f"{cost} from": ca, f"{cost} to": cb,
                 "cost ratio": ratio, f"{quality} from": qa, f"{quality} to": qb, "gain": qa - qb,
                 "gain per 2x cost": (qa - qb) / np.log2(ratio) if ratio > 1 else np.nan})
  return pd.DataFrame(rows)


def per_doubling(table: pd.DataFrame, cost: str, quality: str) -> float:
  """Quality gained per doubling of cost along the frontier: minus the least-squares slope
  of quality against log2(cost) over the frontier points with a positive cost (a timing
  swamped by noise can come out <= 0); NaN with fewer than two."""
  f = frontier(table, cost, quality)
  f = f[f[cost] > 0]
  if len(f) < 2 or f[cost].nunique() < 2:
    return float("nan")
  slope = np.polyfit(np.log2(f[cost].to_numpy(float)), f[quality].to_numpy(float), 1)[0]
  return float(-slope)


def frontier_plot(ax, table: pd.DataFrame, cost: str, quality: str, label: str = "name", xlabel: str | None = None,
                  title: str | None = None, colour: str = "C0", marker: str = "o", legend: str | None = None):
  """Every model as a point (hollow when dominated), the frontier as a line, points labelled."""
  mask = pareto(table[cost], table[quality])
  f = frontier(table, cost, quality)
  ax.plot(f[cost], f[quality], "-", color=colour, lw=1, alpha=0.7)
  ax.scatter(table[cost][mask], table[quality][mask], color=colour, marker=marker, s=36, zorder=3,
             label=(legend + ": " if legend else "") + "Pareto-optimal")
  if (~mask).any():
    ax.scatter(table[cost][~mask], table[quality][~mask], facecolor="none", edgecolor=colour, marker=marker, s=36,
               zorder=3, label=(legend + ": " if legend else "") + "dominated")
  for x, y, name in zip(table[cost], table[quality], table[label]):
    ax.annotate(str(name), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
  ax.set(xscale="log", xlabel=xlabel or cost, ylabel=quality)
  ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # 0.2, 0.5, 1, 2, 5: under two decades of data
  ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
  ax.xaxis.set_minor_formatter(NullFormatter())
  if title:
    ax.set_title(title)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=7)


def latency_figure(table: pd.DataFrame, batches, quality: str = "eval_bpb") -> Figure:
  """One panel per batch size: quality against ms per generated token."""
  fig = Figure(figsize=(5.5 * len(batches), 4.5))
  axes = fig.subplots(1, len(batches), squeeze=False)[0]
  for ax, b in zip(axes, batches):
    slope = per_doubling(table, f"ms_per_token_b{b}", quality)
    frontier_plot(ax, table, f"ms_per_token_b{b}", quality, xlabel=f"ms per token per sequence, batch {b}",
                  title=f"batch {b}: {slope:.3f} {quality} per 2x latency on the frontier")
  fig.tight_layout()
  return fig


def bytes_figure(table: pd.DataFrame, batches, quality: str = "eval_bpb") -> Figure:
  """Quality against bytes read from memory per generated token, one series per batch size."""
  fig = Figure(figsize=(6.5, 4.5))
  ax = fig.subplots()
  for i, b in enumerate(batches):
    frontier_plot(ax, table, f"bytes_per_token_b{b}", quality, xlabel="bytes moved per token (weights + KV cache)",
                  colour=f"C{i}", marker="os^D"[i % 4], legend=f"batch {b}")
  ax.set_title("memory traffic per token against quality")
  fig.tight_layout()
  return fig


def write_pngs(table: pd.DataFrame, out_dir: str, batches, quality: str = "eval_bpb") -> list[str]:
  os.makedirs(out_dir, exist_ok=True)
  out = []
  for name, fig in (("frontier_latency.png", latency_figure(table, batches, quality)),
                    ("bytes_per_token.png", bytes_figure(table, batches, quality))):
    path = os.path.join(out_dir, name)
    fig.savefig(path, dpi=110)
    out.append(path)
  return out
