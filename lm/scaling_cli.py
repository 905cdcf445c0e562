"""The command line of lm.scaling: `python -m lm.scaling {fit,plan,backtest,plot,report} ...`.

See lm/scaling.py for the laws, definitions and intervals. Errors a table or a fit
raises (FitError) print as one line naming the fix, with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from lm import scaling, scaling_backtest, scaling_plan, scaling_plots, scaling_report
from lm.scaling import FitError


def _definition_args(p, defaults=True):
  p.add_argument("--params", default=scaling.DEFAULT_PARAMS if defaults else None, choices=scaling.PARAMS_COLUMNS,
                 help="N: non-embedding or total parameters")
  p.add_argument("--flops", default=scaling.DEFAULT_FLOPS if defaults else None, choices=scaling.FLOPS_COLUMNS,
                 help="C: flops_executed (what runs), flops_exact (Appendix F as printed) or flops_6n")
  p.add_argument("--loss", default="eval_loss" if defaults else None, help="the metric column to fit")
  p.add_argument("--status", default="finished", help="keep rows with this status ('' keeps all)")


def _parser() -> argparse.ArgumentParser:
  ap = argparse.ArgumentParser(prog="python -m lm.scaling", description=scaling.__doc__.split("\n\n")[0])
  sub = ap.add_subparsers(dest="command", required=True)
  f = sub.add_parser("fit", help="fit a scaling law to a results table; write FIT.json")
  f.add_argument("--results", required=True, help="results table (.csv or .parquet), docs/conventions.md, Results schema")
  f.add_argument("--law", required=True, choices=scaling.LAWS)
  f.add_argument("--out", required=True, help="FIT.json to write")
  _definition_args(f)
  f.add_argument("--bootstrap", type=int, default=200, help="bootstrap draws (bands; isoflop's interval)")
  f.add_argument("--seed", type=int, default=0)
  f.add_argument("--n_starts", type=int, default=128, help="saturating law: L-BFGS starts from the Huber grid")
  p = sub.add_parser("plan", help="compute-optimal N and D for a budget, and the ladder rung to train")
  p.add_argument("--fit", required=True)
  p.add_argument("--flops", type=float, help="training budget in FLOPs, in the fit's FLOP definition")
  p.add_argument("--device_hours", type=float, help="budget in device-hours (device count x hours)")
  p.add_argument("--device", help="device for --device_hours, e.g. h100, a100, tpu-v5p")
  p.add_argument("--mfu", type=float, default=0.4, help="assumed MFU for --device_hours")
  p.add_argument("--mfu_flops", default=scaling.DEFAULT_FLOPS, choices=scaling.FLOPS_COLUMNS,
                 help="the FLOP definition the MFU counts (lm.train reports it on flops_executed)")
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--json", action="store_true", help="print the plan as JSON")
  b = sub.add_parser("backtest", help="fit without some runs, predict them, check the intervals")
  b.add_argument("--results", required=True)
  b.add_argument("--law", required=True, choices=("chinchilla", "isoflop"))
  b.add_argument("--holdout", default="largest_budget",
                 help="largest_budget, largest_rung, or a rule like 'C>=1e12' (N, D or C)")
  b.add_argument("--json", help="also write the backtest as JSON here")
  _definition_args(b)
  b.add_argument("--bootstrap", type=int, default=200)
  b.add_argument("--seed", type=int, default=0)
  g = sub.add_parser("plot", help="write IsoFLOP, frontier and tokens-per-parameter PNGs")
  g.add_argument("--results", required=True)
  g.add_argument("--out_dir", required=True)
  g.add_argument("--fit", action="append", default=[], help="FIT.json to draw (repeatable); its definitions are "
                 "used; default: an isoflop fit of the table")
  _definition_args(g, defaults=False)
  g.add_argument("--bootstrap", type=int, default=200)
  r = sub.add_parser("report", help="fits, backtest, figures and one Markdown page (REPORT.md)")
  r.add_argument("--results", required=True)
  r.add_argument("--out_dir", required=True)
  _definition_args(r)
  r.add_argument("--holdout", default="largest_budget")
  r.add_argument("--bootstrap", type=int, default=200)
  r.add_argument("--seed", type=int, default=0)
  return ap


def _shown(out: dict) -> str:
  parts = []
  for k, v in out["params"].items():
    iv = out["intervals"].get(k)
    parts.append(f"{k}={v:.4g}" + (f" [{iv[0]:.4g}, {iv[1]:.4g}]" if iv else ""))
  return ", ".join(parts)


def _fit(args):
  out = scaling.fit_table(args.results, args.law, args.params, args.flops, args.loss, args.status,
                          bootstrap=args.bootstrap, seed=args.seed, n_starts=args.n_starts)
  with open(args.out, "w") as fh:
    json.dump(out, fh, indent=1)
  print(f"{args.law} fit of {out['n_points']} runs (N = {args.params}, C = {args.flops}, loss = {args.loss}): "
        f"{_shown(out)}")
  if out["n_bootstrap"]:
    print(f"bootstrap: {out['n_bootstrap_failed']} of {out['n_bootstrap']} draws failed ({out['failure_rate']:.1%})")
  if out.get("refused"):
    print(f"no interval: {out['refused']}")
  unbounded = [k for k, b in (out.get("bounded") or {}).items() if not all(b)]
  if unbounded:
    print(f"not pinned down by this table (an interval side at its domain's edge): {', '.join(unbounded)}")
  print(f"wrote {args.out}")


def _plan(args):
  with open(args.fit) as fh:
    fit_json = json.load(fh)
  if (args.flops is None) == (args.device_hours is None):
    raise FitError("give exactly one of --flops and --device_hours (with --device).")
  budget = args.flops
  if budget is None:
    if not args.device:
      raise FitError("--device_hours needs --device (e.g. h100, a100, tpu-v5p).")
    budget = scaling_plan.budget_from_device_hours(fit_json, args.device_hours, args.device, args.mfu, args.mfu_flops,
                                                   args.dtype)
    print(f"{args.device_hours:g} {args.device} device-hours x {args.mfu:.0%} MFU ({args.dtype}, {args.mfu_flops}) "
          f"= {budget:.3g} FLOPs")
  result = scaling_plan.plan(fit_json, budget)
  if args.json and result["extrapolation"].get("warning"):
    print(f"warning: {result['extrapolation']['warning']}", file=sys.stderr)
  print(json.dumps(result, indent=1) if args.json else scaling_plan.format_plan(result))


def _backtest(args):
  runs = scaling.load_results(args.results, args.params, args.flops, args.loss, args.status or None)
  result = scaling_backtest.backtest(runs, args.law, args.holdout, bootstrap=args.bootstrap, seed=args.seed)
  print(scaling_backtest.format_backtest(result))
  if args.json:
    with open(args.json, "w") as fh:
      json.dump(result, fh, indent=1)
    print(f"wrote {args.json}")


def _plot(args):
  fits = []
  for path in args.fit:
    with open(path) as fh:
      fits.append(json.load(fh))
  shared = scaling.same_definitions(fits, "draw")
  flags = {"N": args.params, "C": args.flops, "loss": args.loss}
  for key, flag in flags.items():
    if flag is not None and shared[key] is not None and flag != shared[key]:
      raise FitError(f"the fits were made with {key} = {shared[key]} but the flags say {flag}; drop the flag (plot "
                     "uses the fits' own definitions) or refit.")
  chosen = {k: shared[k] or flags[k] for k in flags}
  runs = scaling.load_results(args.results, chosen["N"] or scaling.DEFAULT_PARAMS, chosen["C"] or scaling.DEFAULT_FLOPS,
                              chosen["loss"] or "eval_loss", args.status or None)
  why = None
  if not any(f["law"] == "isoflop" for f in fits):
    try:
      fits.insert(0, scaling.fit(runs, "isoflop", bootstrap=args.bootstrap))
    except FitError as e:  # the curves are still worth drawing; the figure says why there is no fit
      why = str(e)
      print(f"no IsoFLOP fit: {e}", file=sys.stderr)
  for path in scaling_plots.write_pngs(runs, fits, args.out_dir, why):
    print(f"wrote {path}")


def _report(args):
  for path in scaling_report.write_report(args.results, args.out_dir, args.params, args.flops, args.loss,
                                          args.status or None, args.holdout, args.bootstrap, args.seed):
    print(f"wrote {path}")


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  try:
    {"fit": _fit, "plan": _plan, "backtest": _backtest, "plot": _plot, "report": _report}[args.command](args)
  except (FitError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
