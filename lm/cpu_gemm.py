"""f32 matrix products on XLA:CPU through OpenBLAS, as an XLA FFI custom call.

Why: XLA:CPU's own f32 product (Eigen) runs well below what the CPU does. On the 2-core
AVX2 EPYC of 2026-12-03, [4096, 512] @ [512, 8192] ran 77-80 GFLOP/s through Eigen whole
(114 in lm's column blocks), 4096^3 ran 92, while OpenBLAS and torch's MKL ran the same
shapes at 170-185 (experiments/bench/matmul_shapes.py prints both). The weight products are
three quarters of a CPU training step, so model.matmul='blas' (lm/ops.py; what 'auto' picks
on a CPU backend when this kernel is available) routes them here.

What it is: lm/cpu_gemm.cc, about 300 lines of C++ against the XLA FFI headers jaxlib ships
(jax.ffi.include_dir()), calling `sgemm` of the OpenBLAS in the scipy-openblas32 wheel (the
build numpy and scipy ship, as a package of its own, so its thread setting is lm's alone).
It is compiled with the system's C++ compiler ($CXX, else g++, -O3 -march=native) on first
use, like torch.compile's C++ kernels, into ~/.cache/lm/ (or $XDG_CACHE_HOME/lm), keyed by a
hash of the source, the jaxlib version, the library path and the CPU (its model and flags);
later processes load the cached file.
The kernel splits each product into one chunk per XLA intra-op thread and runs each chunk
single-threaded, so XLA's scheduler alone shares the cores (OpenBLAS's own threads beside
XLA's made the step 15% slower than Eigen).

Few rows: a product of at most FEW_ROWS rows (decoding's, one per sequence, and its
attention over the KV cache) runs the kernel's own loops instead of sgemm: a BLAS's sgemm is
built for many rows. On the 2-core Xeon of 2026-12-03, at [8, 768] @ [768, 4096], OpenBLAS read
the weights at 6-7 GB/s, MKL and XLA's dot at 9-10, these loops at 21-23 (the memory reads
29-31); `python -m experiments.bench.decode_products` prints the table for your machine.
Batch-8 decoding of llama-100m went from 55.3 to 22.5 ms a token
(experiments/results/cpu_benchmarks/README.md). One row (batch-1 decoding) streams B's rows
whole, each thread a contiguous stretch (lm/cpu_gemm.cc): on the 2-core AVX2 EPYC of
2026-12-07 llama-100m's batch-1 step went from 16.9 to 11.8 ms a token (experiments.bench.kernel_ab).
A one-row product's second thread is the kernel's own, which stays awake between a step's
products instead of sleeping in XLA's pool (lm/cpu_helper.h): batch-1 steps 1.03-1.14x as fast
on the 2-core Xeon of 2026-12-08.

MKL instead: with the mkl wheel installed (pip install -e '.[mkl]'), the kernel links Intel's
libmkl_rt instead (`blas()`; LM_CPU_GEMM_BLAS=openblas or =mkl chooses). On the 2-core Xeon of 2026-12-03, in
alternating processes, the GPT-2-like step took 1,802-1,899 ms with MKL against 1,935-2,025
with OpenBLAS, the Llama-like 2,155-2,217 against 2,345-2,432
(experiments/results/cpu_benchmarks/README.md); decoding's products of at most FEW_ROWS rows
take the few-row loops whichever library is linked. It is not the
default because of its size (a 229 MB wheel, ~1.1 GB with its dependencies; x86 only).

Attention: the same library holds lm/cpu_attention.cc, the training step's causal attention
fused into one pass per block of queries (lm/cpu_attention.py says why and what it computes).

Materialize: the kernel also has a copy (`materialize(x)`), for values XLA:CPU would otherwise
recompute inside every consumer's loop; RoPE's cos and sin (lm/attention.py) were 3.5% of the
Llama-like training step that way.

When it is unavailable (no compiler, no wheel, another OS), `available()` says why once, in
a warning, and lm uses the XLA product ('custom_vjp'); nothing else changes. Values equal
XLA's product to rounding (a K-long sum may be ordered differently; tests/test_cpu_gemm.py).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
import tempfile
import warnings

import jax
import jax.numpy as jnp

from lm.cache import cache_root

TARGET = "lm_cpu_gemm"
MATERIALIZE_TARGET = "lm_cpu_materialize"
ATTENTION_TARGETS = {"lm_cpu_attention_fwd": "LmCpuAttentionFwd", "lm_cpu_attention_bwd": "LmCpuAttentionBwd"}
_DIR = os.path.dirname(__file__)
_SOURCE = os.path.join(_DIR, "cpu_gemm.cc")
# Compiled into one library: the products, the fused attention (lm/cpu_attention.py), their BLAS header.
_SOURCES = (_SOURCE, os.path.join(_DIR, "cpu_attention.cc"))
_HEADERS = (os.path.join(_DIR, "cpu_blas.h"), os.path.join(_DIR, "cpu_helper.h"))


class Unavailable(RuntimeError):
  """The kernel cannot be built or loaded here; the message says why and what to do."""


BLASES = ("openblas", "mkl")
# Products with at most this many rows (decoding's: one per sequence) run the kernel's own
# few-row loops rather than the BLAS's sgemm (lm/cpu_gemm.cc says why; numbers in the docstring).
FEW_ROWS = 16


def _openblas() -> tuple[str, str, list[str]]:
  try:
    import scipy_openblas32  # local: an optional, Linux-only dependency (setup.cfg)
  except ImportError:
    raise Unavailable("the scipy-openblas32 package is not installed (pip install scipy-openblas32)") from None
  lib_dir = scipy_openblas32.get_lib_dir()
  if not os.path.exists(os.path.join(lib_dir, "libscipy_openblas.so")):
    raise Unavailable(f"no libscipy_openblas.so in {lib_dir} (scipy-openblas32 ships it on Linux only)")
  return "openblas", lib_dir, ["-lscipy_openblas"]


def _mkl() -> tuple[str, str, list[str]] | None:
  """The mkl wheel's libmkl_rt (lm's 'mkl' extra), or None where it is not installed."""
  try:
    files = importlib.metadata.distribution("mkl").files or []
  except importlib.metadata.PackageNotFoundError:
    return None
  for f in files:
    if f.name.startswith("libmkl_rt.so"):
      path = os.path.realpath(f.locate())
      return "mkl", os.path.dirname(path), [f"-l:{os.path.basename(path)}", "-DLM_GEMM_MKL"]
  return None


def blas() -> tuple[str, str, list[str]]:
  """(name, library directory, compiler flags) of the BLAS the kernel links: LM_CPU_GEMM_BLAS
  if set ('openblas' or 'mkl'), else MKL where the mkl wheel is installed (pip install
  'lm[mkl]': its single-threaded products ran 3-13% faster than OpenBLAS's on the 2026-12-03
  Xeon, the step about 6%), else OpenBLAS."""
  choice = os.environ.get("LM_CPU_GEMM_BLAS", "")
  if choice not in ("",) + BLASES:
    raise Unavailable(f"LM_CPU_GEMM_BLAS={choice!r} is not one of {BLASES}")
  mkl = _mkl() if choice in ("", "mkl") else None
  if choice == "mkl" and mkl is None:
    raise Unavailable("LM_CPU_GEMM_BLAS=mkl, but the mkl package is not installed (pip install mkl)")
  return mkl or _openblas()


def _cpu_signature() -> str:
  """The CPU's model and instruction-set flags (/proc/cpuinfo), which -march=native compiles for."""
  try:
    with open("/proc/cpuinfo") as f:
      lines = f.read().split("\n\n")[0].splitlines()
  except OSError:
    return platform.machine() + platform.processor()
  return " ".join(line for line in lines if line.split(":")[0].strip() in ("model name", "flags", "Features"))


