"""Medium-row products (lm/cpu_gemm_rows.py): the rule that picks the limit from measured
times, the override, the routing it gives lm/ops.py, and a fresh host's one measurement."""

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import cpu_gemm, cpu_gemm_rows, ops

pytestmark = pytest.mark.skipif(not cpu_gemm.available(), reason="lm/cpu_gemm.py's kernel is unavailable here")


@pytest.fixture
def limit(monkeypatch):
  """Sets LM_CPU_GEMM_XLA_ROWS for one test (the limit is read once per process, so cleared)."""
  def set_limit(value: str):
    monkeypatch.setenv(cpu_gemm_rows.ENV, value)
    cpu_gemm_rows.xla_rows_limit.cache_clear()
  yield set_limit
  monkeypatch.undo()
  cpu_gemm_rows.xla_rows_limit.cache_clear()


def _times(*ratios):
  return {str(m): {"xla": r, "blas": 1.0} for m, r in zip(cpu_gemm_rows.ROWS, ratios)}  # JSON's keys are strings


def test_the_limit_is_the_most_rows_at_which_xla_won_there_and_at_every_fewer():
  assert cpu_gemm_rows.WIN == 0.95
  assert cpu_gemm_rows.limit_from(_times(0.8, 0.9, 0.96, 0.5)) == 64  # 128 lost: 256 does not count
  assert cpu_gemm_rows.limit_from(_times(0.8, 0.9, 0.95, 0.94)) == 256
  assert cpu_gemm_rows.limit_from(_times(1.2, 0.5, 0.5, 0.5)) == 0
  assert cpu_gemm_rows.limit_from({}) == 0


def test_lm_cpu_gemm_xla_rows_sets_the_limit_and_a_bad_value_says_what_to_give(limit):
  limit("128")
  assert cpu_gemm_rows.xla_rows_limit() == 128
  assert [cpu_gemm_rows.xla_computes(m) for m in (cpu_gemm.FEW_ROWS, cpu_gemm.FEW_ROWS + 1, 128, 129)] == [
      False, True, True, False]
  limit("lots")
  with pytest.raises(ValueError, match=r"LM_CPU_GEMM_XLA_ROWS='lots': give a row count \(0 or more\)"):
    cpu_gemm_rows.xla_rows_limit()


def _kernel_calls(rows: int) -> int:
  x, w = jnp.ones((rows, 8)), jnp.ones((8, 24))
  text = jax.jit(lambda x, w: ops.dense("TC,CN->TN", x, w, matmul="blas")).lower(x, w).as_text()
  return text.count(f"custom_call @{cpu_gemm.TARGET}(")


def test_products_over_the_limit_go_to_the_blas_and_up_to_it_to_xla_with_the_same_values(limit):
  limit("64")
  assert [_kernel_calls(m) for m in (1, cpu_gemm.FEW_ROWS, cpu_gemm.FEW_ROWS + 1, 64, 65, 4096)] == [1, 1, 0, 0, 1, 1]
  rng = np.random.default_rng(0)
  x, w = rng.standard_normal((48, 40), np.float32), rng.standard_normal((40, 24), np.float32)
  ours = np.asarray(ops.dense("TC,CN->TN", jnp.asarray(x), jnp.asarray(w), matmul="blas"))
  np.testing.assert_allclose(ours, x.astype(np.float64) @ w, rtol=0, atol=1e-4)
  limit("0")
  assert [_kernel_calls(m) for m in (cpu_gemm.FEW_ROWS + 1, 64)] == [1, 1]


def test_a_fresh_host_measures_once_keeps_the_times_and_later_processes_read_them(tmp_path):
  """A new cache directory holding only the built kernel: the first process measures (~10 s)
  and writes the JSON beside the kernel; its limit is the rule's on its own times; the next
  process reads it without measuring."""
  (tmp_path / "lm").mkdir()
  shutil.copy(cpu_gemm.library_path(), tmp_path / "lm")  # the key does not depend on the directory
  env = {k: v for k, v in os.environ.items() if k != cpu_gemm_rows.ENV}
  env["XDG_CACHE_HOME"] = str(tmp_path)
  script = "from lm import cpu_gemm_rows; print(cpu_gemm_rows.xla_rows_limit())"
  first = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
  assert first.returncode == 0, first.stderr
  assert "measuring once which product is faster for medium row counts here" in first.stderr
  [written] = list((tmp_path / "lm").glob("cpu_gemm-*.so.rows.json"))
  entry = json.loads(written.read_text())
  assert sorted(int(m) for m in entry["times_ms"]) == list(cpu_gemm_rows.ROWS)
  assert all(t["xla"] > 0 and t["blas"] > 0 for t in entry["times_ms"].values())
  assert entry["limit"] == cpu_gemm_rows.limit_from(entry["times_ms"]) == int(first.stdout.split()[-1])
  second = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
  assert second.returncode == 0 and "measuring" not in second.stderr, second.stderr
  assert int(second.stdout.split()[-1]) == entry["limit"]
