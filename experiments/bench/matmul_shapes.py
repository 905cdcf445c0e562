"""The training step's weight products on XLA:CPU: whole, in column blocks, transposed, and OpenBLAS.

    python -m experiments.bench.matmul_shapes [--tokens=4096] [--blocks=1024,512,256] [--repeats=5]

lm/ops.py computes wide f32 products (more than COLUMN_BLOCK output columns, over at least
BLOCKED_TOKENS tokens) in column blocks, and a wide weight gradient as its transpose,
because Eigen's product slows down as the output's columns grow. This prints the evidence
for the machine at hand: GFLOP/s of each product of the benchmark step (4 layers, d_model
512, d_ff 2048, vocabulary 8192, 16 x 256 tokens) computed
  whole        one einsum, as jax writes it;
  cN           N columns at a time, concatenated (lm/ops.py in_column_blocks, used with COLUMN_BLOCK);
  transposed   (weight gradients only) dw^T = dy^T x, then transposed behind an
               optimization barrier (lm/ops.py transposed_weight_gradient);
  blas         lm/cpu_gemm.py's OpenBLAS call, as model.matmul='blas' (the CPU default)
               computes it ('-' where the kernel is unavailable here).
Each cell is the median of --repeats jitted calls after two warm-ups (train_step's
median_step_seconds), in this one process,
under the XLA flags lm's entry points set (lm.cli.set_process_defaults).
"""

from __future__ import annotations

import argparse
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from experiments.bench.train_step import median_step_seconds
from lm import cpu_gemm, ops

# (name, equation, a shape, b shape, b's output-column axis); T = tokens
PRODUCTS = [
    ("head forward x @ w", "TC,CN->TN", ("T", 512), (512, 8192), 1),
    ("head dw = x^T dy", "TC,TN->CN", ("T", 512), ("T", 8192), 1),
    ("head dx = dy w^T", "TN,CN->TC", ("T", 8192), (512, 8192), 0),
    ("swiglu in forward", "TC,CN->TN", ("T", 512), (512, 4096), 1),
    ("swiglu in dw", "TC,TN->CN", ("T", 512), ("T", 4096), 1),
    ("mlp out forward", "TC,CN->TN", ("T", 2048), (2048, 512), 1),
    ("mlp out dx", "TN,CN->TC", ("T", 512), (2048, 512), 0),
]


def median_seconds(fn, args, repeats: int) -> float:
  jitted = jax.jit(fn)
  return median_step_seconds(lambda: jax.block_until_ready(jitted(*args)), repeats)


def contracted_size(eq: str, a: jax.Array, b: jax.Array) -> int:
  """K: the product of the sizes of the axes eq contracts."""
  inputs, out = eq.split("->")
  sizes = dict(zip(inputs.split(",")[0], a.shape)) | dict(zip(inputs.split(",")[1], b.shape))
  return int(np.prod([size for axis, size in sizes.items() if axis not in out]))


def main():
  p = argparse.ArgumentParser(prog="python -m experiments.bench.matmul_shapes", description=__doc__.split("\n")[0])
  p.add_argument("--tokens", type=int, default=4096, help="T: batch x length (the benchmark step's 16 x 256)")
  p.add_argument("--blocks", default="1024,512,256", help="column block widths to time")
  p.add_argument("--repeats", type=int, default=5)
  args = p.parse_args()
  blocks = [int(b) for b in args.blocks.split(",")]
  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}, {len(os.sched_getaffinity(0))} cores, f32, "
        f"T = {args.tokens}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; load {os.getloadavg()[0]:.2f}")
  columns = ["whole"] + [f"c{b}" for b in blocks] + ["transposed", "blas"]
  print(f"{'product':<20} {'shape (M x K x N)':>20} " + " ".join(f"{c:>10}" for c in columns) + "   (GFLOP/s)")
  rng = np.random.default_rng(0)
  for name, eq, a_shape, b_shape, b_axis in PRODUCTS:
    a_shape = tuple(args.tokens if d == "T" else d for d in a_shape)
    b_shape = tuple(args.tokens if d == "T" else d for d in b_shape)
    a, b = (jnp.asarray(rng.standard_normal(s), jnp.float32) for s in (a_shape, b_shape))
    out = jax.eval_shape(lambda a, b: jnp.einsum(eq, a, b), a, b).shape
    k = contracted_size(eq, a, b)
    flops = 2 * out[0] * out[1] * k
    cells = [median_seconds(lambda a, b: jnp.einsum(eq, a, b), (a, b), args.repeats)]
    cells += [median_seconds(functools.partial(ops.in_column_blocks, eq, b_axis=b_axis, block=blk), (a, b),
                             args.repeats) if blk < out[1] else None for blk in blocks]
    cells.append(median_seconds(ops.transposed_weight_gradient, (a, b), args.repeats) if eq == "TC,TN->CN" else None)
    blas = functools.partial(cpu_gemm.gemm, **dict(zip(("trans_a", "trans_b"), ops.GEMM_TRANSPOSES[eq])))
    cells.append(median_seconds(blas, (a, b), args.repeats) if cpu_gemm.available() else None)
    shape = f"{out[0]} x {k} x {out[1]}"
    print(f"{name:<20} {shape:>20} " + " ".join(f"{flops / s / 1e9:>10.1f}" if s else f"{'-':>10}" for s in cells))
  print(f"load at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
  from lm.cli import set_process_defaults  # the entry points' settings (XLA flags, malloc), before jax starts
  set_process_defaults()
  main()
