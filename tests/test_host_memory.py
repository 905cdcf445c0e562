"""lm/host_memory.py: where jax computes on the CPU, a freed large buffer is reused without
page faults; elsewhere, or when the user chose malloc's settings, nothing changes.

The fault counts run in fresh interpreters: malloc's settings are process-wide, and an arena
limit reaches only threads started after it."""

import json
import os
import platform
import subprocess
import sys

import pytest

from lm import host_memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAULTS_OF_A_SECOND_BUFFER = """
import ctypes, json, resource, sys, threading
from lm import host_memory
reason = host_memory.keep_freed_memory() if sys.argv[1] == "keep" else "not asked"
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
def touch():  # as XLA allocates a step's temporaries: malloc 256 MB on another thread, write it, free it
  def work():  # (malloc, not numpy: numpy asks for huge pages, which fault 512 times less often)
    buffer = libc.malloc(256 << 20); ctypes.memset(buffer, 1, 256 << 20); libc.free(buffer)
  t = threading.Thread(target=work); t.start(); t.join()
touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch()
print(json.dumps({"reason": reason, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""
PAGES = (256 << 20) // 4096  # 65,536 pages of 4 KiB in the buffer


def _second_buffer(mode: str, **env) -> dict:
  clean = {k: v for k, v in os.environ.items()
           if k not in host_memory.USER_MALLOC_VARIABLES + ("GLIBC_TUNABLES", "LM_KEEP_HOST_MEMORY")}
  out = subprocess.run([sys.executable, "-c", FAULTS_OF_A_SECOND_BUFFER, mode], cwd=ROOT, capture_output=True,
                       text=True, timeout=120, env={**clean, "JAX_PLATFORMS": "cpu", **env})
  assert out.returncode == 0, out.stderr[-2000:]
  return json.loads(out.stdout.splitlines()[-1])


glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")


@glibc_only
def test_without_the_settings_a_second_large_buffer_faults_in_every_page():
  assert _second_buffer("default")["faults"] >= PAGES * 0.9


@glibc_only
def test_with_the_settings_a_second_large_buffer_reuses_the_first_pages():
  result = _second_buffer("keep")
  assert result["reason"] is None
  assert result["faults"] < PAGES * 0.05


@glibc_only
def test_the_opt_out_and_a_users_malloc_variables_leave_malloc_alone():
  assert _second_buffer("keep", LM_KEEP_HOST_MEMORY="0")["reason"] == "LM_KEEP_HOST_MEMORY=0"
  result = _second_buffer("keep", MALLOC_ARENA_MAX="4")
  assert result["reason"] == "malloc is set by the environment (MALLOC_ARENA_MAX)"
  assert result["faults"] >= PAGES * 0.9


@pytest.mark.parametrize("platforms, expected", [("cpu", False), ("cpu,cuda", False), ("cuda", True), ("tpu,cpu", True)])
def test_jax_platforms_decides_whether_an_accelerator_is_expected(monkeypatch, platforms, expected):
  monkeypatch.setenv("JAX_PLATFORMS", platforms)
  assert host_memory.accelerator_expected() is expected


def test_on_an_accelerator_malloc_is_left_alone(monkeypatch):
  for name in host_memory.USER_MALLOC_VARIABLES + ("GLIBC_TUNABLES", "LM_KEEP_HOST_MEMORY"):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv("JAX_PLATFORMS", "tpu")
  assert host_memory.why_not() in ("jax will compute on an accelerator", "not glibc")