def compiler() -> str | None:
  """The C++ compiler the kernel is built with: $CXX, else g++, else c++; None if there is none."""
  return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def _build(library: tuple[str, str, list[str]]) -> str:
  """The compiled kernel's path: the cached file, or a new build of lm/cpu_gemm.cc and
  lm/cpu_attention.cc (one library) against `library` (blas())."""
  _, lib_dir, link = library
  import jaxlib  # local: the version is part of the cache key (the FFI headers come with it)
  cxx = compiler()
  if cxx is None:
    raise Unavailable("no C++ compiler (install g++, or set CXX)")
  source = b""
  for name in _SOURCES + _HEADERS:
    with open(name, "rb") as f:
      source += f.read()
  flags = ["-O3", "-shared", "-fPIC", "-std=c++17", "-w", f"-I{jax.ffi.include_dir()}"]
  libraries = [f"-L{lib_dir}", *link, f"-Wl,-rpath,{lib_dir}"]
  # -march=native: the file is for this CPU only (a home directory shared by a cluster's nodes
  # holds one per CPU), so the key has the CPU, and every flag.
  key = hashlib.sha256(source + jaxlib.__version__.encode()
                       + " ".join([cxx, *flags, *libraries, _cpu_signature()]).encode()).hexdigest()[:16]
  path = os.path.join(cache_root(), f"cpu_gemm-{key}.so")
  if os.path.exists(path):
    return path
  os.makedirs(cache_root(), exist_ok=True)
  # Build beside the target and rename: processes building at once each finish a whole file.
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache_root())
  os.close(fd)
  for arch in (["-march=native"], []):  # some compilers (ppc64le, s390x GCC) want -mcpu= instead: then portable
    cmd = [cxx, *flags, *arch, *_SOURCES, "-o", tmp, *libraries]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode == 0:
      break
  if result.returncode != 0:
    os.unlink(tmp)
    tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
    raise Unavailable(f"compiling {' and '.join(_SOURCES)} failed ({' '.join(cmd[:2])} ...): {' | '.join(tail)}")
  os.replace(tmp, path)
  return path


