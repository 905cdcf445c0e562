"""A sweep directory -> one results table (docs/conventions.md, Results schema), one row per point.

    python -m experiments.sweep.collect --sweep_dir=DIR [--out=DIR/results.csv]

Each row is the point's summary.json (the schema's columns first, then the extras lm.main
writes), plus what the sweep knows about the point:
  sweep, point, model       the sweep's name, the point's directory name, its model name
  state                     pending | running | preempted | finished | diverged | failed
  flops_budget              the nominal budget C of the point (isoflop: the budget; grid: the
                            planned steps x tokens per step x flops per token)
  flops_definition          the FLOP definition C counts (flops_exact or flops_6n): fit with
                            `python -m lm.scaling fit --flops=<flops_definition>`
  budget, steps_planned, tokens_planned, attempts, message
A point without a summary.json (not started, or failed before training) keeps its planned
params and tokens and empty losses; its `status` is its state. Rows are ordered by budget, then N.
"""

from __future__ import annotations

import argparse
import os
import sys

import pandas as pd

from experiments.sweep import status as status_lib
from lm.metrics import SCHEMA

SWEEP_COLUMNS = ("sweep", "point", "model", "state", "flops_budget", "flops_definition", "budget", "steps_planned",
                 "tokens_planned", "attempts", "message")


def rows(sweep_dir: str) -> list[dict]:
  names = status_lib.point_dirs(sweep_dir)
  records = status_lib.read_records(sweep_dir)
  states = status_lib.states(sweep_dir, names)
  out = []
  for name in names:
    d = os.path.join(sweep_dir, name)
    plan = status_lib.read_json(os.path.join(d, "point.json")) or {}
    summary = status_lib.summary(d)
    record = records.get(name, {})
    row = dict(summary) if summary else {"run_id": name, "status": states[name],
                                         "params_total": plan.get("params_total"),
                                         "params_nonembedding": plan.get("params_nonembedding")}
    row.update(sweep=plan.get("sweep"), point=name, model=plan.get("model"), state=states[name],
               flops_budget=plan.get("flops_budget"), flops_definition=plan.get("flops_definition"),
               budget=plan.get("budget"), steps_planned=plan.get("steps"), tokens_planned=plan.get("tokens"),
               attempts=record.get("attempt", 0), message=record.get("message") or None)
    out.append(row)
  return out


def collect(sweep_dir: str) -> pd.DataFrame:
  table = pd.DataFrame(rows(sweep_dir))
  if table.empty:
    return pd.DataFrame(columns=list(SCHEMA) + list(SWEEP_COLUMNS))
  for c in SCHEMA:
    if c not in table:
      table[c] = None
  extras = [c for c in table.columns if c not in SCHEMA and c not in SWEEP_COLUMNS]
  table = table[list(SCHEMA) + list(SWEEP_COLUMNS) + extras]
  return table.sort_values(["flops_budget", "params_nonembedding", "point"], kind="stable").reset_index(drop=True)


def write(sweep_dir: str, out: str | None = None) -> str:
  out = out or os.path.join(sweep_dir, "results.csv")
  tmp = f"{out}.{os.getpid()}.tmp"
  collect(sweep_dir).to_csv(tmp, index=False)
  os.replace(tmp, out)
  return out


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m experiments.sweep.collect", description=__doc__.split("\n\n")[0])
  ap.add_argument("--sweep_dir", required=True)
  ap.add_argument("--out", help="CSV to write (default: SWEEP_DIR/results.csv)")
  args = ap.parse_args(argv)
  if not status_lib.point_dirs(args.sweep_dir):
    print(f"error: {args.sweep_dir} holds no sweep points (directories with a point.json)", file=sys.stderr)
    return 2
  path = write(args.sweep_dir, args.out)
  table = pd.read_csv(path)
  counts = table["state"].value_counts().to_dict()
  print(f"wrote {path}: {len(table)} points ({', '.join(f'{k} {v}' for k, v in counts.items())})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
