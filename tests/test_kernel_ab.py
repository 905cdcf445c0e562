"""experiments/bench/kernel_ab.py: each side's decoding runs its own build's product, and lm is
left as it was. Here both sides are this checkout's library, so the greedy tokens must agree."""

import collections
import re

import jax
import pytest

from experiments.bench import inference
from experiments.bench import kernel_ab
from lm import cpu_gemm
from lm import decode

pytestmark = pytest.mark.skipif(not cpu_gemm.available(), reason="lm/cpu_gemm.py's kernel is unavailable here")


def test_each_side_decodes_with_its_own_product_and_lm_is_restored(monkeypatch):
  monkeypatch.setitem(inference.SIZES, "tiny", dict(family="llama", n_layers=2, d_model=64, n_heads=2,
                                                    n_kv_heads=1, d_ff=128))
  traced = collections.Counter()
  ffi_call = jax.ffi.ffi_call

  def counting(target, *args, **kwargs):
    traced[target] += 1
    return ffi_call(target, *args, **kwargs)
  monkeypatch.setattr(jax.ffi, "ffi_call", counting)
  installed = (cpu_gemm.TARGET, decode.start_jit, decode.advance_jit)
  arms = kernel_ab.sides(cpu_gemm.library_path())
  row = kernel_ab.compare("tiny", arms, batch=2, new_tokens=3, rounds=2)
  assert traced[cpu_gemm.TARGET] > 0 and traced[kernel_ab.OTHER_TARGET] > 0, traced
  for name, target in (("this", cpu_gemm.TARGET), ("other", kernel_ab.OTHER_TARGET)):
    texts = [c.as_text() for c in arms[name][2].compiled.values()]  # the decode loop, compiled
    calls = [t for text in texts for t in re.findall(r'custom_call_target="(lm_cpu_gemm\w*)"', text)]
    assert texts and calls and set(calls) == {target}, (name, set(calls))
  assert row["same"] == 1.0 and len(row["ratios"]) == 2  # (3 tokens' times are noise: not asserted)
  assert (cpu_gemm.TARGET, decode.start_jit, decode.advance_jit) == installed


def test_a_missing_library_is_named_before_anything_runs():
  with pytest.raises(SystemExit, match="--other=/no/such.so is not a file"):
    kernel_ab.sides("/no/such.so")
