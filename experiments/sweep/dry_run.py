"""The dry run of a sweep: its plan, and how long each point will take from a short measured probe.

For each distinct shape (model, sequence, batch, optimizer), the probe builds the train state
and the jitted train step exactly as lm.train does, on random tokens, and times:
  compile_s  the first step (tracing + XLA compilation)
  step_s     the median of the next steps, run until PROBE_S seconds or PROBE_STEPS steps
Then a point's estimate is (recorded in SWEEP_DIR/estimate.json, with the devices the probe ran on)
  PROCESS_S + compile_s x 2 (the eval step compiles too) + steps x step_s
  + evals x eval_steps x step_s / 3 (an eval batch is a forward pass, ~1/3 of a train step)
The probe takes a few seconds per shape on a CPU (p20m: ~6 s a step); a shape whose step
would take longer than MAX_PROBE_STEP_S at the host's measured peak is not probed.
"""

from __future__ import annotations

import math
import os
import time

from experiments.sweep import cost
from experiments.sweep import status as status_lib
from experiments.sweep.plan import model_config

PROBE_S = 2.0        # timed seconds per shape, after the compiling step
PROBE_STEPS = 5      # at most this many timed steps
# Process start-up (python, jax, the data pipeline and tokenizer), the unigram baseline, the
# checkpoint saves and the summary: lm.main of configs/tiny.py spent 19 s in all, 10 s of it
# in train() (compile + steps + evals), on the 2-core host at load ~2.
PROCESS_S = 9.0
MAX_PROBE_STEP_S = 30.0


def shape_key(cfg) -> str:
  """What the step time depends on: the model, sequence, batch and optimizer sections."""
  return repr((cfg.model.to_json(), cfg.data.seq_len, cfg.data.tokenizer, cfg.data.vocab_size,
               cfg.train.batch_size, cfg.optim.name, cfg.optim.grad_accum_steps, cfg.mesh.to_json()))


def probe(cfg, vocab_size: int) -> dict:
  """{'compile_s', 'step_s', 'steps_timed'} of lm's train step for this config, in-process."""
  import jax
  import numpy as np
  from lm import optim, sharding
  from lm import steps as steps_lib
  from lm.model import ModelConfig, Transformer
  mcfg = ModelConfig.from_config(cfg.model, vocab_size)
  optimizer, lr = optim.make_optimizer(cfg.optim, cfg.train.steps)
  mesh, rules = sharding.make_mesh(cfg.mesh), sharding.rules(cfg.mesh)
  seq, batch = cfg.data.seq_len, cfg.train.batch_size
  spec = steps_lib.StateSpec(Transformer(mcfg), optimizer, mesh, rules)
  state = spec.init(0)
  step = spec.jit_train_step(
      steps_lib.make_train_step(spec.model, optimizer, lr, cfg.train.z_loss, cfg.optim.grad_accum_steps),
      steps_lib.batch_shardings(mesh, rules, steps_lib.TRAIN_KEYS))
  tokens = np.random.default_rng(0).integers(3, vocab_size, (batch, seq + 1)).astype(np.int32)
  host = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "segment_ids": np.ones((batch, seq), np.int32),
          "positions": np.tile(np.arange(seq, dtype=np.int32), (batch, 1))}
  times = []
  with steps_lib.in_context(mesh, rules):
    data = sharding.shard_batch(host, mesh, rules)
    t0 = time.perf_counter()
    state, metrics = step(state, data)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t0
    while len(times) < PROBE_STEPS and sum(times) < PROBE_S:
      t0 = time.perf_counter()
      state, metrics = step(state, data)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - t0)
  return {"compile_s": compile_s, "step_s": float(np.median(times)), "steps_timed": len(times),
          "devices": int(mesh.devices.size), "device_kind": jax.devices()[0].device_kind}


def expected_step_s(point) -> float:
  """A step's FLOPs over the host's measured peak (cached by lm.flops): an optimistic bound."""
  from lm import flops as flops_lib
  peak, _ = flops_lib.peak_flops(point.cfg.model.dtype)
  return point.flops_per_token["flops_exact"] * point.tokens_per_step / peak


def estimate(points, measure: bool = True, log=print) -> dict[str, dict]:
  """point name -> {'step_s', 'compile_s', 'total_s'} (None where not measured)."""
  cache, out = {}, {}
  for p in points:
    key = shape_key(p.cfg)
    if measure and key not in cache:
      bound = expected_step_s(p)
      if bound > MAX_PROBE_STEP_S:
        log(f"probe: {p.model} not timed (a step would take >= {bound:.0f} s here)")
        cache[key] = None
      else:
        t0 = time.perf_counter()
        cache[key] = probe(p.cfg, model_config(p.cfg).vocab_size)
        log(f"probe: {p.model}: compile {cache[key]['compile_s']:.1f} s, step {cache[key]['step_s'] * 1e3:.0f} ms "
            f"({cache[key]['steps_timed']} timed; {time.perf_counter() - t0:.1f} s)")
    measured = cache.get(key)
    if measured is None:
      out[p.name] = {"step_s": None, "compile_s": None, "total_s": None, "devices": None}
      continue
    evals = math.ceil(p.steps / p.cfg.train.eval_every) - p.branch_step // p.cfg.train.eval_every
    total = (PROCESS_S + 2 * measured["compile_s"] + p.steps_run * measured["step_s"]
             + evals * p.cfg.train.eval_steps * measured["step_s"] / 3)
    out[p.name] = {**measured, "total_s": total}
  return out


