"""Test session setup: 8 simulated CPU devices, so multi-device code runs in CI."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
