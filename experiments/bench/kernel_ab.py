"""Two builds of lm's CPU product kernel, timed against each other in one process.

    python -m experiments.bench.kernel_ab --other=PATH [--sizes=llama-100m] [--batch=1]
        [--new_tokens=33] [--rounds=8] [--products]

PATH is a kernel library another checkout built (run
`python -c "from lm import cpu_gemm; print(cpu_gemm.library_path())"` there: a file in
~/.cache/lm). For each size, lm's greedy decoding (lm.decode.generate, float32, random
weights) runs under this checkout's kernel ("this") and under PATH's ("other") in
alternating rounds (this/other, then other/this), and the table gives each side's median ms
per token, (t(N) - t(1)) / (N - 1) as experiments.bench.inference times it, the ratio with its
range over the rounds, and the fraction of greedy tokens on which the two agree. --products
first prints the GB/s of weights each side reads on experiments.bench.decode_products' shapes
(--batch rows times 14 distinct matrices in one call, medians of 30 alternating calls).

Why one process. On a shared 2-core host the same process run twice moved 20-25% (decode of
llama-100m: 20.8-26.5 ms a token on 2026-12-04, the same build); a change of a few per cent
can only be read off runs interleaved in one process, where the neighbours' load hits both
sides alike. Why the decode step and not the products alone: on 2026-12-04 a change to the
one-row loops read llama-100m's products 1.06-1.21x faster, 14 independent products to a call,
and left its decode step 0.98-1.08x as fast in four runs of the comparison
(experiments/results/cpu_benchmarks/PROFILE.md): a step's products run one after another.

How. PATH's product is registered with XLA as a second FFI target ("lm_cpu_gemm_other"), and
lm's decoding loop (lm.decode.start_jit, advance_jit) is compiled once per side while
lm.cpu_gemm.TARGET names that side's target (after jax.clear_caches(): jax would otherwise
reuse functions traced for the other side); each round installs that side's compiled loop.
Only the products are swapped: the fused attention and the copy (lm/cpu_attention.cc,
lm_cpu_materialize) are this checkout's on both sides.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics

import numpy as np

OTHER_TARGET = "lm_cpu_gemm_other"


def alternating(rounds: int):
  """The sides in the order they run: this, other; then other, this; and so on."""
  for r in range(rounds):
    yield from ("this", "other") if r % 2 == 0 else ("other", "this")


def sides(other_path: str) -> dict:
  """{"this": (target, start, advance), "other": ...}: lm.decode's start_jit and advance_jit, each
  compiled on first use under its side's product (`use` installs a side)."""
  import jax
  from lm import cpu_gemm
  from lm import decode
  if not cpu_gemm.available():
    raise SystemExit("lm's CPU kernel is unavailable here (the warning above says why): nothing to compare")
  if not os.path.isfile(other_path):
    raise SystemExit(f"--other={other_path} is not a file: pass the library path another checkout prints "
                     "(python -c 'from lm import cpu_gemm; print(cpu_gemm.library_path())')")
  lib = ctypes.CDLL(other_path)
  lib.LmCpuGemmInit()
  jax.ffi.register_ffi_target(OTHER_TARGET, jax.ffi.pycapsule(lib.LmCpuGemm), platform="cpu")

  def compiled_once(jitted, n_static: int):
    compiled = {}

    def call(*args):
      key = args[:n_static]
      if key not in compiled:
        compiled[key] = jitted.lower(*args).compile()
      return compiled[key](*args[n_static:])
    call.compiled = compiled  # {static arguments: the compiled function}
    return call
  return {name: (target, compiled_once(decode.start_jit, 2), compiled_once(decode.advance_jit, 1))
          for name, target in (("this", cpu_gemm.TARGET), ("other", OTHER_TARGET))}


def use(side: tuple, first: bool = False) -> None:
  """Make lm.decode.generate run `side`'s compiled functions; `first`: before they are compiled."""
  import jax
  from lm import cpu_gemm
  from lm import decode
  cpu_gemm.TARGET, decode.start_jit, decode.advance_jit = side
  if first:
    jax.clear_caches()


def compare(size: str, arms: dict, batch: int, new_tokens: int, rounds: int) -> dict:
  """Median ms per token of each side, the per-round ratios other/this, and the tokens' agreement."""
  from experiments.bench.inference import VOCAB, model_config
  from lm.inference_cost import TimedDecoder
  from lm import cpu_gemm
  from lm import decode
  decoder = TimedDecoder(model_config(size))
  prompts = np.random.default_rng(0).integers(0, VOCAB, (batch, 64)).tolist()
  installed = (cpu_gemm.TARGET, decode.start_jit, decode.advance_jit)
  try:
    tokens, ms = _rounds(decoder, prompts, arms, new_tokens, rounds)
  finally:  # lm as it was (a test process goes on using it)
    use(installed, first=True)
  ratios = [o / t for o, t in zip(ms["other"], ms["this"])]
  return dict(size=size, this=statistics.median(ms["this"]), other=statistics.median(ms["other"]),
              ratios=ratios, same=float(np.mean(tokens["this"] == tokens["other"])))


