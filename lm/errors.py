"""The errors lm raises for bad input, as one-line messages that name the problem and the fix.

Entry points catch these and print the message without a traceback (lm/cli.py).
"""


class ConfigError(ValueError):
  """A config that cannot run. The message names the field and the fix."""


class HFError(ConfigError):
  """A Hugging Face checkpoint or config lm cannot read or write; the message says why."""


class WorkdirError(ConfigError):
  """A workdir lm will not use as asked: another process writes it, it holds a run this config
  does not match, or none of its checkpoints can be read. Raised before anything in it changes;
  the message says what to do instead."""
