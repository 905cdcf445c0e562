"""Deprecated: the config schema and its checks are lm/schema.py, ConfigError is lm/errors.py,
the mesh shape is lm/sharding.py. This module re-exports them for old imports."""

import warnings

from lm.errors import ConfigError  # noqa: F401
from lm.schema import validate  # noqa: F401
from lm.sharding import mesh_shape  # noqa: F401

warnings.warn("lm.config is deprecated: use lm.schema (validate, defaults), lm.errors (ConfigError) and "
              "lm.sharding (mesh_shape).", DeprecationWarning, stacklevel=2)


def validate_data(d) -> None:
  from lm.data import validate as _validate  # local: the old name, kept working
  _validate(d)
