"""Resume soak: kill a tiny run at random moments N times and check each resumes bitwise.

    python -m experiments.studies.resume_soak --trials=50 [--out=experiments/results/resume_soak]

One uninterrupted reference run of configs/tiny.py first (its wall time T sets the kill
window). Then each trial starts the same command in a fresh workdir, kills it once and
relaunches the same command until it exits finished:
  - the kill lands at a uniform random moment in [0, T] (start-up, compilation, steps,
    evaluations, the summary), or, for --during_save of the trials, the moment a checkpoint
    directory appears still in progress (orbax writes `*tmp*` then renames it);
  - SIGKILL for most, SIGTERM (preemption: lm checkpoints the step reached, exits 75)
    for --sigterm of them.
A trial resumed bitwise when its final run equals the reference exactly: every logged
train loss at every step (no step lost or logged twice), the final parameters, and the
data iterator's final position. The table counts trials by outcome and by where the kill
landed; trials.jsonl keeps one row per trial (seed, kill moment, signal, outcome).

A checkpoint every 2 steps and an evaluation every 10 make saves and evaluations a large
share of the run, so random kills hit them often.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}  # one CPU device per process
EXIT_FINISHED, EXIT_PREEMPTED = 0, 75


def command(workdir: str, data_dir: str | None, steps: int) -> list[str]:
  cmd = [sys.executable, "-m", "lm.main", "--config=configs/tiny.py", f"--workdir={workdir}",
         f"--config.train.steps={steps}", "--config.train.checkpoint_every=2", "--config.train.eval_every=10",
         "--config.train.keep_checkpoints=2", "--config.train.samples=0"]
  return cmd + ([f"--config.data.data_dir={data_dir}"] if data_dir else [])


def start(cmd: list[str], log):
  return subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=log, stderr=subprocess.STDOUT)


def saving(workdir: str) -> bool:
  """A checkpoint directory still being written (orbax's temporary name)."""
  path = os.path.join(workdir, "checkpoints")
  return os.path.isdir(path) and any("tmp" in name for name in os.listdir(path))


def where(workdir: str) -> str:
  path = os.path.join(workdir, "checkpoints")
  if saving(workdir):
    return "during a save"
  if not (os.path.isdir(path) and any(d.isdigit() for d in os.listdir(path))):
    return "before the first checkpoint"
  return "between saves"


def final_state(workdir: str) -> dict:
  """What 'equal' compares: losses by step (a list per step, so a repeat shows), the last
  checkpoint's parameters and its data position."""
  from lm import loading  # local: jax starts here, in the soak's own process only when comparing
  from lm.metrics import read_jsonl
  steps: dict[int, list[float]] = {}
  for row in read_jsonl(os.path.join(workdir, "metrics.jsonl")):
    if "train_loss" in row:
      steps.setdefault(row["step"], []).append(row["train_loss"])
  trained = loading.load(workdir)
  params = {"/".join(map(str, k)): np.asarray(v) for k, v in _flatten(trained.params)}
  last = max(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
  with open(os.path.join(workdir, "checkpoints", str(last), "data", "metadata")) as f:
    data = json.load(f)
  return {"losses": steps, "params": params, "data": data, "step": last}


def _flatten(tree, prefix=()):
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from _flatten(v, prefix + (k,))
  else:
    yield prefix, tree


def equal(a: dict, b: dict) -> str | None:
  """None when a equals b bitwise; otherwise what differs."""
  if a["losses"] != b["losses"]:
    bad = [s for s in sorted(set(a["losses"]) | set(b["losses"])) if a["losses"].get(s) != b["losses"].get(s)]
    return f"losses differ at steps {bad[:5]}"
  if a["step"] != b["step"] or a["data"] != b["data"]:
    return f"data position differs (steps {a['step']} and {b['step']})"
  for k in a["params"]:
    if k not in b["params"] or not np.array_equal(a["params"][k], b["params"][k]):
      return f"parameter {k} differs"
  return None


def trial(i: int, rng: random.Random, args, reference: dict, window_s: float, root: str) -> dict:
  workdir = os.path.join(root, f"trial{i:03d}")
  cmd = command(workdir, args.data_dir, args.steps)
  at_save = rng.random() < args.during_save
  sig = signal.SIGTERM if rng.random() < args.sigterm else signal.SIGKILL
  wait_s = rng.uniform(0, window_s)
  row = {"trial": i, "signal": sig.name, "aim": "save" if at_save else f"{wait_s:.2f}s"}
  with open(os.path.join(root, f"trial{i:03d}.log"), "w") as log:
    proc, t0 = start(cmd, log), time.time()
    while proc.poll() is None:
      if (at_save and saving(workdir)) or (not at_save and time.time() - t0 >= wait_s):
        row.update(killed_at_s=round(time.time() - t0, 2), landed=where(workdir))
        proc.send_signal(sig)
        break
      time.sleep(0.005)
    rc = proc.wait()
    row.setdefault("landed", "after the run finished")  # the run ended before its kill moment
    relaunches = 0
    while rc != EXIT_FINISHED:
      relaunches += 1
      if relaunches > 3:
        row.update(outcome="failed", detail=f"exit {rc} after 3 relaunches")
        return row
      rc = start(cmd, log).wait()
  row["relaunches"] = relaunches
  difference = equal(final_state(workdir), reference)
  row.update(outcome="bitwise" if difference is None else "differs", detail=difference)
  return row


def table(rows: list[dict]) -> str:
  lines = ["| where the kill landed | trials | resumed bitwise | differs | failed |", "|---|---|---|---|---|"]
  for where in sorted({r.get("landed", "?") for r in rows}):
    sub = [r for r in rows if r.get("landed", "?") == where]
    lines.append(f"| {where} | {len(sub)} | " + " | ".join(str(sum(r["outcome"] == o for r in sub))
                                                           for o in ("bitwise", "differs", "failed")) + " |")
  total = [sum(r["outcome"] == o for r in rows) for o in ("bitwise", "differs", "failed")]
  lines.append(f"| **all** | {len(rows)} | {total[0]} | {total[1]} | {total[2]} |")
  return "\n".join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--trials", type=int, default=50)
  p.add_argument("--steps", type=int, default=30)
  p.add_argument("--during_save", type=float, default=0.3, help="share of trials killed as a save starts")
  p.add_argument("--sigterm", type=float, default=0.2, help="share of trials sent SIGTERM instead of SIGKILL")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--data_dir", default=None, help="prepared corpus (default: the config's, prepared on first use)")
  p.add_argument("--out", default=None, help="folder for trials.jsonl and README-ready table.md")
  args = p.parse_args(argv)
  rng = random.Random(args.seed)
  with tempfile.TemporaryDirectory(prefix="lm_soak_") as root:
    ref_dir = os.path.join(root, "reference")
    t0 = time.time()
    with open(os.path.join(root, "reference.log"), "w") as log:
      if start(command(ref_dir, args.data_dir, args.steps), log).wait() != EXIT_FINISHED:
        sys.exit(f"the reference run failed: see {root}/reference.log")
    window_s = time.time() - t0
    reference = final_state(ref_dir)
    print(f"reference: {args.steps} steps in {window_s:.1f} s; kills land in [0, {window_s:.1f}] s", flush=True)
    rows = []
    for i in range(args.trials):
      rows.append(trial(i, rng, args, reference, window_s, root))
      r = rows[-1]
      print(f"trial {i:3d}: {r['signal']:7s} {r.get('landed', '?'):27s} {r['outcome']:7s} {r.get('detail') or ''}",
            flush=True)
  out = table(rows)
  print(out)
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "trials.jsonl"), "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in rows)
    with open(os.path.join(args.out, "table.md"), "w") as f:
      f.write(out + "\n")
  return 0 if all(r["outcome"] == "bitwise" for r in rows) else 1


if __name__ == "__main__":
  sys.exit(main())
