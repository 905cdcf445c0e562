"""lm: language-model scaling experiments in JAX/Flax."""

import os as _os

__version__ = "0.1.0"


def _prefer_eigen_dots_on_cpu():
  """On XLA:CPU, route f32 matmuls to Eigen rather than the YNNPACK dot fusion.

  Measured on a 2-core AVX-512 EPYC (2026-11, jax 0.10.2): a 4096x512 @ 512x2048 f32 dot
  ran at 92-125 GFLOP/s through YNNPACK and 147-206 GFLOP/s through Eigen, depending on
  the transposes (experiments/bench_train_step.py shows the effect on a whole step). Only
  the CPU backend reads this flag, and only before jax starts; set LM_XLA_CPU_DEFAULTS=1,
  or put your own xla_cpu_experimental_ynn_fusion_type in XLA_FLAGS, to keep XLA's choice.
  XLA aborts on a flag it does not know, so this is applied only to the jaxlib series it
  was measured on.
  """
  flags = _os.environ.get("XLA_FLAGS", "")
  if _os.environ.get("LM_XLA_CPU_DEFAULTS") == "1" or "ynn_fusion_type" in flags:
    return
  try:
    from jaxlib.version import __version__ as jaxlib_version
  except ImportError:
    return
  if not jaxlib_version.startswith("0.10."):
    return
  _os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_experimental_ynn_fusion_type=").strip()


_prefer_eigen_dots_on_cpu()