def record_estimate(sweep_dir: str, times: dict[str, dict]) -> str:
  """estimate.json in the sweep directory (created if need be): what the sweep's end compares with."""
  measured = [t for t in times.values() if t["total_s"] is not None]
  if not measured:
    return "no estimate recorded"
  try:
    path = cost.write_estimate(sweep_dir, times, measured[0]["devices"], measured[0]["device_kind"])
  except OSError as e:
    return f"estimate not recorded ({e})"
  return f"recorded in {path} (the sweep compares what it spends with it)"


def makespan(seconds: list[float], workers: int) -> float:
  """Longest-first list scheduling onto `workers` (what --parallel does), ignoring contention."""
  loads = [0.0] * max(1, workers)
  for s in sorted(seconds, reverse=True):
    loads[loads.index(min(loads))] += s
  return max(loads)


def _duration(s: float | None) -> str:
  if s is None:
    return "?"
  return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


def _bytes(b: float) -> str:
  return f"{b / 2**20:.0f} MiB" if b < 2**30 else f"{b / 2**30:.1f} GiB"


def branching_line(points, definition: str) -> str:
  """What WSD branching spends (stable runs + cooldowns) against training every branch from scratch."""
  branches = [p for p in points if p.role == "branch"]
  spent, scratch = sum(p.flops_spent for p in points), sum(p.flops for p in branches)
  return (f"WSD branching: {sum(p.role == 'stable' for p in points)} stable runs + {len(branches)} cooldown branches "
          f"spend {spent:.3g} FLOPs ({definition}); the same {len(branches)} points from scratch: {scratch:.3g} "
          f"({spent / scratch:.2f}x, saves {1 - spent / scratch:.0%}). Branch steps read 's+k': from the stable "
          "checkpoint at s, k cooldown steps; branches start after their stable run finished")


def report(cfg, points, left_out, sweep_dir: str | None, parallel: int = 1, measure: bool = True) -> str:
  """The plan as a table: per point N, D, C, steps, tokens per parameter, memory, estimated
  time and (for an existing sweep directory) its state; then the totals."""
  from configs.ladder import human
  definition = points[0].flops_definition if points else cfg.get("flops_definition", "flops_exact")
  times = estimate(points, measure)
  recorded = record_estimate(sweep_dir, times) if sweep_dir else None
  states = status_lib.states(sweep_dir, [p.name for p in points]) if sweep_dir and os.path.isdir(sweep_dir) else {}
  rows = [("point", "N", "N_total", "D", f"C ({definition})", "steps", "D/N", "memory", "step", "est. time",
           "state")]
  for p in points:
    t = times[p.name]
    rows.append((p.name, human(p.params_nonembedding), human(p.params_total), human(p.tokens), f"{p.flops:.3g}",
                 f"{p.branch_step}+{p.steps_run}" if p.branch_step else str(p.steps),
                 f"{p.tokens / p.params_nonembedding:.3g}", _bytes(p.memory_bytes),
                 f"{t['step_s'] * 1e3:.0f} ms" if t["step_s"] else "?", _duration(t["total_s"]),
                 states.get(p.name, "pending")))
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  lines = [f"sweep {cfg.name}: {cfg.kind}, {len(cfg.budgets)} budgets x {len(cfg.models)} models from "
           f"{cfg.config}; C counts {definition} (tokens x flops_per_token), N = params_nonembedding"]
  lines += ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
  for name, why in left_out:
    lines.append(f"left out: {name} ({why})")
  todo = [p for p in points if states.get(p.name, "pending") not in status_lib.FINAL]
  est = [times[p.name]["total_s"] for p in todo]
  known = [s for s in est if s is not None]
  if any(p.role for p in points):
    lines.append(branching_line(points, definition))
  head = (f"{len(points)} points, {len(todo)} to run, {sum(p.flops_spent for p in todo):.3g} FLOPs ({definition}) "
          "spent")
  if not known:
    lines.append(f"{head}; time not estimated" + ("" if measure else " (--noprobe)"))
    return "\n".join(lines)
  devices = next(t["devices"] for t in times.values() if t["devices"])
  device_s = sum(times[p.name]["total_s"] * devices for p in todo if times[p.name]["total_s"])
  lines.append(f"estimated device-hours: {device_s / 3600:.3g} ({devices} device(s) a point, as probed here); "
               f"{recorded}")
  note = "" if len(known) == len(est) else f" ({len(est) - len(known)} points not timed, not counted)"
  lines.append(f"{head}; estimated time {_duration(sum(known))} one at a time{note}")
  if parallel > 1:
    lines.append(f"with --parallel={parallel}: {_duration(makespan(known, parallel))} if points ran side by side as "
                 "fast as alone (on a CPU they share the cores: expect between this and the sequential time)")
  return "\n".join(lines)
