"""Train a model: python -m lm.main --config=configs/default.py --workdir=DIR [--config.x.y=...]

Resumes automatically when DIR holds a checkpoint. Ends by printing the validation loss
against the unigram baseline and a few sampled continuations of fixed prompts.

Exit status (README.md, "What a run leaves behind"), so that scripts and schedulers can tell
the outcomes apart without reading summary.json:
    0   EXIT_FINISHED     finished (or was already finished: a relaunch changes nothing)
    1   EXIT_FAILED       an error: a config or workdir refused before training (one line), or
                          a run that failed (recorded in summary.json as `failed`)
    3   EXIT_DIVERGED     diverged (summary.json has the last finite state's numbers)
    75  EXIT_PREEMPTED    preempted: SIGTERM or a first Ctrl-C saved a checkpoint at the step
                          reached; rerun the same command to resume (75 is sysexits.h's
                          EX_TEMPFAIL, "try again later")
    130 EXIT_INTERRUPTED  a second Ctrl-C stopped at once, without a checkpoint (128 + SIGINT)
"""

import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from lm.errors import ConfigError, WorkdirError
from lm import distributed  # defines the multi-process flags; imports jax only when called
from lm.cli import parse_flags, quiet_logs, set_process_defaults

EXIT_FINISHED, EXIT_FAILED, EXIT_DIVERGED, EXIT_PREEMPTED, EXIT_INTERRUPTED = 0, 1, 3, 75, 130
EXIT_STATUS = {"finished": EXIT_FINISHED, "diverged": EXIT_DIVERGED, "preempted": EXIT_PREEMPTED,
               "failed": EXIT_FAILED}

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
  except WorkdirError as e:
    sys.exit(f"Error: {e}")
  except ConfigError as e:
    sys.exit(f"Config error: {e}")
  except KeyboardInterrupt:
    print(f"\nInterrupted by a second Ctrl-C: stopped without a checkpoint at the step reached (summary.json says "
          f"failed); rerun the same command to resume from the last checkpoint in {_WORKDIR.value}.",
          file=sys.stderr, flush=True)
    sys.exit(EXIT_INTERRUPTED)
  except OSError as e:  # the environment (a full disk, a lost mount), recorded in summary.json if it could be
    sys.exit(f"Error: {e}")
  report.print_summary(result.summary)
  if result.summary["status"] == "finished" and _CONFIG.value.train.samples and not result.already_finished:
    report.print_samples(result, PROMPTS[:_CONFIG.value.train.samples], _WORKDIR.value)
  code = EXIT_STATUS[result.summary["status"]]
  if code != EXIT_FINISHED:
    _exit_together(code)


def _exit_together(code: int) -> None:
  """Every process of a multi-host run exits here together: srun --kill-on-bad-exit would kill
  the others (process 0 writing summary.json among them) as soon as one exits non-zero."""
  import jax  # local: started by train above
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # local, like jax above
    multihost_utils.sync_global_devices("lm.main exit")
  sys.exit(code)


if __name__ == "__main__":
  set_process_defaults()  # process-wide, before jax starts a backend
  app.run(main, flags_parser=parse_flags)
