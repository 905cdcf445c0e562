"""Train a model: python -m lm.main --config=configs/default.py --workdir=DIR [--config.x.y=...]

Resumes automatically when DIR holds a checkpoint. Ends by printing the validation loss
against the unigram baseline and a few sampled continuations of fixed prompts.
"""

import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from lm.errors import ConfigError
from lm import distributed  # defines the multi-process flags; imports jax only when called
from lm.cli import parse_flags, quiet_logs, set_xla_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file, e.g. configs/default.py.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and summary.json.")
flags.mark_flags_as_required(["config", "workdir"])

PROMPTS = (
    "Fellow-Citizens of the Senate and House of Representatives:",
    "The state of the Union is",
    "Our economy",
)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}; config fields are set with --config.<field>=value.")
  quiet_logs()
  from lm import report, train  # after flag parsing: jax starts here
  distributed.initialize()
  try:
    result = train.train(_CONFIG.value, _WORKDIR.value)
  except ConfigError as e:
    sys.exit(f"Config error: {e}")
  report.print_summary(result.summary)
  if result.summary["status"] == "finished" and _CONFIG.value.train.samples:
    report.print_samples(result, PROMPTS[:_CONFIG.value.train.samples], _WORKDIR.value)


if __name__ == "__main__":
  set_xla_flags()  # process-wide, before jax starts a backend
  app.run(main, flags_parser=parse_flags)
