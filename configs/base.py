"""Shared defaults. Experiment files start from `get_config()` and change what differs.

Every field, its default and a comment on it live in the library, so that lm itself, this
file and a run's saved config.json agree: lm/schema.py (data, train, optim, mesh, logging)
and lm/model.py:ModelConfig (the model section). `--config.<section>.<field>=...` sets any.
"""

from lm import schema


def get_config(arg=None):
  del arg
  return schema.defaults()
