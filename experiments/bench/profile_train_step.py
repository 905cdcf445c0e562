"""Where lm's training step spends its time on XLA:CPU: per-HLO-op times from jax.profiler.

    python -m experiments.bench.profile_train_step [--shapes=issue] [--families=gpt2,llama]
        [--matmuls=auto] [--steps=3] [--top=25] [--hlo_out=DIR]

Builds the step experiments/bench/train_step.py times (lm_setup), compiles it, traces
`--steps` steps with jax.profiler (XLA:CPU records one event per thunk, named after its
HLO instruction), and joins each event to its instruction in the optimized HLO. Every
instruction gets one category:
  weight matmul     a dot with no batch dimension (x @ W, dx = dy @ W^T, dW = x^T @ dy), or
                    lm/cpu_gemm.py's OpenBLAS custom call (model.matmul='blas')
  attention matmul  a batched dot (Q K^T, P V and their gradients, batched over B and heads)
  layout            a transpose or copy, alone or inside a fusion (XLA:CPU feeds Eigen's
                    dots row-major operands, so a transposed contraction copies first)
  reduction         reduce / reduce-window without exp or log (bias and norm-scale
                    gradients, norm statistics)
  optimizer         what the step does outside the model's forward and backward (op_name
                    without jvp/transpose): AdamW, the gradient division and norm, metrics
  softmax / loss    fusions with exp or log outside the optimizer (softmax, logsumexp, GELU's tanh is not here)
  elementwise       the other fusions (norms, GELU/SiLU, residual adds, RoPE, masks)
  other             the rest (gathers, scatters of the embedding)
  (no op running)   executor wall time with no instruction in flight
and the table shows each category's milliseconds per step, its share, and the slowest
instructions. XLA's cost analysis counts a custom call as 0 FLOPs, so under 'blas' its GFLOP
figure leaves out the weight products. Instructions XLA runs at once (independent ones, on
its thread pool) each count their own wall time, so under 'blas', whose products run on that
pool, the categories can sum to more than the step. The categories read op names and opcodes, so they are a guide: a fusion that
does two things is counted once, under the first rule it meets.
"""

from __future__ import annotations

import collections
import gzip
import glob
import json
import os
import re
import tempfile

from absl import app
from absl import flags

from experiments.bench import train_step as bench

# Untraced steps first: with lm/host_memory.py's settings, the heap grows once, in one of the first
# few steps, by a second temporary buffer (4.5 s of page faults on the 2026-12-03 Xeon); later steps fault none.
WARMUP_STEPS = 5
_PROFILE_STEPS = flags.DEFINE_integer("profile_steps", 3, f"Steps traced (after {WARMUP_STEPS} untraced warm-up steps).")
_TOP = flags.DEFINE_integer("top", 25, "Slowest instructions listed.")
_HLO_OUT = flags.DEFINE_string("hlo_out", None, "Write the optimized HLO text here (a folder).")

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\S+(?: \S+)*?) ([\w\-]+)\((.*)$")
_COMPUTATION = re.compile(r"^\s*(?:ENTRY )?%?([\w.\-]+) .*\{\s*$")


def parse_hlo(text: str) -> tuple[dict, dict]:
  """({instruction: (opcode, line)}, {computation: [its instruction lines]}) of an HLO module."""
  instructions, computations, current = {}, collections.defaultdict(list), None
  for line in text.splitlines():
    match = _INSTRUCTION.match(line)
    if match:
      instructions[match.group(1)] = (match.group(3), line)
      if current:
        computations[current].append(line)
    elif (comp := _COMPUTATION.match(line)):
      current = comp.group(1)
  return instructions, computations


def _called(line: str) -> str | None:
  match = re.search(r"calls=%?([\w.\-]+)", line)
  return match.group(1) if match else None


def _is_batched_dot(line: str) -> bool:
  return "lhs_batch_dims={" in line and "lhs_batch_dims={}" not in line


def category(name: str, instructions: dict, computations: dict) -> str:
  opcode, line = instructions.get(name, ("?", ""))
  op_name = (re.search(r'op_name="([^"]*)"', line) or [None, ""])[1]
  body = computations.get(_called(line) or "", [])
  dots = [entry for entry in body if " dot(" in entry] + ([line] if opcode == "dot" else [])
  if dots:
    return "attention matmul" if any(_is_batched_dot(d) for d in dots) else "weight matmul"
  if opcode == "custom-call" and "lm_cpu_gemm" in line:
    return "weight matmul"
  if opcode in ("transpose", "copy") or any(re.search(r" (transpose|copy)\(", entry) for entry in body):
    return "layout"
  if re.match(r"jit\(\w+\)/(?!jvp\(|transpose\()", op_name):  # outside the model's forward and backward
    return "optimizer"
  if opcode in ("reduce", "reduce-window") or any(re.search(r" reduce(-window)?\(", entry) for entry in body):
    if not any(re.search(r" (exponential|log)\(", entry) for entry in body):
      return "reduction"
  if opcode == "fusion" and any(re.search(r" (exponential|log)\(", entry) for entry in body):
    return "softmax / loss"
  if opcode == "fusion":
    return "elementwise"
  return "other"


def thunk_times(trace_dir: str, instructions: dict) -> tuple[dict[str, float], float]:
  """({instruction: microseconds of step wall time}, microseconds traced) from the trace.

  A thunk's event covers only its dispatch when it runs asynchronously (Eigen's dots on
  the intra-op pool: 60 us of event for a 70 ms dot); the "end: <name>" marker XLA:CPU
  records at completion closes it. Thunks can overlap, so the wall time of the traced
  executions is shared: each instant is split evenly among the instructions running then,
  and the instants when none is running are returned apart (host, dispatch, idle)."""
  path = sorted(glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True))[-1]
  with gzip.open(path) as f:
    data = json.load(f)
  events = [e for e in (data["traceEvents"] if isinstance(data, dict) else data)
            if e.get("ph") == "X" and e.get("dur") is not None]
  ends = collections.defaultdict(list)
  for e in events:
    if e["name"].startswith("end: "):
      ends[e["name"][5:]].append(e["ts"] + e["dur"])
  intervals, starts = [], collections.defaultdict(list)
  for e in events:
    if e["name"] in instructions:
      starts[e["name"]].append(e)
  for name, runs in starts.items():
    closes = sorted(ends.get(name, []))
    for e in sorted(runs, key=lambda e: e["ts"]):
      close = next((t for t in closes if t >= e["ts"]), None)  # the marker after this start
      if close is not None:
        closes.remove(close)
      intervals.append((e["ts"], max(e["ts"] + e["dur"], close or 0.0), name))
  runs = [e for e in events if e["name"] == "ThunkExecutor::Execute (wait for completion)"]
  edges = sorted({t for a, b, _ in intervals for t in (a, b)} | {t for e in runs for t in (e["ts"], e["ts"] + e["dur"])})
  totals, gaps = collections.defaultdict(float), 0.0
  for lo, hi in zip(edges, edges[1:]):
    active = [name for a, b, name in intervals if a <= lo and b >= hi]
    if active:
      for name in active:
        totals[name] += (hi - lo) / len(active)
    elif any(e["ts"] <= lo and e["ts"] + e["dur"] >= hi for e in runs):
      gaps += hi - lo
  return totals, gaps


