"""The grain pipeline: documents -> tokens -> chunks -> shuffle -> packed rows -> batches.

    docs     MapDataset over a TFDS array_record source, reshuffled every epoch
    groups   data.shuffle_docs documents at a time (64) within an epoch, epochs repeated;
             tokenized in grain's reader threads
    chunks   each document cut into aligned (inputs, targets) pieces of <= seq_len:
             inputs [BOS] t1 .. tn, targets t1 .. tn [EOS]; a group's chunks are shuffled
             (the start is the tokenizer's: tokenizer.start_ids, BOS for lm's own; with none,
             as for GPT-2's, inputs t1 .. tn, targets t2 .. tn [EOS])
    pack     first-fit into rows of seq_len: segment_ids 1, 2, ... (0 = padding),
             positions restart at 0 at each chunk
    batch    the global batch; this process keeps rows [p*b, (p+1)*b), b = batch // count

Why chunk before shuffling: the default corpus is 233 speeches of ~10k tokens, so packing
whole shuffled speeches would fill a batch of 16 rows with consecutive pieces of one or two
speeches. Chunks shuffled within a group of 64 speeches put ~14 speeches in a batch of 16
(64 * (1 - (63/64)**16) = 14.3), whatever the tokenizer or seq_len. A chunk after the first
starts with the token before it as input, so each target keeps its true previous token;
positions restart, as for any packed segment. The group is the unit of restore: a restored
iterator re-tokenizes one group (~0.5 s on sotu) and skips what was already emitted.

The global batch does not depend on the process count: every process runs the same global
stream (tokenizing is ~100x faster than training, see experiments/bench_data.py) and keeps
its own rows, so a 2-process run sees exactly the batches of a 1-process run, and the
iterator state is the same JSON on every process (orbax saves it once).
"""

from __future__ import annotations

import json
from typing import Any

import grain
import numpy as np

from lm import sharding
from lm.errors import ConfigError
from lm.data import sources
from lm.data.tokenizers import Tokenizer

EVAL_SEED = 0  # fixed, so eval batches are the same across runs with different train seeds
_READ = grain.ReadOptions(num_threads=2, prefetch_buffer_size=2)  # groups tokenized ahead


class Document:
  """doc -> its whole token sequence: the tokenizer's start, the text's ids, EOS.

  Why lm follows the tokenizer's start (tokenizer.start_ids) for training text too: that is
  what Hugging Face training does (`tokenizer(text)` adds the tokenizer's own specials: BOS
  for Llama, none for GPT-2), and what lm gives the model at generation, so a model sees the
  same start in both. Every document ends with EOS (HF's run_clm adds none; lm keeps it, so a
  model learns where a text ends)."""

  def __init__(self, tokenize, tokenizer: Tokenizer):
    self.tokenize, self.start, self.eos = tokenize, tuple(tokenizer.start_ids), tokenizer.eos_id

  def __call__(self, doc) -> np.ndarray:
    ids = self.tokenize(doc)
    seq = np.empty(len(self.start) + len(ids) + 1, np.int32)
    seq[:len(self.start)], seq[len(self.start):-1], seq[-1] = self.start, ids, self.eos  # [BOS] t1 ... tn [EOS]
    return seq


class _Chunk:
  """A group of documents -> their aligned (inputs, targets) pieces of at most seq_len."""

  def __init__(self, sequence, seq_len: int):
    self.sequence, self.seq_len = sequence, seq_len

  def chunks(self, doc) -> list[dict]:
    seq, L = self.sequence(doc), self.seq_len
    inputs, targets = seq[:-1], seq[1:]
    return [{"inputs": inputs[s:s + L], "targets": targets[s:s + L]} for s in range(0, len(inputs), L)]

  def __call__(self, group: list) -> list[dict]:
    return [c for doc in group for c in self.chunks(doc)]

  def shuffled(self, group: list, rng: np.random.Generator) -> list[dict]:
    chunks = self(group)
    return [chunks[i] for i in rng.permutation(len(chunks))]


