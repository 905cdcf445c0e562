"""The errors lm raises for bad input, as one-line messages that name the problem and the fix.

Entry points catch these and print the message without a traceback (lm/cli.py).
"""


class ConfigError(ValueError):
  """A config that cannot run. The message names the field and the fix."""


class HFError(ConfigError):
  """A Hugging Face checkpoint or config lm cannot read or write; the message says why."""
