"""Does the optimal learning rate transfer across depth? An LR sweep at 3 depths (2, 4, 8
layers) with µP's depth scaling on (CompleteP, model.base_depth=2, depth_alpha=1) and off.

    flock /work/notes/cpu.lock python -m experiments.studies.depth_transfer   # ~25 min, 2 quiet cores
    python -m experiments.studies.depth_transfer --smoke --out=/tmp/depth_smoke

Writes OUT/results.csv, OUT/optima.csv, OUT/depth_transfer.png and OUT/README.md, as
experiments/studies/lr_transfer.py does (same data, schedule, LR grid and measurement).

Design (the same training as lr_transfer.py, at one width):
  model   lm's Llama family, width 64 (µP's base width, so only depth changes), 4 heads,
          d_ff 224, tied embeddings; depths 2, 4, 8
  scaling 'on': each residual branch x (2 / n_layers) (CompleteP, Dey et al. 2025), the
          output projections initialised as at depth 2, Adam eps / (n_layers / 2), the
          per-layer LRs x (n_layers / 2)^0 = 1 (CompleteP's l^(a-1) with a = 1); 'off': SP's
          depth rule only (output projections initialised with 1/sqrt(2 n_layers), GPT-2)
  data    bytes, sequences of 128, batches of 8; 300 steps, warmup 30, cosine to 0.1x
  LRs     2^-11 ... 2^-4
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from lm import lr_sweep

DEPTHS = (2, 4, 8)
WIDTH = 64
SCALINGS = ("off", "on")
QUIET_MINUTES = 25  # ~34 TFLOP (8 LRs x 307K tokens x 6 models) at ~25 GFLOP/s at this width


def config(depth: int, scaling: str, steps: int = 300):
  return lr_sweep.transfer_config(WIDTH, "mup", base_width=WIDTH, steps=steps, n_layers=depth,
                            base_depth=DEPTHS[0] if scaling == "on" else None)


def run(out: str, depths, lrs, steps: int) -> dict:
  groups = [{"depth_scaling": s, "n_layers": d} for s in SCALINGS for d in depths]
  rows, record = lr_sweep.run_groups(out, groups, lambda g: config(g["n_layers"], g["depth_scaling"], steps),
                                     lambda g: lrs)
  optima = lr_sweep.best_table(rows, ("depth_scaling", "n_layers"))
  lr_sweep.write_csv(os.path.join(out, "results.csv"), rows)
  lr_sweep.write_csv(os.path.join(out, "optima.csv"), optima)
  lr_sweep.plot(rows, optima, os.path.join(out, "depth_transfer.png"), "depth_scaling", "n_layers",
                "depth scaling")
  shifts = {s: lr_sweep.shift_exponent([o["n_layers"] for o in optima if o["depth_scaling"] == s],
                                       [o["lr"] for o in optima if o["depth_scaling"] == s]) for s in SCALINGS}
  record.update(command=" ".join(["python -m experiments.studies.depth_transfer"] + sys.argv[1:]),
                shift_exponent=shifts)
  with open(os.path.join(out, "run.json"), "w") as f:
    json.dump(record, f, indent=1)
  text = "\n".join([lr_sweep.optima_markdown(optima, ("depth_scaling", "n_layers")), ""]
                   + [f"depth scaling {s}: lr* ~ n_layers^{lr_sweep.fmt(b, '.2f')}" for s, b in shifts.items()]
                   + [lr_sweep.load_line(record)])
  design = __doc__.split("Design (")[1].split("\n", 1)[1]
  lr_sweep.write_readme(out, "LR transfer across depth: CompleteP depth scaling on and off", design, record,
                        text + "\n\n![loss against LR](depth_transfer.png)", QUIET_MINUTES)
  print(text)
  return record


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", default="experiments/results/depth_transfer")
  p.add_argument("--smoke", action="store_true", help="2 depths, 3 LRs, 20 steps")
  args = p.parse_args(argv)
  if args.smoke:
    run(args.out, DEPTHS[:2], lr_sweep.LRS[2:5], steps=20)
  else:
    run(args.out, DEPTHS, lr_sweep.LRS, steps=300)


if __name__ == "__main__":
  from lm.cli import set_process_defaults  # local: entry points set lm's XLA flags
  set_process_defaults()
  main()
