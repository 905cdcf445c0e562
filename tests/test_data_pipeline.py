"""The grain pipeline: batch format, packing conservation, determinism, restore, sharding."""

import collections
import json
import math

import grain
import numpy as np
import pytest

from configs import base
from lm import data
from lm.errors import ConfigError
from lm.data import pipeline, sources
from lm.data import build_tokenizer
from lm.data.tokenizers import ByteTokenizer

B, L = 8, 64


@pytest.fixture(scope="module")
def data_cfg(tmp_path_factory):
  cfg = base.get_config().data
  cfg.data_dir = str(tmp_path_factory.getbasetemp() / "lm_data")  # shared by the data tests
  cfg.vocab_size, cfg.seq_len = 512, L
  return cfg


@pytest.fixture(scope="module")
def small_cfg(data_cfg):
  """Four speeches (~180k bytes): an epoch of bytes is ~88 batches of 8 x 256 in 2 groups."""
  cfg = data_cfg.copy_and_resolve_references()
  cfg.train_split, cfg.seq_len, cfg.shuffle_docs = "train[:4]", 256, 2
  return cfg


@pytest.fixture(scope="module")
def sp(data_cfg):
  return build_tokenizer(data_cfg)


def take(it, n):
  return [next(it) for _ in range(n)]


def assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_batch_format(data_cfg, sp):
  it = data.train_iterator(data_cfg, sp, B, seed=0, process_index=0, process_count=1)
  for batch in take(it, 3):
    assert set(batch) == {"inputs", "targets", "segment_ids", "positions", "target_bytes"}
    for k in ("inputs", "targets", "segment_ids", "positions"):
      assert batch[k].shape == (B, L) and batch[k].dtype == np.int32
    assert batch["target_bytes"].shape == (B,) and batch["target_bytes"].dtype == np.int32
    seg, pos, inp, tgt = batch["segment_ids"], batch["positions"], batch["inputs"], batch["targets"]
    for r in range(B):
      n = int((seg[r] > 0).sum())
      assert (seg[r, n:] == 0).all() and (tgt[r, n:] == sp.pad_id).all()  # padding only at the end
      assert (np.diff(seg[r, :n]) >= 0).all() and seg[r, 0] == 1       # segments 1, 2, ... in order
      starts = np.r_[True, seg[r, 1:n] != seg[r, :n - 1]]
      expected = np.arange(n) - np.maximum.accumulate(np.where(starts, np.arange(n), 0))
      np.testing.assert_array_equal(pos[r, :n], expected)               # restart at each segment
      inner = (~starts)[1:] if n > 1 else np.zeros(0, bool)
      np.testing.assert_array_equal(inp[r, 1:n][inner], tgt[r, :n - 1][inner])  # shifted by one
    valid = seg > 0
    np.testing.assert_array_equal(batch["target_bytes"], (sp.token_bytes[tgt] * valid).sum(1))


@pytest.mark.parametrize("kind", ["bytes", "sentencepiece"])
def test_packing_loses_and_invents_no_tokens(data_cfg, sp, kind):
  # One epoch of the training construction (shuffled documents, chunks shuffled in groups,
  # first-fit packing), made finite: targets == tokenized corpus + one EOS per document.
  tok = ByteTokenizer() if kind == "bytes" else sp
  source = sources.open_split(data_cfg, "eval_split")
  texts = list(sources.iter_texts(source, data_cfg.text_key))
  groups = pipeline.document_groups(grain.MapDataset.source(source).shuffle(seed=3), 8, repeat=False)
  ds = pipeline.batches(groups, pipeline._tfds_tokenize(tok, "text"), tok, L, B, shuffle_seed=5,
                        process_index=0, process_count=1, finite=True)
  got = collections.Counter()
  n_bytes = n_rows = n_valid = 0
  for batch in ds:
    valid = batch["segment_ids"] > 0
    got.update(batch["targets"][valid].tolist())
    n_bytes += int(batch["target_bytes"].sum())
    n_rows += B
    n_valid += int(valid.sum())
  want = collections.Counter()
  for text in texts:
    want.update(tok.encode(text) + [tok.eos_id])
  assert got == want
  assert n_bytes == sum(len(t.encode("utf-8")) for t in texts)
  assert 1 - n_valid / (n_rows * L) < 0.05  # padding: measured ~1% (last batch included)


def test_eval_iterator_is_one_deterministic_pass(data_cfg, sp):
  a = list(data.eval_iterator(data_cfg, sp, B, process_index=0, process_count=1))
  b = list(data.eval_iterator(data_cfg, sp, B, process_index=0, process_count=1))
  assert_same(a, b)
  texts = sources.iter_texts(sources.open_split(data_cfg, "eval_split"), "text")
  n_targets = sum(len(sp.encode(t)) + 1 for t in texts)
  assert sum(int((x["segment_ids"] > 0).sum()) for x in a) == n_targets
  assert all(x["inputs"].shape == (B, L) for x in a)  # the last batch is padded to B rows
  assert (a[-1]["segment_ids"][-1] == 0).all() or len(a) * B * L - n_targets < L


def test_same_seed_same_batches(small_cfg):
  tok = ByteTokenizer()
  make = lambda seed: data.train_iterator(small_cfg, tok, B, seed=seed, process_index=0, process_count=1)
  assert_same(take(make(1), 5), take(make(1), 5))
  assert not np.array_equal(next(make(1))["targets"], next(make(2))["targets"])


