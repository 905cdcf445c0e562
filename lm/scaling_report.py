"""One Markdown page and its figures for a results table: the page a person looks at.

    python -m lm.scaling report --results=TABLE.csv --out_dir=DIR [--params --flops --loss --holdout --bootstrap]

Writes into DIR: REPORT.md; isoflop.png, frontier.png, tokens_per_param.png,
e_profile.png, backtest.png; FIT_isoflop.json, FIT_chinchilla.json and BACKTEST.json.
The page states where everything came from (the table and its SHA-256, the code commit,
the N, C and loss definitions, the fit settings, the number of runs, the failed
bootstrap draws) and every estimate with its interval or the reason it has none. A fit
the table cannot support is reported as such, not left out.
"""

from __future__ import annotations

import json
import math
import os

from matplotlib.figure import Figure

from lm import ladder, scaling, scaling_backtest, scaling_plan, scaling_plots
from lm.scaling import FitError


def _fmt(v) -> str:
  return "n/a" if v is None else f"{v:.4g}"


def _estimates(f: dict) -> list[str]:
  rows = ["| parameter | estimate | 95% interval | note |", "|---|---|---|---|"]
  for k, v in f["params"].items():
    iv = f["intervals"].get(k)
    bounded = (f.get("bounded") or {}).get(k, [True, True])
    note = []
    if iv and not bounded[0]:
      note.append("lower end at the domain's edge: not pinned down")
    if iv and not bounded[1]:
      note.append("upper end at the domain's edge: not pinned down")
    if f.get("estimate_corrected", {}).get(k) is not None:
      note.append(f"{_fmt(f['estimate_corrected'][k])} without the design's bias under the fitted law "
                  "(the interval is about this one)")
    shown = f"[{_fmt(iv[0])}, {_fmt(iv[1])}]" if iv else ("refused" if f.get("refused") else "none")
    rows.append(f"| {k} | {_fmt(v)} | {shown} | {'; '.join(note)} |")
  return rows


def _provenance(f: dict) -> list[str]:
  p, d = f.get("provenance", {}), f.get("definitions") or {}
  lines = [f"- table: `{p.get('results')}` (sha256 `{p.get('results_sha256', 'n/a')[:16]}...`)",
           f"- code: commit `{p.get('code_commit')}`" + (" with uncommitted changes under lm/" if p.get("code_dirty") else ""),
           f"- made: {p.get('created')}",
           f"- N = `{d.get('N')}`: {d.get('N_means')}", f"- C = `{d.get('C')}`: {d.get('C_means')}",
           f"- loss = `{d.get('loss')}`; the pair: {d.get('pair')}",
           f"- settings: {json.dumps(f.get('settings', {}))}",
           f"- runs fitted: {f['n_points']}; design {json.dumps(f.get('design', {}))}"]
  if f.get("n_bootstrap"):
    lines.append(f"- bootstrap: {f['n_bootstrap']} draws, {f['n_bootstrap_failed']} failed ({f['failure_rate']:.1%})")
  if f.get("noise"):
    nz = f["noise"]
    lines.append(f"- noise: sigma {nz['sigma']:.2%} of the loss from {nz['source']} ({nz['df']} degrees of freedom)")
  return lines


def _design(runs) -> list[str]:
  rows = ["| budget C | runs | sizes N | tokens D |", "|---|---|---|---|"]
  for budget, g in sorted(runs.groupby("budget"), key=lambda kv: kv[0]):
    rows.append(f"| {budget:.3g} | {len(g)} | {ladder.human(g['N'].min())}-{ladder.human(g['N'].max())} | "
                f"{ladder.human(g['D'].min())}-{ladder.human(g['D'].max())} |")
  return rows


def _figure(out_dir, name, paths, draw, size=(6.5, 5), panels=1):
  fig = Figure(figsize=size)
  axes = [fig.add_subplot(1, panels, i + 1) for i in range(panels)]
  draw(*axes)
  fig.tight_layout()
  path = os.path.join(out_dir, name)
  fig.savefig(path, dpi=120)
  paths.append(path)