class _Flatten(grain.experimental.FlatMapTransform):
  max_fan_out = 1 << 30  # only bounds MapDataset flat maps; this one runs on an IterDataset

  def flat_map(self, chunks: list[dict]) -> list[dict]:
    return chunks


class _Finalize(grain.transforms.Map):
  """Packed global batch -> this process's rows, named as training expects."""

  def __init__(self, token_bytes: np.ndarray, global_batch: int, first_row: int, rows: int):
    self.token_bytes, self.global_batch = token_bytes, global_batch
    self.first_row, self.rows = first_row, rows

  def map(self, packed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    take = slice(self.first_row, self.first_row + self.rows)
    out = {"inputs": packed["inputs"][take], "targets": packed["targets"][take],
           "segment_ids": packed["targets_segment_ids"][take],
           "positions": packed["targets_positions"][take]}
    out = {k: v.astype(np.int32) for k, v in out.items()}
    n = out["inputs"].shape[0]
    if n < self.rows:  # the last batch of a finite split: pad with segment-0 rows
      out = {k: np.pad(v, ((0, self.rows - n), (0, 0))) for k, v in out.items()}
    valid = out["segment_ids"] > 0
    out["target_bytes"] = np.where(valid, self.token_bytes[out["targets"]], 0).sum(1).astype(np.int32)
    return out


class DataIterator:
  """A grain iterator whose JSON state also records what the pipeline was built from, so a
  restore into a differently configured pipeline fails loudly instead of silently."""

  def __init__(self, dataset: grain.IterDataset, signature: dict):
    self._it = iter(dataset)
    self.signature = json.loads(json.dumps(signature))

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._it)

  def get_state(self) -> dict[str, Any]:
    return {"signature": self.signature, "grain": self._it.get_state()}

  def set_state(self, state: dict[str, Any]) -> None:
    if state.get("signature") != self.signature:
      raise ConfigError(f"The saved data iterator was built from {state.get('signature')}, this one "
                        f"from {self.signature}; restore with the same data config, seed and batch size.")
    self._it.set_state(state["grain"])


def process_rows(global_batch: int, process_index, process_count) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # only when asked: the data code itself needs no devices
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  sharding.check_batch(global_batch, processes=process_count)
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is not in [0, {process_count}).")
  rows = global_batch // process_count
  return process_index * rows, rows


def seeds(seed: int, n: int) -> list[int]:
  """Independent 32-bit seeds for each random stage (grain wants 0 <= seed < 2**32)."""
  return [int(s) for s in np.random.SeedSequence(seed).generate_state(n)]


def document_groups(docs: grain.MapDataset, group_docs: int, repeat: bool) -> grain.MapDataset:
  """Lists of `group_docs` documents, one epoch of `docs` at a time (the last group of an
  epoch may be smaller, so no group holds a document twice). With repeat, epochs go on
  forever and a shuffled `docs` is reshuffled each epoch (grain seeds it with seed + epoch)."""
  groups = docs.batch(max(1, group_docs), batch_fn=list)
  return groups.repeat() if repeat else groups


