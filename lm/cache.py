"""Where lm keeps what it prepares or measures once per machine: ~/.cache/lm, or
$XDG_CACHE_HOME/lm (the prepared datasets, the held-out set, measured matmul peaks, the
compiled OpenBLAS kernel). Read at each call, so a changed environment is honoured."""

from __future__ import annotations

import os


def cache_root() -> str:
  """~/.cache/lm, or $XDG_CACHE_HOME/lm."""
  cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(cache, "lm")
