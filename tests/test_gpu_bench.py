"""The GPU benchmarks' parts that run anywhere: the packed-sequence check (and that it can fail),
the training table's workers and its table, the decode benchmark's bf16 option. On CPU, tiny."""

import argparse
import json

import jax
import flax.linen as nn
import pytest

from experiments.bench import gpu_train
from experiments.bench import inference
from experiments.bench import packed_attention
from lm import attention
from lm import flops
from lm.model import Transformer

SMALL_DOCS = (16, 16, 16)  # one length: the alone-forward and gradient compile once


def test_packed_check_passes_and_fails_when_segment_ids_are_ignored(monkeypatch):
  ok = packed_attention.check("xla", "float32", docs=SMALL_DOCS)
  assert ok["passed"], ok
  assert ok["packed"] <= 1e-4 and ok["grad"] <= 1e-4
  # MaxText's bug (segment ids dropped by the kernel), planted: the check must catch it.
  mask = attention.causal_segment_mask
  causal_only = lambda segment_ids_BL: mask(jax.numpy.ones_like(segment_ids_BL))  # noqa: E731
  with monkeypatch.context() as m:
    m.setattr(attention, "causal_segment_mask", causal_only)
    leaky = packed_attention.check("xla", "float32", docs=SMALL_DOCS)
  assert not leaky["passed"]
  assert leaky["packed"] > 100 * ok["packed"], (leaky, ok)


def tiny_args(**kw):
  args = gpu_train.parse(["--sizes=tiny", "--attentions=xla", "--remats=none", "--peers=eager", "--steps=2",
                          "--warmup=1", "--batch=8", "--seq_len=32", "--dtype=float32"])
  return argparse.Namespace(**{**vars(args), **kw})


def records(out: str) -> list[dict]:
  return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_training_table_rows_train_and_compare_like_for_like(capsys, tmp_path):
  args = tiny_args(remats=["dots"], attentions=["xla", "cudnn"])
  gpu_train.lm_worker("tiny", args)
  gpu_train.torch_worker("tiny", args)
  got = records(capsys.readouterr().out)
  rows = [r for r in got if "impl" in r]
  # lm's rows in order of estimated memory (cuDNN's keeps no S x S term); one that cannot be
  # built (cuDNN on a CPU) says why, and the rest run
  assert [r["impl"] for r in rows] == ["lm cudnn attention, remat dots", "lm xla attention, remat dots",
                                       "transformers eager"]
  assert "cuDNN" in rows[0]["error"] and "error" not in rows[1]
  rows = rows[1:]
  assert all(r["loss_last"] < r["loss_first"] for r in rows), rows
  assert len({r["params"] for r in rows}) == 1  # the same architecture on both sides
  lm_rows = [r for r in rows if r["side"] == "lm"]
  assert lm_rows[0]["flops_recomputed"] > 0 == rows[1]["flops_recomputed"]
  assert lm_rows[0]["footprint_bytes"] > 0
  path = tmp_path / "train.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in got))
  assert gpu_train.main([f"--from_json={path}"]) is None
  table = capsys.readouterr().out
  assert "transformers eager" in table and "tiny: fastest lm row" in table
  lm_tps = args.batch * args.seq_len / min(r["step_s"] for r in lm_rows)
  want = rows[-1]["step_s"] * lm_tps / (args.batch * args.seq_len)
  assert f"{want:.2f}x eager" in table


def test_training_table_names_unknown_sizes():
  with pytest.raises(SystemExit):
    gpu_train.parse(["--sizes=7b"])


def test_decode_benchmark_bf16_halves_the_weights_it_reads():
  def weights(dtype):  # shapes only: nothing is initialised
    model = Transformer(inference.model_config("llama-1b", dtype))
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jax.numpy.zeros((1, 8), jax.numpy.int32)))
    return jax.tree.leaves(nn.meta.unbox(shapes["params"]))
  f32, bf16 = weights("float32"), weights("bfloat16")
  assert sum(x.size for x in f32) == sum(x.size for x in bf16) > 0.95e9
  assert {x.dtype for x in bf16} == {jax.numpy.dtype("bfloat16")}
  assert sum(x.size * x.dtype.itemsize for x in f32) == 2 * sum(x.size * x.dtype.itemsize for x in bf16)


def test_spec_memory_bandwidth():
  assert flops.spec_memory_bandwidth("NVIDIA H200") == 4.8e12
  assert flops.spec_memory_bandwidth("NVIDIA H100 80GB HBM3") == 3.35e12
  assert flops.spec_memory_bandwidth("cpu") is None