def profile(shape: str, family: str) -> None:
  import jax
  from lm import ops, steps
  step_fn, state, batch, mesh, rules, mcfg = bench.lm_setup(shape, family)
  with steps.in_context(mesh, rules):
    compiled = step_fn.lower(state, batch).compile()
    text = compiled.as_text()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    for _ in range(WARMUP_STEPS):
      state, metrics = compiled(state, batch)
      jax.block_until_ready(metrics)
    trace_dir = tempfile.mkdtemp(prefix="lm_profile_")
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      for _ in range(_PROFILE_STEPS.value):
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
  if _HLO_OUT.value:
    os.makedirs(_HLO_OUT.value, exist_ok=True)
    with open(os.path.join(_HLO_OUT.value, f"{shape}_{family}_{ops.resolve_matmul(mcfg.matmul)}.hlo.txt"), "w") as f:
      f.write(text)
  instructions, computations = parse_hlo(text)
  n = _PROFILE_STEPS.value
  totals_us, gaps_us = thunk_times(trace_dir, instructions)
  totals = {name: us / n / 1e3 for name, us in totals_us.items()}
  by_category = collections.defaultdict(float)
  for name, ms in totals.items():
    by_category[category(name, instructions, computations)] += ms
  by_category["(no op running)"] = gaps_us / n / 1e3
  op_ms = sum(by_category.values())
  print(f"\n{shape} {family} matmul={ops.resolve_matmul(mcfg.matmul)}: {len(totals)} instructions timed, "
        f"{op_ms:.0f} ms of executor wall time per step; "
        f"XLA cost analysis {cost.get('flops', 0) / 1e9:.1f} GFLOP (custom calls count 0), "
        f"{cost.get('bytes accessed', 0) / 1e9:.2f} GB")
  for name, ms in sorted(by_category.items(), key=lambda kv: -kv[1]):
    print(f"  {name:18} {ms:8.1f} ms  {ms / op_ms:6.1%}")
  print(f"  slowest {_TOP.value} instructions:")
  for name, ms in sorted(totals.items(), key=lambda kv: -kv[1])[:_TOP.value]:
    opcode, line = instructions[name]
    shape_text = line.split(" = ", 1)[1].split(f" {opcode}(")[0][:60]
    op_name = (re.search(r'op_name="([^"]*)"', line) or [None, ""])[1]
    print(f"    {ms:7.1f} ms  {category(name, instructions, computations):17} {name:28} {shape_text:60} {op_name[-90:]}")


def main(argv):
  del argv
  print(f"load average before: {os.getloadavg()[0]:.2f}")
  for shape in bench.SHAPES_FLAG.value:
    for family in bench.FAMILIES_FLAG.value:
      profile(shape, family)
  print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
  from lm.cli import set_process_defaults  # the entry point's process-wide settings (XLA flags, malloc), before jax starts
  set_process_defaults()
  app.run(main)
