"""A folder of runs -> one results table (docs/conventions.md, Results schema), one row per run.

    python -m experiments.sweep.collect --dir=DIR [--out=DIR/results.csv]     (--sweep_dir=DIR too)

DIR is a sweep directory, or any folder of lm workdirs (standalone runs, several sweeps side
by side, or one workdir): every directory below DIR with a summary.json or a point.json is a
run; the search does not descend into a run. Each row is the run's summary.json (the schema's
columns first, then the extras lm.main writes), plus what the sweep knows about it:
  sweep, point, model       the sweep's name, the run's directory relative to DIR, its model name
                            (a standalone run: no sweep or model; its point is its path)
  state                     pending | running | preempted | finished | diverged | failed
  flops_budget              the nominal budget C of the point (isoflop: the budget; grid: the
                            planned steps x tokens per step x flops per token)
  flops_definition          the FLOP definition C counts (flops_exact, flops_executed or flops_6n): fit with
                            `python -m lm.scaling fit --flops=<flops_definition>`
  budget, steps_planned, tokens_planned, attempts, message
and what it cost:
  device_s                  wall_s x device_count: the devices' time in lm's own training clock,
                            which sums every attempt up to the checkpoint it resumed from (so a
                            preempted-then-resumed run costs what an uninterrupted one does)
  device_s_spent            the sum over attempts of each process's lifetime x its devices: also
                            start-up, compilation and the work lost after the last checkpoint
                            (status.close_attempt; known for sweep points, empty for standalone runs)
  wall_s_spent              the same lifetimes, without the devices
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
COST_COLUMNS = ("device_s", "device_s_spent", "wall_s_spent")


def run_dirs(root: str) -> list[str]:
  """Directories below root (root included) with a summary.json or point.json, sorted; runs'
  own subdirectories (checkpoints, tensorboard) are not searched."""
  found = []
  for here, subdirs, files in os.walk(root):
    if "summary.json" in files or "point.json" in files:
      found.append(here)
      subdirs[:] = []
    else:
      subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
  return sorted(found)


def _row(name: str, d: str, record: dict, state: str) -> dict:
  plan = status_lib.read_json(os.path.join(d, "point.json")) or {}
  summary = status_lib.summary(d)
  row = dict(summary) if summary else {"run_id": name, "status": state, "params_total": plan.get("params_total"),
                                       "params_nonembedding": plan.get("params_nonembedding")}
  if not summary and record.get("devices"):  # a scheduler's allocation, before lm said
    row.update(device_count=record["devices"], device_kind=record.get("device_kind"))
  wall, devices = row.get("wall_s"), row.get("device_count")
  row.update(sweep=plan.get("sweep"), point=name, model=plan.get("model"), state=state,
             flops_budget=plan.get("flops_budget"), flops_definition=plan.get("flops_definition"),
             budget=plan.get("budget"), steps_planned=plan.get("steps"), tokens_planned=plan.get("tokens"),
             role=plan.get("role"), branch_step=plan.get("branch_step"),
             attempts=record.get("attempt", 0) if plan else None, message=record.get("message") or None,
             device_s=wall * devices if wall is not None and devices else None,
             device_s_spent=record.get("device_s_spent"), wall_s_spent=record.get("wall_s_spent"))
  return row


def rows(root: str) -> list[dict]:
  """A sweep point's state and record come from its sweep directory (the folder holding it);
  a standalone run's state is its summary's status."""
  out, sweeps = [], {}
  for d in run_dirs(root):
    name = os.path.relpath(d, root) if d != root else os.path.basename(os.path.abspath(d))
    if os.path.isfile(os.path.join(d, "point.json")):
      sweep_dir, point = os.path.split(d)
      if sweep_dir not in sweeps:
        names = status_lib.point_dirs(sweep_dir)
        sweeps[sweep_dir] = (status_lib.states(sweep_dir, names), status_lib.read_records(sweep_dir))
      states, records = sweeps[sweep_dir]
      out.append(_row(name, d, records.get(point, {}), states[point]))
    else:
      out.append(_row(name, d, {}, (status_lib.summary(d) or {}).get("status", "pending")))
  return out


def collect(root: str) -> pd.DataFrame:
  table = pd.DataFrame(rows(root))
  head = list(SCHEMA) + list(SWEEP_COLUMNS) + list(COST_COLUMNS)
  if table.empty:
    return pd.DataFrame(columns=head)
  for c in head:
    if c not in table:
      table[c] = None
  extras = [c for c in table.columns if c not in head]
  table = table[head + extras]
  return table.sort_values(["flops_budget", "params_nonembedding", "point"], kind="stable").reset_index(drop=True)


def write(root: str, out: str | None = None) -> str:
  out = out or os.path.join(root, "results.csv")
  tmp = f"{out}.{os.getpid()}.tmp"
  collect(root).to_csv(tmp, index=False)
  os.replace(tmp, out)
  return out


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m experiments.sweep.collect", description=__doc__.split("\n\n")[0])
  ap.add_argument("--dir", "--sweep_dir", dest="dir", required=True,
                  help="A sweep directory or any folder of lm workdirs.")
  ap.add_argument("--out", help="CSV to write (default: DIR/results.csv)")
  args = ap.parse_args(argv)
  if not run_dirs(args.dir):
    print(f"error: {args.dir} holds no runs (no directory with a summary.json or a point.json below it)",
          file=sys.stderr)
    return 2
  path = write(args.dir, args.out)
  table = pd.read_csv(path)
  counts = table["state"].value_counts().to_dict()
  print(f"wrote {path}: {len(table)} runs ({', '.join(f'{k} {v}' for k, v in counts.items())})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
