"""Shared by the command-line entry points (lm.main, lm.evaluate, lm.generate, ...)."""

import logging
import os

from absl import flags
from absl import logging as absl_logging


def quiet_logs():
  """absl INFO (orbax's every save, TFDS, jax's TPU probe) buries the progress bar: show
  warnings only, unless --verbosity is given. lm prints what a user needs to know."""
  if not flags.FLAGS["verbosity"].present:
    absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)


def parse_flags(argv):
  """absl's parser, but an unknown --config.<field>, a config file that raises, or one that is
  missing is one line, not a traceback (ml_collections raises AttributeError from inside flag
  parsing, wraps a config file's exception in a flags.Error, and defers a missing file's)."""
  try:
    rest = flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    bad = [a for a in argv[1:] if a.startswith("--config.")]
    detail = str(e).strip("'\"").replace("\\n", " ").replace("\\'", "'")
    raise SystemExit(f"Config error: unknown config field ({detail}) in {' '.join(bad)}. "
                     "Fields are listed in lm/schema.py.") from None
  except flags.Error as e:
    lines = [line for line in str(e).splitlines() if line.strip()]
    if "Traceback (most recent call last)" in str(e):  # raised inside a config file's get_config
      raise SystemExit(f"Config error: {lines[-1].split(': ', 1)[-1]} ({lines[0].split(': Error whilst')[0]})") from None
    raise SystemExit(f"Flag error: {e}\nPass --helpshort to see the flags.") from None
  for name in list(flags.FLAGS):  # a config file that failed to load raises only when read
    flag = flags.FLAGS[name]
    if flag.present and type(flag).__name__ == "_ConfigFlag":
      try:
        flag.value.get  # noqa: B018 - a failed load gives a stand-in that raises on any attribute
      except OSError as e:
        detail = [line.strip() for line in str(e).splitlines() if line.strip()][-1]
        raise SystemExit(f"Config error: --{name}: {detail} (paths are relative to {os.getcwd()}).") from None
  return rest


# XLA aborts on a flag it does not know, so each flag is set only on the jaxlib series it
# was measured on.
_EIGEN_DOTS_FLAG = "--xla_cpu_experimental_ynn_fusion_type="
_EIGEN_DOTS_JAXLIB = "0.10."
# --xla_disable_hlo_passes is XLA's generic pass switch (an unknown pass name is ignored).
_NO_TREE_REDUCTIONS_FLAG = "--xla_disable_hlo_passes=tree_reduction_rewriter"


def set_process_defaults():
  """lm's process-wide settings, for an entry point to call before jax starts a backend:
  the XLA flags (set_xla_flags) and, where jax computes on the CPU, glibc malloc settings
  that keep freed memory for the next step (lm/host_memory.py says why). Library code never
  sets them (importing lm changes nothing); tests/conftest.py sets the same for the test
  process."""
  from lm import host_memory  # local: only an entry point needs it
  set_xla_flags()
  host_memory.keep_freed_memory()


def set_xla_flags():
  """lm's process-wide XLA flags (set_process_defaults sets them). Only the CPU backend
  reads them, and only when it starts; calling this again changes nothing. Set
  LM_XLA_CPU_DEFAULTS=1 to keep all of XLA's choices.

  1. On jaxlib 0.10, route f32 matmuls to Eigen rather than the YNNPACK dot fusion (unless
     XLA_FLAGS names xla_cpu_experimental_ynn_fusion_type). Measured on a 2-core AVX-512 EPYC
     (2026-11, jax 0.10.2): a 4096x512 @ 512x2048 f32 dot ran at 92-125 GFLOP/s through
     YNNPACK and 147-206 GFLOP/s through Eigen, depending on the transposes.
  2. Where jax computes on the CPU (lm.host_memory.accelerator_expected is False), turn off
     XLA:CPU's tree_reduction_rewriter (unless XLA_FLAGS names xla_disable_hlo_passes). The
     pass splits every large reduction into a reduce-window of 32 and a second reduce, and
     XLA:CPU's reduce-window loop is slow: a row max of [4096, 8192] (the loss's log-sum-exp)
     took 75 ms on one core of the 2026-12-03 Xeon, 11 ms as one reduce; the attention's row
     max of [128, 256, 256] 17.8 ms against 1.4. The GPT-2-like benchmark step went from
     1,870-1,920 ms to 1,700-1,780 (experiments/results/cpu_benchmarks/PROFILE.md). XLA:CPU's
     reduce emitter keeps vector-wide partial sums, so a row's sum is still not one serial chain.
     Column sums (a bias's gradient), which the pass helped, are products in lm (ops.add_rows).
  """
  from lm import host_memory  # local: only an entry point needs it
  flags_now = os.environ.get("XLA_FLAGS", "")
  if os.environ.get("LM_XLA_CPU_DEFAULTS") == "1":
    return
  added = []
  if "ynn_fusion_type" not in flags_now:
    try:
      from jaxlib.version import __version__ as jaxlib_version  # local: jaxlib may be absent; only this needs it
    except ImportError:
      jaxlib_version = ""
    if jaxlib_version.startswith(_EIGEN_DOTS_JAXLIB):
      added.append(_EIGEN_DOTS_FLAG)
  if "xla_disable_hlo_passes" not in flags_now and not host_memory.accelerator_expected():
    added.append(_NO_TREE_REDUCTIONS_FLAG)
  if added:
    os.environ["XLA_FLAGS"] = " ".join([flags_now, *added]).strip()
