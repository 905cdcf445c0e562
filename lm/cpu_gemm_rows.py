"""Which product computes a medium-row f32 product on this host: XLA's own, or the BLAS's.

Why: a prefill, or an evaluation at small batch, multiplies tens to hundreds of rows by each
weight matrix, read once from memory (cold: a 100M model's weights do not fit in L2). There
the BLAS's sgemm, which packs B before it computes, can lose to XLA's dot (Eigen): on the
2-core Xeon of 2026-12-03, a chain of 14 SwiGLU MLPs with distinct weights ([m, 768] @
[768, 4096], then [m, 2048] @ [2048, 768]) ran at 131 GFLOP/s through OpenBLAS and 170
through XLA's dot at m = 64, 184 against 201 at m = 128, and 279 against 271 at m = 512; the
batch-1, 64-token prefill of llama-100m (experiments/bench/inference.py) took 90.7 ms
instead of 99.6 (medians of 8, alternating, one process). Training's products (thousands of
rows) are the BLAS's by far (on the AVX2 EPYC XLA's ran at half its speed), and no other host
was measured at medium rows, so the choice is measured, not assumed.

What: products with cpu_gemm.FEW_ROWS < m <= xla_rows_limit() rows, under model.matmul='blas',
are XLA's (lm/ops.py asks `xla_computes(m)`); fewer take the kernel's few-row loops, more the
BLAS. The limit is the largest of ROWS at which XLA's chain, and the chains of every smaller
entry of ROWS, took at most WIN of the BLAS's time (0 where XLA never won). It is measured
once per host (and per kernel build: the key of lm/cpu_gemm.py's cached file) in a
subprocess, in ~10 s, and kept beside the kernel in ~/.cache/lm as JSON with the times it was
chosen from. LM_CPU_GEMM_XLA_ROWS=N sets it instead (0: the BLAS at every row count);
the tests set 0, so that what they lower does not depend on the host.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings

ROWS = (32, 64, 128, 256)  # the row counts measured; the limit is one of them, or 0
WIN = 0.95                 # XLA's time at most this fraction of the BLAS's: a margin over the noise
LAYERS, D_MODEL, D_FF = 8, 768, 2048  # the chain: 8 x ([m, D] @ [D, 2F], [m, F] @ [F, D]), 151 MB of weights
REPEATS = 7
ENV = "LM_CPU_GEMM_XLA_ROWS"


def limit_from(times_ms: dict) -> int:
  """The limit that {rows: {"xla": ms, "blas": ms}} gives (the module docstring's rule)."""
  limit = 0
  for m, t in sorted((int(m), t) for m, t in times_ms.items()):
    if t["xla"] > WIN * t["blas"]:
      break
    limit = m
  return limit


def measure() -> dict:
  """{rows: {"xla": ms, "blas": ms}}: the chain's median time through each product, for each
  of ROWS (run in the subprocess that calibrate() starts; jax on the CPU)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from lm import cpu_gemm
  rng = np.random.default_rng(0)
  ups = [jnp.asarray(rng.standard_normal((D_MODEL, 2 * D_FF), np.float32) * 0.03) for _ in range(LAYERS)]
  downs = [jnp.asarray(rng.standard_normal((D_FF, D_MODEL), np.float32) * 0.03) for _ in range(LAYERS)]

  def chain(product):
    def run(x_MD, ups, downs):
      for up_D2F, down_FD in zip(ups, downs):  # each product's weights read once, as in a prefill
        gate_MF, up_MF = jnp.split(product(x_MD, up_D2F), 2, axis=1)  # a SwiGLU MLP's
        x_MD = x_MD + product(jax.nn.silu(gate_MF) * up_MF, down_FD)
      return x_MD
    return jax.jit(run)

  products = {"xla": chain(jnp.dot), "blas": chain(lambda a, b: cpu_gemm.gemm(a, b, few_rows=False))}
  times = {}
  for m in ROWS:
    x_MD = jnp.asarray(rng.standard_normal((m, D_MODEL), np.float32))
    for fn in products.values():
      jax.block_until_ready(fn(x_MD, ups, downs))  # compile and warm
    runs = {name: [] for name in products}
    for _ in range(REPEATS):  # alternating, so that a change of load hits both
      for name, fn in products.items():
        t = time.perf_counter()
        jax.block_until_ready(fn(x_MD, ups, downs))
        runs[name].append(1e3 * (time.perf_counter() - t))
    times[m] = {name: float(np.median(r)) for name, r in runs.items()}
  return times


def _path() -> str:
  from lm import cpu_gemm
  return cpu_gemm.library_path() + ".rows.json"


def calibrate() -> dict:
  """Measures in a subprocess and writes the JSON (written whole: a rename); returns it."""
  env = dict(os.environ, **{ENV: "0"})
  result = subprocess.run([sys.executable, "-m", "lm.cpu_gemm_rows"], capture_output=True, text=True, env=env)
  if result.returncode != 0:
    tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
    raise RuntimeError(f"measuring medium-row products failed: {tail}")
  times = {int(m): t for m, t in json.loads(result.stdout.strip().splitlines()[-1]).items()}
  entry = {"limit": limit_from(times), "times_ms": times, "rows": list(ROWS), "win": WIN,
           "chain": f"{LAYERS} x ([m, {D_MODEL}] @ [{D_MODEL}, {2 * D_FF}], [m, {D_FF}] @ [{D_FF}, {D_MODEL}])",
           "load_avg": os.getloadavg()[0]}
  path = _path()
  fd, tmp = tempfile.mkstemp(suffix=".json", dir=os.path.dirname(path))
  with os.fdopen(fd, "w") as f:
    json.dump(entry, f, indent=1)
  os.replace(tmp, path)
  return entry


@functools.lru_cache(maxsize=None)
def xla_rows_limit() -> int:
  """LM_CPU_GEMM_XLA_ROWS, else the cached measurement, else a new one (0 if it fails, with a
  warning: the BLAS computes every row count, as before this module)."""
  value = os.environ.get(ENV, "")
  if value:
    if not value.isdigit():
      raise ValueError(f"{ENV}={value!r}: give a row count (0 or more), or unset it to measure once")
    return int(value)
  try:
    with open(_path()) as f:
      return int(json.load(f)["limit"])
  except (OSError, ValueError, KeyError):
    pass
  print(f"lm: measuring once which product is faster for medium row counts here ({_path()})", file=sys.stderr)
  try:
    return calibrate()["limit"]
  except (RuntimeError, OSError, ValueError) as e:
    warnings.warn(f"{e}; the BLAS computes every row count (set {ENV}=0 to silence this)", stacklevel=2)
    return 0


def xla_computes(rows: int) -> bool:
  """Whether a product with this many rows is XLA's under model.matmul='blas'."""
  from lm import cpu_gemm
  return cpu_gemm.FEW_ROWS < rows <= ROWS[-1] and rows <= xla_rows_limit()  # training's rows never measure


if __name__ == "__main__":
  from lm.cli import set_process_defaults
  set_process_defaults()
  print(json.dumps(measure()))