@functools.lru_cache(maxsize=None)
def _load() -> str | None:
  """None when the kernel is registered with XLA:CPU, else why it is not."""
  if os.environ.get("LM_CPU_GEMM") == "0":
    return "LM_CPU_GEMM=0"
  try:
    library = blas()
    path = _build(library)
    lib = ctypes.CDLL(path)
    lib.LmCpuGemmInit()  # OpenBLAS's own pool to one thread: the kernel splits over XLA's
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(lib.LmCpuGemm), platform="cpu")
    jax.ffi.register_ffi_target(MATERIALIZE_TARGET, jax.ffi.pycapsule(lib.LmCpuMaterialize), platform="cpu")
    for target, symbol in ATTENTION_TARGETS.items():
      jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
  except (Unavailable, OSError) as e:
    return str(e)
  _LOADED.append((library[0], path))
  return None


_LOADED: list[tuple[str, str]] = []  # (the BLAS's name, the kernel's file), once loaded


def library_path() -> str:
  """The loaded kernel's file in ~/.cache/lm (its name has the build's key); Unavailable if none."""
  if not available():
    raise Unavailable(_load())
  return _LOADED[0][1]


def linked_blas() -> str | None:
  """'openblas' or 'mkl': the library the loaded kernel calls; None where it is unavailable."""
  return _LOADED[0][0] if available() else None


def available() -> bool:
  """Whether `gemm` can run here; the first False warns why (lm then uses XLA's product)."""
  reason = _load()
  if reason is not None and reason != "LM_CPU_GEMM=0":
    _warn_once(reason)
  return reason is None


@functools.lru_cache(maxsize=None)
def _warn_once(reason: str):
  warnings.warn(f"lm's OpenBLAS matmul for XLA:CPU is unavailable ({reason}); using XLA's own product, "
                "about half as fast at training sizes. Set LM_CPU_GEMM=0 to choose that and silence this.",
                stacklevel=3)


