"""Quality against inference cost across the model ladder (issue 6).

    python -m experiments.studies.quality_vs_cost --train --sweep_dir=runs/qvc \
        --out_dir=experiments/results/quality_vs_cost     # train (or reuse) the rungs, then measure
    python -m experiments.studies.quality_vs_cost --sweep_dir=DIR --out_dir=OUT     # every finished run in DIR
    python -m experiments.studies.quality_vs_cost --workdirs=runs/a,runs/b --out_dir=OUT

Training (--train): `python -m experiments.sweep --config=experiments/sweeps/quality_vs_cost.py
--sweep_dir=DIR`, i.e. the CPU-tier rungs p200k .. p10m on the same 1,638,400 tokens, the same
data order and tokenizer, so quality differences come from size (that file has the time
arithmetic). Finished points are skipped, so a relaunch only trains what is missing.

Quality: eval_loss (nats/token) and eval_bpb from each run's summary.json (its last evaluation).

Cost, measured now, in this process, with lm/inference_cost.py (as experiments.bench.inference): greedy
lm.decode.generate with the trained weights, float32, a prompt of --prompt_len random tokens
and --new_tokens new ones, per batch size. t(1) and t(N) are medians over --repeats runs, the
rungs interleaved in each repeat (a burst of other load hits every rung alike); prefill tok/s
= B x P / t(1), ms per token = (t(N) - t(1)) / (N - 1) (each sequence gets one token a step),
decode tok/s = B / that. bytes per token = (weights read once a step, an untied embedding
table left out, + the whole KV cache) / B; BW util = bytes per step x steps/s / the copy
bandwidth measured at the start (read + write of 512 MiB; lm/inference_cost.py's docstring).

Out: OUT_DIR/results.csv (one row per model; `columns(batches)` lists them), run.json (date,
machine, load, bandwidth, arguments), frontier_latency.png and bytes_per_token.png
(lm/frontier.py; notebooks/quality_vs_cost.ipynb reads the CSV).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import jax
import numpy as np
import pandas as pd

from lm import frontier
from lm import inference_cost
from lm import loading

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUALITY = ("name", "params_total", "params_nonembedding", "n_layers", "d_model", "vocab_size", "tokens",
           "eval_loss", "eval_bpb", "unigram_bpb")
PER_BATCH = ("ms_per_token", "ms_per_token_min", "ms_per_token_max", "decode_tok_s", "prefill_tok_s", "kv_bytes",
             "bytes_per_token", "bw_util", "pareto")
TRAILER = ("weight_bytes", "copy_gbs", "read_gbs", "steps", "train_wall_s", "train_tokens_per_s", "git_commit",
           "workdir")


def columns(batches) -> list[str]:
  return [*QUALITY, *(f"{c}_b{b}" for b in batches for c in PER_BATCH), *TRAILER]


def read_json(path: str) -> dict | None:
  """A run's summary.json or a sweep point's point.json; None if missing or unreadable."""
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


# ---- training: the sweep runner ----

def train(sweep_config: str, sweep_dir: str, data_dir: str | None = None, log=print) -> None:
  """`python -m experiments.sweep` on the sweep config: finished points are skipped, the rest
  (re)run one at a time; raises SystemExit unless every point finished."""
  argv = [sys.executable, "-m", "experiments.sweep", f"--config={sweep_config}", f"--sweep_dir={sweep_dir}"]
  if data_dir:
    argv.append(f"--config.overrides.data.data_dir={data_dir}")
  log(f"training: {' '.join(argv[1:])}; load {_load()}")
  rc = subprocess.run(argv, cwd=REPO).returncode
  if rc != 0:
    raise SystemExit(f"experiments.sweep exited {rc}; `python -m experiments.sweep --status --sweep_dir={sweep_dir}`")


def sweep_workdirs(sweep_dir: str) -> list[str]:
  """The subdirectories of `sweep_dir` (a sweep's points, or any runs) whose run finished."""
  out = []
  for name in sorted(os.listdir(sweep_dir)):
    d = os.path.join(sweep_dir, name)
    if os.path.isdir(d) and (read_json(os.path.join(d, "summary.json")) or {}).get("status") == "finished":
      out.append(d)
  return out


# ---- quality and cost ----

def quality(workdir: str) -> dict:
  """summary.json's quality columns; the name is a sweep point's model, else a ladder rung's,
  else the run's directory name."""
  s = read_json(os.path.join(workdir, "summary.json"))
  if not s or s.get("status") != "finished" or s.get("eval_bpb") is None:
    raise SystemExit(f"{workdir}: no finished run with an evaluation (summary.json status "
                     f"{s and s.get('status')}); train it first (--train) or leave it out.")
  exp = s.get("experiment") or ""
  name = ((read_json(os.path.join(workdir, "point.json")) or {}).get("model")
          or (exp[len("ladder_"):] if exp.startswith("ladder_") else None) or os.path.basename(workdir.rstrip("/")))
  row = {k: s.get(k) for k in QUALITY if k != "name"}
  row.update(name=name, steps=s.get("steps"), train_wall_s=s.get("wall_s"),
             train_tokens_per_s=s.get("tokens_per_s"), git_commit=s.get("git_commit"), workdir=workdir)
  return row


def measure(workdirs, batches, prompt_len: int, new_tokens: int, repeats: int, seed: int = 0, log=print):
  """({workdir: {batch: {t1, tn, kv_bytes, step_bytes, weight_bytes}}}, {copy_gbs, read_gbs}); t1 and tn
  are lists of seconds, one per repeat."""
  bw = inference_cost.measure_bandwidth()
  log(f"bandwidth: copy {bw['copy']:.1f} GB/s (read + write), read {bw['read']:.1f} GB/s; load {_load()}")
  sides, cfgs = {}, {}
  for w in workdirs:
    trained = loading.load(w)
    cfgs[w] = trained.model.cfg
    sides[w] = inference_cost.TimedDecoder(trained.model.cfg, params=trained.params)
  vocab = min(c.vocab_size for c in cfgs.values())
  rng = np.random.default_rng(seed)
  out = {w: {} for w in workdirs}
  bucket = 16  # lm.decode.generate's default: a prompt is left-padded to a multiple of 16 slots
  slots = -(-prompt_len // bucket) * bucket + new_tokens - 1  # 64 + 64 - 1 = 127 at the defaults
  for b in batches:
    prompts = rng.integers(0, vocab, (b, prompt_len)).tolist()
    t = time.perf_counter()
    runs = inference_cost.timings(sides, prompts, new_tokens, repeats)  # rungs interleaved within each repeat
    for w, side in sides.items():
      kv, per_step = inference_cost.step_bytes(side, b, slots)
      out[w][b] = dict(t1=runs[w][1], tn=runs[w][new_tokens], kv_bytes=kv, step_bytes=per_step,
                       weight_bytes=side.weight_bytes)
    log(f"batch {b}: {len(sides)} models x {repeats} repeats in {time.perf_counter() - t:.0f} s, load {_load()}")
  return out, {"copy_gbs": bw["copy"], "read_gbs": bw["read"]}


def assemble(qualities: list[dict], measurements: dict, bandwidth: dict, batches, prompt_len: int,
             new_tokens: int) -> pd.DataFrame:
  """One row per model (sorted by size): quality, then each batch's costs from the median t(1)
  and t(N), the fastest and slowest repeat's ms/token (t(N) - t(1) of one repeat: the spread
  that other load caused), Pareto flags on quality against the median ms/token."""
  rows = []
  for q in qualities:
    row = dict(q, **bandwidth)
    for b in batches:
      m = measurements[q["workdir"]][b]
      c = inference_cost.costs(statistics.median(m["t1"]), statistics.median(m["tn"]), b, prompt_len, new_tokens)
      step_s = c["ms_per_token"] / 1e3
      each = [inference_cost.costs(t1, tn, b, prompt_len, new_tokens)["ms_per_token"]
              for t1, tn in zip(m["t1"], m["tn"])]
      row.update({f"{k}_b{b}": v for k, v in c.items()})
      row.update({f"ms_per_token_min_b{b}": min(each), f"ms_per_token_max_b{b}": max(each)})
      row.update({f"kv_bytes_b{b}": m["kv_bytes"], f"bytes_per_token_b{b}": m["step_bytes"] / b,
                  f"bw_util_b{b}": m["step_bytes"] / step_s / 1e9 / bandwidth["copy_gbs"]})
      row["weight_bytes"] = m["weight_bytes"]
    rows.append(row)
  table = pd.DataFrame(rows).sort_values("params_total", kind="stable").reset_index(drop=True)
  for b in batches:
    table[f"pareto_b{b}"] = frontier.pareto(table[f"ms_per_token_b{b}"], table["eval_bpb"])
  return table[columns(batches)]


def _load() -> str:
  return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _cpu() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    return platform.processor() or "unknown"


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m experiments.studies.quality_vs_cost",
                               description=__doc__.split("\n")[0])
  ap.add_argument("--out_dir", required=True)
  src = ap.add_mutually_exclusive_group(required=True)
  src.add_argument("--sweep_dir", help="a sweep directory (or any directory of runs): every finished run")
  src.add_argument("--workdirs", help="comma-separated trained workdirs to reuse")
  ap.add_argument("--train", action="store_true", help="first run --sweep_config in --sweep_dir (skips finished)")
  ap.add_argument("--sweep_config", default="experiments/sweeps/quality_vs_cost.py")
  ap.add_argument("--data_dir", help="--train: the corpus directory (--config.overrides.data.data_dir)")
  ap.add_argument("--batches", default="1,32")
  ap.add_argument("--prompt_len", type=int, default=64)
  ap.add_argument("--new_tokens", type=int, default=64)
  ap.add_argument("--repeats", type=int, default=7)
  args = ap.parse_args(argv)
  batches = [int(b) for b in args.batches.split(",")]
  log = lambda msg: print(msg, flush=True)  # noqa: E731
  env = dict(started=datetime.datetime.now().astimezone().isoformat(timespec="seconds"), host=platform.node(),
             cpu=_cpu(), cores=len(os.sched_getaffinity(0)), load_start=_load(), argv=sys.argv[1:] if argv is None
             else list(argv))
  t0 = time.perf_counter()
  if args.train:
    if not args.sweep_dir:
      ap.error("--train needs --sweep_dir")
    train(args.sweep_config, args.sweep_dir, args.data_dir, log)
  workdirs = sweep_workdirs(args.sweep_dir) if args.sweep_dir else args.workdirs.split(",")
  if not workdirs:
    raise SystemExit("no finished runs to measure")
  env.update(train_s=round(time.perf_counter() - t0), load_after_training=_load())
  qualities = [quality(w) for w in workdirs]
  t1 = time.perf_counter()
  measured, bandwidth = measure(workdirs, batches, args.prompt_len, args.new_tokens, args.repeats, log=log)
  table = assemble(qualities, measured, bandwidth, batches, args.prompt_len, args.new_tokens)
  env.update(measure_s=round(time.perf_counter() - t1), load_end=_load(), jax_version=jax.__version__,
             device_kind=jax.devices()[0].device_kind, prompt_len=args.prompt_len, new_tokens=args.new_tokens,
             repeats=args.repeats, batches=batches, **bandwidth)
  os.makedirs(args.out_dir, exist_ok=True)
  table.to_csv(os.path.join(args.out_dir, "results.csv"), index=False)
  with open(os.path.join(args.out_dir, "run.json"), "w") as f:
    json.dump(env, f, indent=1)
  pngs = frontier.write_pngs(table, args.out_dir, sorted({batches[0], batches[-1]}))
  show = ["name", "params_total", "eval_loss", "eval_bpb"] + [f"{c}_b{b}" for b in batches for c in (
      "ms_per_token", "bytes_per_token", "bw_util", "pareto")]
  with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format", "{:.4g}".format):
    log(table[show].to_string(index=False))
  for b in sorted({batches[0], batches[-1]}):
    log(f"batch {b}: {frontier.per_doubling(table, f'ms_per_token_b{b}', 'eval_bpb'):.3f} bpb per 2x ms/token "
        "along the frontier")
  log(f"wrote {args.out_dir}/results.csv, run.json, {', '.join(os.path.basename(p) for p in pngs)}; "
      f"{env['train_s']} s training, {env['measure_s']} s measuring; load {env['load_end']}")
  return 0


if __name__ == "__main__":
  from lm.cli import set_process_defaults  # the entry point's process-wide settings (XLA flags, malloc), before jax starts
  set_process_defaults()
  sys.exit(main())
