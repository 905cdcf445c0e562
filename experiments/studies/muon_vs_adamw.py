"""Muon against AdamW on two CPU rungs of the ladder at equal tokens, each optimizer with its
own LR sweep, compared at the end of training (after the decay: Wen et al. 2025, "Fantastic
Pretraining Optimizers and Where to Find Them", show mid-training comparisons mislead).

    flock /work/notes/cpu.lock python -m experiments.studies.muon_vs_adamw    # ~35 min, 2 quiet cores
    python -m experiments.studies.muon_vs_adamw --smoke --out=/tmp/muon_smoke

Writes OUT/results.csv, OUT/optima.csv, OUT/muon_vs_adamw.png and OUT/README.md.

Design:
  rungs   configs/ladder.py's p50k (32 wide, 3 layers) and p200k (64 wide, 4 layers): their
          shapes, SentencePiece 4096 vocabulary, sequences of 128, batches of 16, SP
          parameterization (the comparison is of optimizers at fixed shapes)
  tokens  500 steps (1.02M tokens) for both optimizers, warmup 50, cosine to 0.1x (the
          rungs' ladder default is 1000 steps; halved to fit the time)
  AdamW   optim.lr over 2^-10 ... 2^-5 (6 values), b2 0.95, decay 0.1
  Muon    optim.muon_lr over 2^-8 ... 2^-3 (6 values) for the hidden matrices (momentum 0.95,
          Nesterov, 5 Newton-Schulz steps, x sqrt(max(1, fan_out/fan_in))); the embedding,
          norms and biases on AdamW at the rung's best AdamW LR from the first sweep
  measure eval loss on 8 held-out batches after the last step; optimum and interval as in
          lm/lr_sweep.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from configs import ladder
from lm import lr_sweep

RUNGS = ("p50k", "p200k")
ADAMW_LRS = tuple(2.0 ** e for e in range(-10, -4))
MUON_LRS = tuple(2.0 ** e for e in range(-8, -2))
QUIET_MINUTES = 35  # ~55 TFLOP (6 LRs x 2 optimizers x 1.02M tokens x (1.2 + 3.3) MFLOP/token) at 25 GFLOP/s


def config(rung: str, optimizer: str, steps: int, adam_lr: float | None = None):
  cfg = ladder.get_config(rung)
  cfg.train.steps = steps
  cfg.optim.warmup_steps = max(1, steps // 10)
  cfg.model.parameterization = "sp"
  for field in ("base_width", "base_head_dim", "base_depth"):
    cfg.model[field] = None
  cfg.optim.name = optimizer
  if adam_lr is not None:
    cfg.optim.lr = adam_lr
  return cfg


def run(out: str, rungs, adamw_lrs, muon_lrs, steps: int) -> dict:
  adamw_groups = [{"rung": r, "optimizer": "adamw"} for r in rungs]
  rows, _ = lr_sweep.run_groups(out, adamw_groups, lambda g: config(g["rung"], "adamw", steps), lambda g: adamw_lrs)
  best_adamw = {o["rung"]: o["best_lr"] for o in lr_sweep.best_table(rows, ("rung", "optimizer"))}
  muon_groups = [{"rung": r, "optimizer": "muon"} for r in rungs]
  lr_sweep.run_groups(out, muon_groups, lambda g: config(g["rung"], "muon", steps, adam_lr=best_adamw[g["rung"]]),
                      lambda g: muon_lrs, swept_of=lambda g: "muon")
  rows, record = lr_sweep.run_groups(out, adamw_groups + muon_groups, None, None)  # all done: reads them back
  optima = lr_sweep.best_table(rows, ("rung", "optimizer"))
  lr_sweep.write_csv(os.path.join(out, "results.csv"), rows)
  lr_sweep.write_csv(os.path.join(out, "optima.csv"), optima)
  lr_sweep.plot(rows, optima, os.path.join(out, "muon_vs_adamw.png"), "rung", "optimizer", "rung")
  lines = [lr_sweep.optima_markdown(optima, ("rung", "optimizer")), "",
           "| rung | AdamW best eval loss | Muon best eval loss | Muon - AdamW | sweep wall s (AdamW, Muon) |",
           "|---|---|---|---|---|"]
  for rung in rungs:
    by = {o["optimizer"]: o for o in optima if o["rung"] == rung}
    walls = {g: next(r["group_wall_s"] for r in rows if r["rung"] == rung and r["optimizer"] == g)
             for g in ("adamw", "muon")}
    a, m = by["adamw"]["min_eval_loss"], by["muon"]["min_eval_loss"]
    lines.append(f"| {rung} | {a:.4f} | {m:.4f} | {m - a:+.4f} | {walls['adamw']:.0f}, {walls['muon']:.0f} |")
  lines.append(f"\nMuon's AdamW side (embeddings, norms) at the rung's best AdamW LR: {best_adamw}")
  lines.append(lr_sweep.load_line(record))
  text = "\n".join(lines)
  record.update(command=" ".join(["python -m experiments.studies.muon_vs_adamw"] + sys.argv[1:]),
                adamw_lr_for_muon=best_adamw)
  with open(os.path.join(out, "run.json"), "w") as f:
    json.dump(record, f, indent=1)
  design = __doc__.split("Design:")[1]
  lr_sweep.write_readme(out, "Muon against AdamW on two CPU rungs", design, record,
                        text + "\n\n![loss against LR](muon_vs_adamw.png)", QUIET_MINUTES)
  print(text)
  return record


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", default="experiments/results/muon_vs_adamw")
  p.add_argument("--smoke", action="store_true", help="one rung, 3 LRs each, 20 steps")
  args = p.parse_args(argv)
  if args.smoke:
    run(args.out, RUNGS[:1], ADAMW_LRS[2:5], MUON_LRS[2:5], steps=20)
  else:
    run(args.out, RUNGS, ADAMW_LRS, MUON_LRS, steps=500)


if __name__ == "__main__":
  from lm.cli import set_process_defaults  # local: entry points set lm's XLA flags
  set_process_defaults()
  main()