@pytest.mark.parametrize("k", [0, 1, 13, 50, 95])  # 95 is past the first epoch (~88 batches)
def test_restore_continues_exactly(small_cfg, k):
  tok = ByteTokenizer()
  make = lambda: data.train_iterator(small_cfg, tok, B, seed=7, process_index=0, process_count=1)
  reference = take(make(), k + 8)
  it = make()
  take(it, k)
  state = json.loads(json.dumps(it.get_state()))  # what orbax's JsonSave stores
  restored = make()
  restored.set_state(state)
  assert_same(take(restored, 8), reference[k:])


def test_epochs_repeat_reshuffled_in_whole_groups():
  docs = grain.MapDataset.source(list(range(20))).shuffle(seed=11)
  groups = pipeline.document_groups(docs, 8, repeat=True)  # 8 + 8 + 4 documents an epoch
  epochs = [[groups[e * 3 + g] for g in range(3)] for e in range(3)]
  assert all([len(g) for g in e] == [8, 8, 4] for e in epochs)
  flat = [[d for g in e for d in g] for e in epochs]
  assert all(sorted(f) == list(range(20)) for f in flat)  # each epoch: every document once
  assert flat[0] != flat[1] != flat[2]


def test_train_iterator_runs_past_many_epochs(small_cfg):
  it = data.train_iterator(small_cfg, ByteTokenizer(), B, seed=0, process_index=0, process_count=1)
  assert len(take(it, 300)) == 300  # ~3.4 epochs of the 4-speech split


@pytest.mark.parametrize("count", [2, 4])
def test_processes_get_disjoint_rows_of_the_global_batch(small_cfg, count):
  tok = ByteTokenizer()
  whole = take(data.train_iterator(small_cfg, tok, B, seed=3, process_index=0, process_count=1), 4)
  parts = [take(data.train_iterator(small_cfg, tok, B, seed=3, process_index=p, process_count=count), 4)
           for p in range(count)]
  for step in range(4):
    for k in whole[step]:
      assert all(part[step][k].shape[0] == B // count for part in parts)
      np.testing.assert_array_equal(np.concatenate([part[step][k] for part in parts]), whole[step][k])


def test_state_moves_between_process_counts(small_cfg):
  # The state describes the global stream, so a 1-process checkpoint resumes on 2 processes.
  tok = ByteTokenizer()
  one = data.train_iterator(small_cfg, tok, B, seed=3, process_index=0, process_count=1)
  take(one, 5)
  state = one.get_state()
  expected = next(one)
  two = data.train_iterator(small_cfg, tok, B, seed=3, process_index=1, process_count=2)
  two.set_state(state)
  np.testing.assert_array_equal(next(two)["targets"], expected["targets"][B // 2:])


def test_restore_into_a_different_pipeline_fails(small_cfg):
  tok = ByteTokenizer()
  state = data.train_iterator(small_cfg, tok, B, seed=3, process_index=0, process_count=1).get_state()
  other = data.train_iterator(small_cfg, tok, 2 * B, seed=3, process_index=0, process_count=1)
  with pytest.raises(ConfigError, match="same data config, seed and batch size"):
    other.set_state(state)


def test_batch_must_divide_over_processes(small_cfg):
  with pytest.raises(ConfigError, match="does not divide over 3 processes"):
    data.train_iterator(small_cfg, ByteTokenizer(), B, seed=0, process_index=0, process_count=3)


def test_batches_mix_many_speeches(data_cfg):
  # Default group of 64 speeches, seq_len 256: a batch of 16 rows should hold ~14 speeches.
  cfg = data_cfg.copy_and_resolve_references()
  cfg.seq_len = 256
  tok = ByteTokenizer()
  texts = list(sources.iter_texts(sources.open_split(cfg), "text"))
  it = data.train_iterator(cfg, tok, 16, seed=0, process_index=0, process_count=1)
  for batch in take(it, 2):
    speeches = set()
    for r in range(16):
      first = batch["targets"][r][batch["segment_ids"][r] == 1][:-1]
      snippet = tok.decode(first[:80])
      speeches.add(next(i for i, t in enumerate(texts) if snippet in t))
    assert len(speeches) >= 12


def test_unigram_baseline_matches_direct_count(data_cfg, sp):
  cfg = data_cfg.copy_and_resolve_references()
  cfg.train_split, cfg.eval_split = "train[:3]", "validation[:2]"
  got = data.unigram_baseline(cfg, sp)
  texts = lambda split: list(sources.iter_texts(sources.open_split(cfg, split), "text"))
  train = collections.Counter(i for t in texts("train_split") for i in sp.encode(t) + [sp.eos_id])
  evals = [i for t in texts("eval_split") for i in sp.encode(t) + [sp.eos_id]]
  n, v = sum(train.values()), sp.vocab_size
  nats = -sum(math.log((train[i] + 1) / (n + v)) for i in evals)
  n_bytes = sum(len(t.encode()) for t in texts("eval_split"))
  assert got["nats_per_token"] == pytest.approx(nats / len(evals), rel=1e-9)
  assert got["bits_per_byte"] == pytest.approx(nats / math.log(2) / n_bytes, rel=1e-9)
  assert got["eval_tokens"] == len(evals) and got["eval_bytes"] == n_bytes
  assert data.unigram_baseline(cfg, sp) == got  # the cached copy


def test_process_defaults_come_from_jax(small_cfg):
  import jax
  it = data.train_iterator(small_cfg, ByteTokenizer(), B, seed=0)
  assert next(it)["inputs"].shape == (B // jax.process_count(), small_cfg.seq_len)
