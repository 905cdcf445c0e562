"""Does the optimal learning rate transfer across width? An LR sweep at 4 widths spanning 8x,
under SP and under µP (model.parameterization), on the embedded State of the Union corpus.

    flock /work/notes/cpu.lock python -m experiments.studies.lr_transfer      # ~40 min on 2 shared cores
    python -m experiments.studies.lr_transfer --seed=1 --widths=32,64 --out=experiments/results/lr_transfer/seed1
    python -m experiments.studies.lr_transfer --widths=128 --parameterizations=mup --lr_exponents=-3,-2 \
        --out=experiments/results/lr_transfer/mup128_high    # µP's optimum at 128 lay at the grid's top
    python -m experiments.studies.lr_transfer --extra_rows=experiments/results/lr_transfer/mup128_high
    python -m experiments.studies.lr_transfer --compare=experiments/results/lr_transfer,experiments/results/lr_transfer/seed1
    python -m experiments.studies.lr_transfer --smoke --out=/tmp/lr_smoke     # a minute: the pipeline

Writes OUT/results.csv (one row per parameterization, width, LR), OUT/optima.csv (the optimal
LR per width with its interval), OUT/lr_transfer.png (loss against LR per width, one panel
per parameterization) and OUT/README.md (date, command, machine, load, wall time, tables).

Design (~40 minutes on 2 shared cores; lm/lr_sweep.py trains a sweep's LRs side by side):
  model   lm's Llama family (RoPE, RMSNorm, SwiGLU), 2 layers, 4 heads (head_dim = width/4,
          so µP's 1/head_dim attention scale is exercised), d_ff = 3.5 width, tied embeddings
  widths  16, 32, 64, 128; µP's base width 32 (so at width 32, SP and µP are one model; at 16
          µP's multipliers are the base's x 2). 32-256 was the first design: a width-256
          sweep is 31 TFLOP, ~50 min at the ~10 GFLOP/s the width-128 sweeps ran at on the
          shared cores (load ~8), so the 8x span moved down an octave
  data    byte tokenizer (vocabulary 259: the body, not the embedding, holds the parameters
          whose rules differ), sequences of 128, batches of 8: 1,024 tokens a step
  train   300 steps (307K tokens), warmup 30, cosine to 0.1x, AdamW b2 0.95, decay 0.1,
          clipping 1.0: lm's defaults, one seed, the same data order at every LR and width
  LRs     2^-11 ... 2^-4 (8 values, a factor 2 apart)
  measure eval loss on 8 held-out batches after the last step (after the decay, as Wen et
          al. 2025 insist), optimum from a parabola in log2(lr) with a +-2 SE interval
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

from lm import lr_sweep

WIDTHS = (16, 32, 64, 128)
BASE_WIDTH = 32
LRS = lr_sweep.LRS  # 2^-11 ... 2^-4: 4.9e-4 ... 6.25e-2
PARAMETERIZATIONS = ("sp", "mup")
QUIET_MINUTES = 40  # ~24 TFLOP (flops_executed x 307K tokens x 8 LRs x 8 sweeps) at ~10 GFLOP/s (width 128, load ~8)


def config(width: int, parameterization: str, steps: int, seed: int = 0):
  cfg = lr_sweep.transfer_config(width, parameterization, base_width=BASE_WIDTH, steps=steps)
  cfg.train.seed = seed  # the initialisation and the data order
  return cfg


def read_rows(out: str) -> list[dict]:
  with open(os.path.join(out, "rows.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


def run(out: str, widths, lrs, steps: int, seed: int = 0, parameterizations=PARAMETERIZATIONS,
        extra_rows=()) -> dict:
  # width-major: an interrupted run still has both parameterizations over the widths it reached
  groups = [{"parameterization": p, "width": w} for w in widths for p in parameterizations]
  rows, record = lr_sweep.run_groups(
      out, groups, lambda g: config(g["width"], g["parameterization"], steps, seed), lambda g: lrs)
  for extra in extra_rows:  # an extension of the grid for some groups (same design and seed), in its own dir
    rows += [r for r in read_rows(extra) if {"parameterization": r["parameterization"], "width": r["width"]} in groups
             and r["steps"] == steps]
  optima = lr_sweep.best_table(rows, ("parameterization", "width"))
  lr_sweep.write_csv(os.path.join(out, "results.csv"), rows)
  lr_sweep.write_csv(os.path.join(out, "optima.csv"), optima)
  lr_sweep.plot(rows, optima, os.path.join(out, "lr_transfer.png"), "parameterization", "width", "LR sweep")
  shifts = {p: lr_sweep.shift_exponent([o["width"] for o in optima if o["parameterization"] == p],
                                       [o["lr"] for o in optima if o["parameterization"] == p])
            for p in parameterizations}
  record.update(command=" ".join(["python -m experiments.studies.lr_transfer"] + sys.argv[1:]),
                shift_exponent=shifts)
  with open(os.path.join(out, "run.json"), "w") as f:
    json.dump(record, f, indent=1)
  text = report(optima, shifts, record, rows)
  design = __doc__.split("Design (")[1].split("\n", 1)[1]
  lr_sweep.write_readme(out, "LR transfer across width: SP against µP", design, record,
                        text + "\n\n![loss against LR](lr_transfer.png)", QUIET_MINUTES)
  print(text)
  return record


PLATEAU_EXIT_LOSS = 2.95  # the runs stall at 3.01-3.03 nats a byte (the unigram loss); below this they left it


def plateau_exits(rows) -> str:
  """The first logged step after 50 whose train loss is below PLATEAU_EXIT_LOSS, per run, with its
  final eval loss: the step at which a run left the unigram plateau (- : it never reached it)."""
  lrs = sorted({r["lr"] for r in rows})
  lines = ["| parameterization | width | " + " | ".join(f"2^{math.log2(lr):.0f}" for lr in lrs) + " |",
           "|---|---|" + "---|" * len(lrs)]
  for p, w in sorted({(r["parameterization"], r["width"]) for r in rows}, key=lambda k: (k[0], k[1])):
    by_lr = {r["lr"]: r for r in rows if (r["parameterization"], r["width"]) == (p, w)}
    cells = []
    for lr in lrs:
      r = by_lr.get(lr)
      step = next((s for s, loss in r["curve"] if s > 50 and loss < PLATEAU_EXIT_LOSS), None) if r else None
      cells.append("" if r is None else f"{step or '-'}: {lr_sweep.fmt(r['eval_loss'], '.3f')}")
    lines.append(f"| {p} | {w} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def report(optima, shifts, load, rows=()) -> str:
  lines = [lr_sweep.optima_markdown(optima, ("parameterization", "width")), ""]
  lines += [f"{p}: lr* ~ width^{lr_sweep.fmt(b, '.2f')} (log-log slope of the optimum over the widths)"
            for p, b in shifts.items()]
  lines.append(lr_sweep.load_line(load))
  if rows:
    lines += ["", "Step at which each run's train loss left the unigram plateau (below "
              f"{PLATEAU_EXIT_LOSS} nats), and its final eval loss:", "", plateau_exits(rows)]
  return "\n".join(lines)


def seed_table(dirs) -> str:
  """The optimum per parameterization and width in each replicate's rows (OUT/rows.jsonl of
  each dir), and how far two replicates' losses at the same LR lie apart: the noise of a point."""
  runs = [read_rows(d) for d in dirs]
  keys = sorted({(r["parameterization"], r["width"]) for r in runs[1]}, key=lambda k: (k[1], k[0]))
  lines = ["| parameterization | width | " + " | ".join(f"lr* ({d})" for d in dirs)
           + " | max abs loss difference at one LR | mean abs difference |", "|---|---|" + "---|" * (len(dirs) + 2)]
  for p, w in keys:
    sel = [sorted((r for r in rows if (r["parameterization"], r["width"]) == (p, w)), key=lambda r: r["lr"]) for rows in runs]
    best = [lr_sweep.optimum([r["lr"] for r in s], [r["eval_loss"] for r in s]) for s in sel]
    diffs = [abs(a["eval_loss"] - b["eval_loss"]) for a, b in zip(sel[0], sel[1])
             if a["lr"] == b["lr"] and a["eval_loss"] is not None and b["eval_loss"] is not None]
    lines.append(f"| {p} | {w} | " + " | ".join(f"{lr_sweep.fmt(b['lr'])} (grid {lr_sweep.fmt(b['best_lr'])})" for b in best)
                 + f" | {max(diffs):.3f} | {sum(diffs) / len(diffs):.3f} |")
  return "\n".join(lines)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", default="experiments/results/lr_transfer")
  p.add_argument("--smoke", action="store_true", help="2 widths, 3 LRs, 20 steps: checks the pipeline")
  p.add_argument("--seed", type=int, default=0, help="a replicate: another initialisation and data order")
  p.add_argument("--widths", default=",".join(map(str, WIDTHS)), help="comma-separated (a replicate of some)")
  p.add_argument("--parameterizations", default=",".join(PARAMETERIZATIONS))
  p.add_argument("--lr_exponents", default="", help="comma-separated e of lr = 2^e (default: LRS, 2^-11 ... 2^-4)")
  p.add_argument("--extra_rows", default="", help="comma-separated dirs whose rows extend the grid (e.g. mup128_high)")
  p.add_argument("--compare", default="", help="comma-separated result dirs: print seed_table() of their rows")
  args = p.parse_args(argv)
  if args.compare:
    print(seed_table(args.compare.split(",")))
  elif args.smoke:
    run(args.out, (BASE_WIDTH, 2 * BASE_WIDTH), LRS[2:5], steps=20)
  else:
    lrs = tuple(2.0 ** int(e) for e in args.lr_exponents.split(",")) if args.lr_exponents else LRS
    run(args.out, tuple(int(w) for w in args.widths.split(",")), lrs, steps=300, seed=args.seed,
        parameterizations=tuple(args.parameterizations.split(",")), extra_rows=[d for d in args.extra_rows.split(",") if d])


if __name__ == "__main__":
  from lm.cli import set_process_defaults  # local: entry points set lm's XLA flags
  set_process_defaults()
  main()
