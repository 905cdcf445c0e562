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
  big = cpu_gemm_rows.MIN_WEIGHT
  assert [cpu_gemm_rows.xla_computes(m, big) for m in (cpu_gemm.FEW_ROWS, cpu_gemm.FEW_ROWS + 1, 128, 129)] == [
      False, True, True, False]
  assert not cpu_gemm_rows.xla_computes(64, big - 1)
  limit("lots")
  with pytest.raises(ValueError, match=r"LM_CPU_GEMM_XLA_ROWS='lots': give a row count \(0 or more\)"):
    cpu_gemm_rows.xla_rows_limit()


def _kernel_calls(fn, rows: int, columns: int = 1024) -> int:
  x, w = jnp.ones((rows, 1024)), jnp.ones((1024, columns))  # w: MIN_WEIGHT elements at 1,024 columns
  traced = jax.jit(lambda x, w: fn(x, w))  # a new function: jax would reuse a trace made under another limit
  return traced.lower(x, w).as_text().count(f"custom_call @{cpu_gemm.TARGET}(")


def _forward(x, w):
  return ops.dense("TC,CN->TN", x, w, matmul="blas")


def test_a_prefills_products_up_to_the_limit_are_xlas_and_the_rest_the_kernels(limit):
  """The forward only, over a weight of MIN_WEIGHT or more: not the backward, not small weights."""
  assert 1024 * 1024 == cpu_gemm_rows.MIN_WEIGHT
  limit("64")
  assert [_kernel_calls(_forward, m) for m in (1, cpu_gemm.FEW_ROWS, cpu_gemm.FEW_ROWS + 1, 64, 65, 4096)] == [
      1, 1, 0, 0, 1, 1]
  assert _kernel_calls(_forward, 64, columns=1023) == 1  # a smaller weight: the kernel's
  grad = jax.grad(lambda x, w: jnp.sum(jnp.sin(_forward(x, w))), (0, 1))
  assert _kernel_calls(grad, 64) == 2  # the forward XLA's; dx and dw the kernel's
  rng = np.random.default_rng(0)
  x, w = rng.standard_normal((48, 1024), np.float32), rng.standard_normal((1024, 1024), np.float32)
  np.testing.assert_allclose(np.asarray(_forward(jnp.asarray(x), jnp.asarray(w))), x.astype(np.float64) @ w,
                             rtol=0, atol=1e-3)
  limit("0")
  assert [_kernel_calls(_forward, m) for m in (cpu_gemm.FEW_ROWS + 1, 64)] == [1, 1]


def _entry(**changes):
  entry = {"limit": 64, "rows": list(cpu_gemm_rows.ROWS), "win": cpu_gemm_rows.WIN, "times_ms": {}}
  return json.dumps({**entry, **changes})


@pytest.mark.parametrize("text", ["null", "[1]", "{", _entry(limit=None), _entry(limit=-5), _entry(limit="64"),
                                  _entry(rows=[32, 64]), _entry(win=0.9), '{"limit": 64}'])
def test_a_cached_file_that_is_broken_or_chosen_by_other_rules_is_measured_again(tmp_path, text):
  path = tmp_path / "k.so.rows.json"
  path.write_text(text)
  assert cpu_gemm_rows._read(str(path)) is None
  path.write_text(_entry())
  assert cpu_gemm_rows._read(str(path)) == 64


def test_calibrate_reads_what_another_process_wrote_and_keeps_a_measurement_it_cannot_write(tmp_path, monkeypatch):
  path = str(tmp_path / "lm" / "k.so.rows.json")
  measured = {m: {"xla": 0.8, "blas": 1.0} for m in cpu_gemm_rows.ROWS}
  monkeypatch.setattr(cpu_gemm_rows, "_measure_in_subprocess", lambda: measured)
  def no_file(*args, **kwargs):
    raise OSError("Read-only file system")
  monkeypatch.setattr(cpu_gemm_rows.tempfile, "mkstemp", no_file)
  with pytest.warns(UserWarning, match=r"could not keep the measured medium-row limit .*LM_CPU_GEMM_XLA_ROWS=256"):
    assert cpu_gemm_rows.calibrate(path) == 256  # measured, used, not kept
  monkeypatch.undo()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write(_entry(limit=32))  # as a process that held the lock first would leave it
  monkeypatch.setattr(cpu_gemm_rows, "_measure_in_subprocess", lambda: pytest.fail("measured again"))
  assert cpu_gemm_rows.calibrate(path) == 32


def test_a_measurement_that_fails_warns_and_leaves_every_product_to_the_blas(tmp_path, monkeypatch, limit):
  limit("")  # unset: measure
  monkeypatch.delenv(cpu_gemm_rows.ENV)
  monkeypatch.setattr(cpu_gemm, "library_path", lambda: str(tmp_path / "k.so"))
  def broken():
    raise RuntimeError("measuring medium-row products failed (exit 1): ImportError: no jax")
  monkeypatch.setattr(cpu_gemm_rows, "_measure_in_subprocess", broken)
  with pytest.warns(UserWarning, match=r"failed \(exit 1\).*the BLAS computes every row count"):
    assert cpu_gemm_rows.xla_rows_limit() == 0


@pytest.mark.slow
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
