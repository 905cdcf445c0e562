"""Keep freed host memory in the process, so XLA:CPU stops paying page faults every step.

Why: XLA:CPU allocates each execution's temporary buffer (every activation of a training
step: 1,248 MB at the benchmark shape of experiments/bench/train_step.py) with malloc, and
frees it when the execution ends. glibc serves an allocation that large with mmap (its mmap
threshold cannot exceed 32 MB) and returns it with munmap, so each step the kernel maps and
zeroes the whole buffer again: 305,000 minor page faults and about 0.5 CPU-seconds of system
time a step. On the 2-core Xeon of 2026-12-03 the GPT-2-like step went from 2,150-2,340 ms
to 1,926-1,993, the Llama-like from about 2,490 to 2,105-2,271, with no page fault in a
steady step (experiments/results/cpu_benchmarks/PROFILE.md, "2026-12-03, Xeon").

What: three glibc malloc settings (mallopt), as the MALLOC_* environment variables would set
them at start-up:
  M_ARENA_MAX = 1         one arena for every thread. XLA allocates the buffer on one of its
                          own threads, and a thread's arena grows in heaps of at most 64 MB,
                          so there the request would go to mmap whatever the next setting.
  M_MMAP_MAX = 0          no mmap: large requests come from the heap, whose freed memory
                          malloc hands out again.
  M_TRIM_THRESHOLD = -1   never give the heap's free top back to the kernel.
The cost: the process keeps its peak memory (its resident size at the benchmark went from
2.4 GB to 3.9 GB: freed buffers stay mapped, and two temporaries can sit side by side), and
all threads share one malloc lock (the step allocates a few large buffers, not many small).

When: `keep_freed_memory()`, which lm.cli.set_process_defaults calls for every entry point
before jax starts a backend (an arena setting only reaches threads not yet started). Only
under glibc, and only where jax will compute on the CPU (JAX_PLATFORMS names cpu first, or
no accelerator plugin is installed): on a GPU or TPU the activations live in device memory.
Set LM_KEEP_HOST_MEMORY=0, or any of the MALLOC_* variables or a glibc.malloc tunable
yourself, to leave malloc as it is.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os
import platform

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))
USER_MALLOC_VARIABLES = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_",
                         "MALLOC_TOP_PAD_")
# Packages through which jax finds an accelerator (besides plugins registered as jax_plugins).
ACCELERATOR_PACKAGES = ("libtpu", "jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm6_plugin", "jax_rocm7_plugin")

_applied: list[bool] = []


def accelerator_expected() -> bool:
  """Whether jax will likely start a GPU or TPU backend: JAX_PLATFORMS names one first, or,
  with JAX_PLATFORMS unset, an accelerator plugin is installed."""
  platforms = os.environ.get("JAX_PLATFORMS", "").strip()
  if platforms:
    return platforms.split(",")[0].strip().lower() != "cpu"
  if any(importlib.util.find_spec(name) is not None for name in ACCELERATOR_PACKAGES):
    return True
  return bool(importlib.metadata.entry_points(group="jax_plugins"))


def why_not() -> str | None:
  """Why keep_freed_memory() would leave malloc as it is here; None when it would not."""
  if os.environ.get("LM_KEEP_HOST_MEMORY") == "0":
    return "LM_KEEP_HOST_MEMORY=0"
  user = [v for v in USER_MALLOC_VARIABLES if v in os.environ]
  if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
    user.append("GLIBC_TUNABLES")
  if user:
    return f"malloc is set by the environment ({', '.join(user)})"
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return "not glibc"
  if accelerator_expected():
    return "jax will compute on an accelerator"
  return None


def keep_freed_memory() -> str | None:
  """Sets the module docstring's malloc settings, once per process; returns None when they
  are set (now or by an earlier call), else why not (why_not)."""
  if _applied:
    return None
  reason = why_not()
  if reason is not None:
    return reason
  libc = ctypes.CDLL(None)  # the process's own C library: glibc, checked above
  for parameter, value in SETTINGS:
    if libc.mallopt(parameter, value) != 1:
      return f"mallopt({parameter}, {value}) failed"
  _applied.append(True)
  return None
