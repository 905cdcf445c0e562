"""`python -m experiments.sweep`: run a sweep. The flags and the contract: experiments/sweep/runner.py."""

import sys

from absl import app

from experiments.sweep import runner
from lm.cli import parse_flags

if __name__ == "__main__":
  app.run(lambda argv: sys.exit(runner.main(argv)), flags_parser=parse_flags)