def gemm(a: jax.Array, b: jax.Array, trans_a: bool = False, trans_b: bool = False,
         few_rows: bool | None = None) -> jax.Array:
  """op(a) @ op(b) in float32 for float32 a and b, op = transpose of the last two axes where
  asked; 2-D, or 3-D with one batch size (one product per leading entry). CPU backend only.

  No transpose is materialised: a [T, C] activation and a [T, N] gradient give the weight
  gradient [C, N] as gemm(x, dy, trans_a=True).

  few_rows: whether the kernel's own few-row loops compute it instead of the BLAS (lm/cpu_gemm.cc;
  a not transposed only); None: where op(a) has at most FEW_ROWS rows."""
  if (a.ndim not in (2, 3) or b.ndim != a.ndim or a.dtype != jnp.float32 or b.dtype != jnp.float32
      or (a.ndim == 3 and a.shape[0] != b.shape[0])):
    raise ValueError(f"gemm takes two 2-D float32 operands, or two 3-D with one batch size, got "
                     f"{a.dtype}{list(a.shape)} and {b.dtype}{list(b.shape)}")
  m, k = (a.shape[-1], a.shape[-2]) if trans_a else a.shape[-2:]
  k_b, n = (b.shape[-1], b.shape[-2]) if trans_b else b.shape[-2:]
  if k != k_b:
    raise ValueError(f"gemm: op(a) is [{m}, {k}] and op(b) is [{k_b}, {n}]; the contracted sizes differ")
  if few_rows and trans_a:
    raise ValueError("gemm: few_rows takes a not transposed (trans_a=False)")
  if few_rows is None:
    few_rows = not trans_a and m <= FEW_ROWS
  if not available():
    raise Unavailable(_load())
  # vmap (lm/lr_sweep.py trains several LRs in one step) loops over the batch: one product each.
  call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct(a.shape[:-2] + (m, n), jnp.float32), vmap_method="sequential")
  return call(a, b, trans_a=trans_a, trans_b=trans_b, few_rows=bool(few_rows))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def batched_product(a: jax.Array, b: jax.Array, trans_b: bool = False) -> jax.Array:
  """a @ op(b) for 3-D float32 [batch, m, k] a, differentiable: each gradient is one more
  gemm with the transposes as flags (lm/attention.py's Q K^T and P V under 'blas')."""
  return gemm(a, b, trans_b=trans_b)


def _batched_product_fwd(a, b, trans_b):
  return gemm(a, b, trans_b=trans_b), (a, b)


def _batched_product_bwd(trans_b, residuals, dc):
  a, b = residuals
  if trans_b:  # c = a b^T: da = dc b, db = dc^T a
    return gemm(dc, b), gemm(dc, a, trans_a=True)
  return gemm(dc, b, trans_b=True), gemm(a, dc, trans_a=True)  # c = a b: da = dc b^T, db = a^T dc


batched_product.defvjp(_batched_product_fwd, _batched_product_bwd)


@jax.custom_jvp
def materialize(x: jax.Array) -> jax.Array:
  """x, copied into a buffer of its own by the kernel: XLA:CPU cannot fuse a custom call, so
  x's producer runs once instead of inside each consumer's loop. (An optimization barrier does
  not do it: XLA:CPU removes barriers before fusion.) The value is x, bitwise; the tangent passes
  through. lm/attention.py's rope() uses it for cos and sin. CPU backend only, like gemm."""
  if not available():
    raise Unavailable(_load())
  call = jax.ffi.ffi_call(MATERIALIZE_TARGET, jax.ShapeDtypeStruct(x.shape, x.dtype), vmap_method="broadcast_all")
  return call(x)


@materialize.defjvp
def _materialize_jvp(primals, tangents):
  return materialize(primals[0]), tangents[0]