def _rounds(decoder, prompts, arms: dict, new_tokens: int, rounds: int) -> tuple[dict, dict]:
  """({side: its greedy tokens}, {side: ms per token of each round})."""
  tokens, ms = {}, {name: [] for name in arms}
  for name, side in arms.items():  # compile each side's functions, under its own target
    use(side, first=True)
    decoder.run(prompts, 1)
    decoder.run(prompts, new_tokens)
    tokens[name] = decoder.last_tokens
  for name in alternating(rounds):
    use(arms[name])
    t1, tn = decoder.run(prompts, 1), decoder.run(prompts, new_tokens)
    ms[name].append((tn - t1) / (new_tokens - 1) * 1e3)
  return tokens, ms


def products(rows: int) -> None:
  """decode_products' shapes under each side's product, alternating in this process."""
  import time
  import jax
  import jax.numpy as jnp
  from experiments.bench.decode_products import SHAPES
  from lm import cpu_gemm
  installed, layers = cpu_gemm.TARGET, 14
  print(f"{'product':<28} {'this GB/s':>9} {'other GB/s':>10} {'this/other time':>15}")
  try:
    for k, n, trans_b in SHAPES:
      ws = [jnp.asarray(np.random.default_rng(i).standard_normal((n, k) if trans_b else (k, n), np.float32))
            for i in range(layers)]
      x, fns, seconds = jnp.ones((rows, k), jnp.float32), {}, {"this": [], "other": []}
      for name, target in (("this", installed), ("other", OTHER_TARGET)):
        cpu_gemm.TARGET = target
        jax.clear_caches()
        fns[name] = jax.jit(lambda x, ws: [cpu_gemm.gemm(x, w, trans_b=trans_b, few_rows=True) for w in ws]
                            ).lower(x, ws).compile()
        jax.block_until_ready(fns[name](x, ws))
      for name in alternating(30):
        t = time.perf_counter()
        jax.block_until_ready(fns[name](x, ws))
        seconds[name].append(time.perf_counter() - t)
      gb, med = layers * k * n * 4 / 1e9, {name: statistics.median(v) for name, v in seconds.items()}
      label = f"[{rows}, {k}] @ " + (f"[{n}, {k}]^T" if trans_b else f"[{k}, {n}]")
      print(f"{label:<28} {gb / med['this']:>9.1f} {gb / med['other']:>10.1f} {med['this'] / med['other']:>15.2f}")
  finally:
    cpu_gemm.TARGET = installed
    jax.clear_caches()
  print()


def main(argv=None) -> list[dict]:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--other", required=True, help="the other build's kernel library (a .so in ~/.cache/lm)")
  p.add_argument("--sizes", default="llama-100m", help="comma-separated, of experiments.bench.inference.SIZES")
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--new_tokens", type=int, default=33)
  p.add_argument("--rounds", type=int, default=8)
  p.add_argument("--products", action="store_true", help="first the products alone, on decode_products' shapes")
  args = p.parse_args(argv)
  from experiments.bench.inference import parse_sizes
  sizes = parse_sizes(p, args.sizes)
  if args.new_tokens < 2 or args.rounds < 1:
    p.error("--new_tokens must be at least 2 (a token after the prefill's) and --rounds at least 1")
  from lm import cpu_gemm
  arms = sides(args.other)
  print(f"this: {cpu_gemm.library_path()}\nother: {args.other}\nbatch {args.batch}, {args.new_tokens} new tokens; "
        f"ms per token = (t(N) - t(1)) / (N - 1), medians of {args.rounds} alternating rounds; "
        f"load average {os.getloadavg()[0]:.2f} at start")
  if args.products:
    products(args.batch)
  print(f"{'model':<11} {'this ms':>8} {'other ms':>8} {'other/this':>10} {'range':>11} {'same tok':>8}")
  rows = []
  for size in sizes:
    row = compare(size, arms, args.batch, args.new_tokens, args.rounds)
    rows.append(row)
    print(f"{size:<11} {row['this']:>8.2f} {row['other']:>8.2f} {row['other'] / row['this']:>10.3f} "
          f"{min(row['ratios']):>5.2f}-{max(row['ratios']):<5.2f} {row['same']:>8.0%}")
  print(f"load average {os.getloadavg()[0]:.2f} at end; other/this above 1: the other build is slower")
  return rows


if __name__ == "__main__":
  from lm.cli import set_process_defaults  # the entry point's XLA flags and malloc settings, before jax starts
  set_process_defaults()
  main()
