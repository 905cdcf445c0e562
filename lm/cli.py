"""Shared by the command-line entry points (lm.main, lm.evaluate, lm.generate)."""

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
                     "Fields are listed in configs/base.py.") from None
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
