"""Which product computes a prefill's weight products on this host: XLA's own, or the BLAS's.

Why: a prefill, or an evaluation at small batch, multiplies tens to hundreds of rows by each
weight matrix, read once from memory (cold: a 100M model's weights do not fit in L2). There
the BLAS's sgemm, which packs B before it computes, can lose to XLA's dot (Eigen). On the
2-core Xeon of 2026-12-03, in a local script, a chain of 14 SwiGLU MLPs with distinct weights
([m, 768] @ [768, 4096], then [m, 2048] @ [2048, 768]) ran at 131 GFLOP/s through OpenBLAS
and 170 through XLA's dot at m = 64, 184 against 201 at m = 128, 279 against 271 at m = 512;
the batch-1, 64-token prefill of llama-100m (experiments/bench/inference.py) took 90.7 ms
instead of 99.6 (medians of 8, alternating, one process). MKL beat XLA's dot at 32 and 64 rows.
Training's products (thousands of rows) are the BLAS's by far (on the AVX2 EPYC XLA's ran at
half its speed), and no other host was measured at medium rows: so the choice is measured.

What: the forward x @ w of lm/ops.py's dense (its 2-D path: not the backward, the attention's
products or the tied decoding head) with cpu_gemm.FEW_ROWS < m <= xla_rows_limit() rows and a
weight of at least MIN_WEIGHT elements (beyond a core's L2, as in the measurement) is XLA's
under model.matmul='blas'. The limit is the largest of ROWS at which XLA's chain, and the
chains of every smaller entry of ROWS, took at most WIN of the BLAS's time (0 where XLA never
won). The chain: LAYERS SwiGLU MLPs of the shapes above, distinct weights (151 MB), both
products alternating, medians of REPEATS. It is measured once per host and kernel build (the
key of lm/cpu_gemm.py's cached file), in a subprocess on the CPU, in ~10 s, under a lock (one
process measures, the others wait and read), and kept beside the kernel in ~/.cache/lm as
JSON with the times, the load and the rule it was chosen by; delete the file to measure again.
A resumed run on the same host reads the same file, so it computes what it computed before.
LM_CPU_GEMM_XLA_ROWS=N sets the limit instead (0: the BLAS at every row count); the tests
set 0, so that what they lower does not depend on the host.
"""

from __future__ import annotations

import fcntl
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
# Elements of w (4 MB in float32), the measured regime. Below it XLA's dot was slower: llama-10m's
# batch-1 prefill took 13.4 ms with every weight routed against 12.5 with none (its largest is 786K
# elements); llama-100m's gained from its 590K q and o (89.3 against 92.5 ms), left out here.
MIN_WEIGHT = 1 << 20
ENV = "LM_CPU_GEMM_XLA_ROWS"
TIMEOUT_S = 300


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
  of ROWS (what `python -m lm.cpu_gemm_rows` prints: _measure_in_subprocess runs it)."""
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


def _measure_in_subprocess() -> dict:
  """{rows: {"xla": ms, "blas": ms}} from `python -m lm.cpu_gemm_rows` on the CPU; RuntimeError
  with the child's last lines if it fails."""
  lm_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, **{ENV: "0", "JAX_PLATFORMS": "cpu"})
  env["PYTHONPATH"] = os.pathsep.join(p for p in (lm_parent, env.get("PYTHONPATH")) if p)  # as this process imports lm
  try:
    result = subprocess.run([sys.executable, "-m", "lm.cpu_gemm_rows"], capture_output=True, text=True, env=env,
                            timeout=TIMEOUT_S)
  except subprocess.TimeoutExpired:
    raise RuntimeError(f"measuring medium-row products took over {TIMEOUT_S} s") from None
  try:
    times = json.loads(result.stdout.strip().splitlines()[-1])
    return {int(m): {"xla": float(t["xla"]), "blas": float(t["blas"])} for m, t in times.items()}
  except (IndexError, KeyError, TypeError, ValueError, AttributeError):
    tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
    raise RuntimeError(f"measuring medium-row products failed (exit {result.returncode}): {tail}") from None


def _read(path: str) -> int | None:
  """The cached limit, or None where the file is missing, unreadable, or chosen by other rules."""
  try:
    with open(path) as f:
      entry = json.load(f)
    limit = entry["limit"]
    if entry["rows"] != list(ROWS) or entry["win"] != WIN or not isinstance(limit, int) or limit < 0:
      return None
    return limit
  except (OSError, ValueError, KeyError, TypeError):
    return None


def calibrate(path: str) -> int:
  """Measures (under a lock on path + '.lock': concurrent processes measure once) and writes the
  JSON whole (a rename); returns the limit. A file another process wrote meanwhile is read."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    limit = _read(path)
    if limit is not None:
      return limit
    print(f"lm: measuring once which product is faster for medium row counts here ({path})", file=sys.stderr)
    times = _measure_in_subprocess()
    limit = limit_from(times)
    entry = {"limit": limit, "times_ms": times, "rows": list(ROWS), "win": WIN, "min_weight": MIN_WEIGHT,
             "chain": f"{LAYERS} x ([m, {D_MODEL}] @ [{D_MODEL}, {2 * D_FF}], [m, {D_FF}] @ [{D_FF}, {D_MODEL}])",
             "load_avg": os.getloadavg()[0], "cpus": os.cpu_count()}
    try:
      fd, tmp = tempfile.mkstemp(suffix=".json", dir=os.path.dirname(path))
      with os.fdopen(fd, "w") as f:
        json.dump(entry, f, indent=1)
      os.replace(tmp, path)
    except OSError as e:
      warnings.warn(f"could not keep the measured medium-row limit ({e}); set {ENV}={limit} to skip measuring",
                    stacklevel=3)
    return limit


@functools.lru_cache(maxsize=None)
def xla_rows_limit() -> int:
  """LM_CPU_GEMM_XLA_ROWS, else the cached measurement, else a new one (0 if it fails, with a
  warning: the BLAS computes every row count, as before this module)."""
  value = os.environ.get(ENV, "")
  if value:
    if not value.isdigit():
      raise ValueError(f"{ENV}={value!r}: give a row count (0 or more), or unset it to measure once")
    return int(value)
  from lm import cpu_gemm
  try:
    path = cpu_gemm.library_path() + ".rows.json"
  except cpu_gemm.Unavailable:
    return 0  # no kernel: nothing to choose between
  limit = _read(path)
  if limit is not None:
    return limit
  try:
    return calibrate(path)
  except (RuntimeError, OSError) as e:
    warnings.warn(f"{e}; the BLAS computes every row count (set {ENV}=0 to silence this)", stacklevel=2)
    return 0


def xla_computes(rows: int, weight_elements: int) -> bool:
  """Whether lm/ops.py's dense computes x @ w with this many rows of x and elements of w with
  XLA's product under model.matmul='blas' (the module docstring)."""
  from lm import cpu_gemm
  return (cpu_gemm.FEW_ROWS < rows <= ROWS[-1] and weight_elements >= MIN_WEIGHT
          and rows <= xla_rows_limit())  # checked last: only such products ever measure


if __name__ == "__main__":
  from lm.cli import set_process_defaults
  set_process_defaults()
  print(json.dumps(measure()))
