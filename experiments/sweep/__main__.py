"""`python -m experiments.sweep`: run a sweep. The flags and the contract: experiments/sweep/main.py."""

import sys

from absl import app

from experiments.sweep import main
from lm.cli import parse_flags, set_process_defaults

if __name__ == "__main__":
  set_process_defaults()  # the dry run's probe runs jax in-process
  app.run(lambda argv: sys.exit(main.main(argv)), flags_parser=parse_flags)
