"""Test session setup: 8 simulated CPU devices, so multi-device code runs in CI, and the
entry points' XLA flags (lm.cli.set_xla_flags), so in-process tests compute as `python -m
lm.main` does (the golden losses in tests/test_train.py were recorded with them)."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from lm.cli import set_xla_flags  # noqa: E402

set_xla_flags()  # before the first test starts jax's CPU backend

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
