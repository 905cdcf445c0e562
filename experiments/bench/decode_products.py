"""Decoding's weight products on XLA:CPU: lm's few-row loops, the BLAS's sgemm and XLA's dot.

    python -m experiments.bench.decode_products [--rows=1,8,16] [--layers=14] [--repeats=15]

A decode step multiplies a few rows (one per sequence) by every weight matrix once, so it is
bound by reading the weights. This prints, for the products of llama-100m and gpt2-10m
(lm/cpu_gemm.py's docstring quotes the numbers), the weight bytes read per second by
  few     lm/cpu_gemm.py's own few-row loops (gemm(..., few_rows=True): what lm uses at
          up to cpu_gemm.FEW_ROWS rows);
  blas    the linked BLAS's sgemm (few_rows=False; OpenBLAS, or MKL with the mkl extra:
          LM_CPU_GEMM_BLAS chooses, and the header names it);
  eigen   XLA's own dot (jnp.matmul).
Each cell multiplies the rows by --layers distinct matrices in one jitted call (so the
weights stream from memory, as in a step, rather than from cache) and is the median of
--repeats calls after one warm-up, in this one process, under the XLA flags and malloc
settings lm's entry points set. Compare with the read bandwidth
`python -m experiments.bench.inference` measures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

# (K, N, B transposed): x[rows, K] @ B[K, N], or @ B[N, K]^T for a tied head
SHAPES = [
    (768, 768, False),    # llama-100m: q, and the attention's output
    (768, 256, False),    # llama-100m: k and v (4 kv heads of 64)
    (768, 4096, False),   # llama-100m: SwiGLU's gate and up together, and the untied head
    (2048, 768, False),   # llama-100m: SwiGLU's down
    (384, 1536, False),   # gpt2-10m: the MLP's in
    (384, 4096, True),    # gpt2-10m: the tied head, logits from the embedding table [V, D]
]


def median_seconds(fn, args, repeats: int) -> float:
  import jax
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--rows", default="1,8,16", help="rows of x: sequences decoded at once")
  p.add_argument("--layers", type=int, default=14, help="distinct weight matrices per call")
  p.add_argument("--repeats", type=int, default=15)
  args = p.parse_args()
  from lm.cli import set_process_defaults  # XLA flags and malloc settings, before jax starts
  set_process_defaults()
  import jax
  import jax.numpy as jnp
  import numpy as np
  from lm import cpu_gemm
  if not cpu_gemm.available():
    raise SystemExit("lm/cpu_gemm.py's kernel is unavailable here (LM_CPU_GEMM=0 is set, or the warning above says why)")
  print(f"jax {jax.__version__} on {jax.default_backend()}, {os.cpu_count()} cores, f32; "
        f"blas: {cpu_gemm.linked_blas()}; load {os.getloadavg()[0]:.2f}; GB/s of weights read")
  print(f"{'product':30} {'few':>8} {'blas':>8} {'eigen':>8}")
  rng = np.random.default_rng(0)
  for k, n, trans_b in SHAPES:
    ws = [jnp.asarray(rng.standard_normal((n, k) if trans_b else (k, n)), jnp.float32) for _ in range(args.layers)]
    gigabytes = args.layers * k * n * 4 / 1e9
    for rows in (int(r) for r in args.rows.split(",")):
      x = jnp.asarray(rng.standard_normal((rows, k)), jnp.float32)
      cells = []
      for few_rows in (True, False, None):
        if few_rows is None:
          fn = lambda x, ws: sum(jnp.sum(x @ (w.T if trans_b else w)) for w in ws)
        else:
          fn = lambda x, ws, f=few_rows: sum(jnp.sum(cpu_gemm.gemm(x, w, trans_b=trans_b, few_rows=f)) for w in ws)
        cells.append(gigabytes / median_seconds(jax.jit(fn), (x, ws), args.repeats))
      name = f"[{rows}, {k}] @ " + (f"[{n}, {k}]^T" if trans_b else f"[{k}, {n}]")
      print(f"{name:30} " + " ".join(f"{c:8.1f}" for c in cells), flush=True)
  print(f"load at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
  main()
