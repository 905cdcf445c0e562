"""Shared by the command-line entry points (lm.main, lm.evaluate, lm.generate)."""

import logging

from absl import flags
from absl import logging as absl_logging


def quiet_logs():
  """absl INFO (orbax's every save, TFDS, jax's TPU probe) buries the progress bar: show
  warnings only, unless --verbosity is given. lm prints what a user needs to know."""
  if not flags.FLAGS["verbosity"].present:
    absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)


def parse_flags(argv):
  """absl's parser, but an unknown --config.<field> is one line naming the field, not a
  traceback (ml_collections raises AttributeError from inside flag parsing)."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    bad = [a for a in argv[1:] if a.startswith("--config.")]
    detail = str(e).strip("'\"").replace("\\n", " ").replace("\\'", "'")
    raise SystemExit(f"Config error: unknown config field ({detail}) in {' '.join(bad)}. "
                     "Fields are listed in configs/base.py.") from None
  except flags.Error as e:
    raise SystemExit(f"Flag error: {e}\nPass --helpshort to see the flags.") from None