def write_report(results, out_dir, params=scaling.DEFAULT_PARAMS, flops=scaling.DEFAULT_FLOPS, loss="eval_loss",
                 status="finished", holdout="largest_budget", bootstrap=200, seed=0) -> list[str]:
  """Fit, backtest and draw; the paths written (REPORT.md last)."""
  os.makedirs(out_dir, exist_ok=True)
  runs = scaling.load_results(results, params, flops, loss, status)
  fits, failures, paths = {}, {}, []
  for law in ("isoflop", "chinchilla"):
    try:
      fits[law] = scaling.fit_table(results, law, params, flops, loss, status, bootstrap=bootstrap, seed=seed)
    except FitError as e:
      failures[law] = str(e)
      continue
    path = os.path.join(out_dir, f"FIT_{law}.json")
    with open(path, "w") as fh:
      json.dump(fits[law], fh, indent=1)
    paths.append(path)
  bt = None
  try:
    bt = scaling_backtest.backtest(runs, "chinchilla", holdout, bootstrap=0, seed=seed)
  except FitError as e:
    failures["backtest"] = str(e)
  if bt:
    path = os.path.join(out_dir, "BACKTEST.json")
    with open(path, "w") as fh:
      json.dump(bt, fh, indent=1)
    paths.append(path)
  drawn = [f for f in fits.values()]
  if "isoflop" in fits:
    _figure(out_dir, "isoflop.png", paths, lambda ax: scaling_plots.isoflop_curves(ax, runs, fits["isoflop"]))
  if drawn:
    _figure(out_dir, "frontier.png", paths, lambda a, b: scaling_plots.frontier(a, b, drawn, runs), (12, 5), 2)
    _figure(out_dir, "tokens_per_param.png", paths, lambda ax: scaling_plots.tokens_per_param(ax, drawn, runs))
  if "chinchilla" in fits:
    _figure(out_dir, "e_profile.png", paths, lambda ax: scaling_plots.e_profile(ax, fits["chinchilla"]))
  if bt:
    _figure(out_dir, "backtest.png", paths, lambda ax: scaling_plots.backtest(ax, bt))
  md = _markdown(results, runs, fits, failures, bt, holdout)
  path = os.path.join(out_dir, "REPORT.md")
  with open(path, "w") as fh:
    fh.write(md)
  paths.append(path)
  return paths


def _markdown(results, runs, fits, failures, bt, holdout) -> str:
  d = runs.attrs["definitions"]
  out = [f"# Scaling laws: `{results}`", "",
         f"N = `{d['N']}` ({d['N_means']}); C = `{d['C']}` ({d['C_means']}); loss = `{d['loss']}`. "
         f"{scaling_plots.design_line(runs)}. Intervals are 95%.", "", "## Design", ""] + _design(runs)
  for law, title in (("isoflop", "IsoFLOP (Approach 2)"), ("chinchilla", "L(N, D) = E + A/N^alpha + B/D^beta (Approach 3)")):
    out += ["", f"## {title}", ""]
    if law in failures:
      out += [f"No fit: {failures[law]}"]
      continue
    f = fits[law]
    out += [f"Intervals: {f['interval_method']}."]
    if f.get("refused"):
      out += ["", f"**No interval**: {f['refused']}."]
    out += [""] + _estimates(f)
    if law == "isoflop":
      used = [b for b in f["budgets"] if b["used"]]
      out += ["", f"{len(used)} of {len(f['budgets'])} budgets bracketed their minimum"
              + "".join(f"; C = {b['budget']:.3g}: {b['why']}" for b in f["budgets"] if not b["used"]) + "."]
      if f.get("law_exponents"):
        out += [f"The simulating L(N, D) law's own optima along these budgets give a = {f['law_exponents']['a']:.3g}, "
                f"b = {f['law_exponents']['b']:.3g}."]
    else:
      out += ["", "With E held fixed (the profile; e_profile.png): a flat sum of squares under moving exponents is what "
              "this table cannot tell apart.", "", "| E | S(E) - S_min | alpha | beta | a |", "|---|---|---|---|---|"]
      out += [f"| {r['E']:.3g} | {r['sum_sq'] - f['sum_sq']:.3g} | {r['alpha']:.3g} | {r['beta']:.3g} | {r['a']:.3g} |"
              for r in f["e_profile"]]
    out += ["", "Provenance:", ""] + _provenance(f)
  out += ["", "## Frontier and tokens per parameter", "", "![frontier](frontier.png)", "",
          "![tokens per parameter](tokens_per_param.png)", ""]
  if fits:
    top = max(runs["C"])
    out += ["| fit | C | N_opt [95%] | D_opt [95%] | tokens/param | extrapolation |", "|---|---|---|---|---|---|"]
    for law, f in fits.items():
      for c in (top, 10 * top):
        p = scaling_plan.plan(f, c)
        iv = lambda k: (f" [{ladder.human(p[k][0])}, {ladder.human(p[k][1])}]" if k in p else " [none]")
        e = p["extrapolation"]
        out.append(f"| {law} | {c:.3g} | {ladder.human(p['N_opt'])}{iv('N_interval')} | {ladder.human(p['D_opt'])}"
                   f"{iv('D_interval')} | {p['tokens_per_param']:.3g} | {e.get('C_decades', math.nan):+.1f} decades of C |")
  out += ["", "## Backtest", ""]
  if bt:
    out += ["```", scaling_backtest.format_backtest(bt), "```", "", "![backtest](backtest.png)"]
  else:
    out += [f"No backtest (holdout {holdout}): {failures.get('backtest')}"]
  if "isoflop" in fits:
    out += ["", "## IsoFLOP curves", "", "![isoflop](isoflop.png)"]
  if "chinchilla" in fits:
    out += ["", "![E profile](e_profile.png)"]
  return "\n".join(out) + "\n"