def batches(groups: grain.MapDataset, tokenize, tokenizer: Tokenizer, seq_len: int,
            global_batch: int, *, shuffle_seed: int | None, process_index=None,
            process_count=None, finite: bool = False, sequence=None) -> grain.IterDataset:
  """Packed, batched, process-sharded rows from a MapDataset of document groups.

  `tokenize(doc) -> np.int32 ids`; each document becomes Document(tokenize, tokenizer)(doc)
  (start, text, EOS), or `sequence(doc)`, a whole token sequence, when given. With
  shuffle_seed, the chunks of each group and the packed rows are shuffled; without,
  everything stays in document order.
  """
  first_row, rows = process_rows(global_batch, process_index, process_count)
  chunk = _Chunk(sequence or Document(tokenize, tokenizer), seq_len)
  chunk_seed, pack_seed = seeds(shuffle_seed or 0, 2)
  if shuffle_seed is None:
    groups = groups.map(chunk)
  else:
    groups = groups.random_map(chunk.shuffled, seed=chunk_seed)  # rng from (seed, group index)
  it = grain.experimental.FlatMapIterDataset(groups.to_iter_dataset(_READ), _Flatten())
  # First fit over >= 64 open rows: a chunk goes into the first row with room; when one fits
  # nowhere, all rows are emitted. Mostly-full chunks make this ~1% padding on sotu.
  it = grain.experimental.FirstFitPackIterDataset(
      it, length_struct={"inputs": seq_len, "targets": seq_len},
      num_packing_bins=max(global_batch, 64), seed=pack_seed, shuffle_bins=shuffle_seed is not None)
  it = it.batch(global_batch, drop_remainder=not finite)
  return it.map(_Finalize(tokenizer.token_bytes, global_batch, first_row, rows))


def _tfds_tokenize(tokenizer: Tokenizer, key: str):
  def tokenize(example) -> np.ndarray:
    return np.asarray(tokenizer.encode(sources.decode_text(example[key])), np.int32)
  return tokenize


def _signature(kind, data_cfg, tokenizer, global_batch, seed=None) -> dict:
  return dict(kind=kind, dataset=data_cfg.dataset, split=data_cfg[f"{kind}_split"],
              text_key=data_cfg.text_key, tokenizer=tokenizer.kind, vocab_size=tokenizer.vocab_size,
              seq_len=int(data_cfg.seq_len), global_batch=int(global_batch), seed=seed,
              group_docs=_group_docs(data_cfg))


def _group_docs(data_cfg) -> int:
  return int(data_cfg.shuffle_docs)


def train_iterator(data_cfg, tokenizer: Tokenizer, global_batch_size: int, seed: int,
                   process_index: int | None = None, process_count: int | None = None) -> DataIterator:
  """Infinite training batches of this process's rows; epochs reshuffled with the seed.

  Each batch: inputs, targets, segment_ids, positions int32 [b, seq_len] and target_bytes
  int32 [b], b = global_batch_size // process_count. Targets count where segment_ids > 0.
  State: `get_state()` / `set_state()`, JSON, the same on every process.
  """
  source = sources.open_split(data_cfg, "train_split")
  doc_seed, chunk_seed = seeds(seed, 2)
  docs = grain.MapDataset.source(source).shuffle(seed=doc_seed)
  groups = document_groups(docs, _group_docs(data_cfg), repeat=True)
  ds = batches(groups, _tfds_tokenize(tokenizer, data_cfg.text_key), tokenizer,
               int(data_cfg.seq_len), global_batch_size, shuffle_seed=chunk_seed,
               process_index=process_index, process_count=process_count)
  return DataIterator(ds, _signature("train", data_cfg, tokenizer, global_batch_size, seed))


def eval_iterator(data_cfg, tokenizer: Tokenizer, global_batch_size: int,
                  process_index: int | None = None, process_count: int | None = None) -> DataIterator:
  """One pass over the eval split, the same batches in every run (fixed seed EVAL_SEED).

  The chunks are shuffled with a fixed seed so that the first few batches (all training
  evaluates) draw from many documents rather than the first two (sotu's 23 validation
  speeches fit in one group); the last batch is padded with segment-0 rows.
  """
  source = sources.open_split(data_cfg, "eval_split")
  groups = document_groups(grain.MapDataset.source(source), _group_docs(data_cfg), repeat=False)
  ds = batches(groups, _tfds_tokenize(tokenizer, data_cfg.text_key), tokenizer,
               int(data_cfg.seq_len), global_batch_size, shuffle_seed=EVAL_SEED,
               process_index=process_index, process_count=process_count, finite=True)
  return DataIterator(ds, _signature("eval", data_cfg, tokenizer, global_batch_size))
