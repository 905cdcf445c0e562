"""lm/inference_cost.py: the throughput arithmetic, the bytes a decode step reads (cache and
weights, in closed form), and the interleaved order of the timed runs."""

import pytest

from lm import inference_cost
from tests.helpers import VOCAB, tiny_model_config


def test_costs_from_the_times_to_generate_one_and_n_tokens():
  # t(N) - t(1) = 0.63 s over 63 steps: 10 ms a step; 2 sequences x 64 prompt tokens in 0.01 s
  c = inference_cost.costs(t1=0.01, tn=0.64, batch=2, prompt_len=64, new_tokens=64)
  assert c == pytest.approx({"prefill_tok_s": 12800.0, "decode_tok_s": 200.0, "ms_per_token": 10.0})


@pytest.mark.parametrize("tie", [True, False])
def test_a_decode_step_reads_the_weights_once_and_the_whole_cache(tie):
  cfg = tiny_model_config(tie_embeddings=tie)  # 2 layers, 2 kv heads of 8, float32
  decoder = inference_cost.TimedDecoder(cfg)
  assert decoder.weight_bytes == 4 * decoder.n_params
  assert decoder.table_bytes == 4 * VOCAB * 32
  for batch, slots in ((1, 31), (3, 127)):
    # per layer: keys and values B x 2 x 8 x S float32, segment ids B x S int32, one int32 index
    per_layer = 2 * batch * 2 * 8 * slots * 4 + batch * slots * 4 + 4
    kv, per_step = inference_cost.step_bytes(decoder, batch, slots)
    assert kv == decoder.cache_bytes(batch, slots) == 2 * per_layer
    assert per_step == decoder.weight_bytes - (0 if tie else decoder.table_bytes) + kv


class FakeSide:
  def __init__(self, name, calls):
    self.name, self.calls = name, calls

  def run(self, prompts, new_tokens):
    self.calls.append((self.name, new_tokens))
    return float(len(self.calls))


def test_timings_warm_up_every_side_then_interleave_the_repeats():
  calls = []
  sides = {"a": FakeSide("a", calls), "b": FakeSide("b", calls)}
  runs = inference_cost.timings(sides, prompts=[[1, 2]], new_tokens=8, repeats=2)
  assert calls == [("a", 1), ("a", 8), ("b", 1), ("b", 8),
                   ("a", 1), ("a", 8), ("b", 1), ("b", 8), ("a", 1), ("a", 8), ("b", 1), ("b", 8)]
  assert runs == {"a": {1: [5.0, 9.0], 8: [6.0, 10.0]}, "b": {1: [7.0, 11.0], 8: [8.0, 12.0]}}
