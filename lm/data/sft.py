"""Supervised fine-tuning data: (prompt, completion) pairs -> packed rows with a loss mask.

    one pair  inputs    [BOS] p1 ... pn c1 ... cm          (n + m + 1 tokens)
              targets   p1 ... pn c1 ... cm [EOS]
              loss_mask 0  ... 0  1  ...  1   1            (the completion and its EOS)
              [BOS] is the tokenizer's start (tokenizer.start_ids): a tokenizer that adds no BOS
              (GPT-2's, SmolLM2's) gets inputs p1 ... pn c1 ... cm, as transformers gives it the
              prompt; with an empty prompt too, BOS stays, so c1 has a token to follow.
    pack      first fit of whole pairs into rows of seq_len (grain FirstFitPackIterDataset,
              as the text pipeline): a pair is never split across rows; segment ids
              1, 2, ... per pair (0 = padding), positions restart at 0 at each pair
    batch     like the text pipeline: inputs, targets, segment_ids, positions, loss_mask
              int32 [b, seq_len], target_bytes [b] (the UTF-8 bytes of the masked targets)

Truncation, when the inputs exceed seq_len: the completion is kept whole and the prompt loses
tokens from its start (its end, next to the completion, is what conditions the answer);
BOS stays first. If the completion and EOS alone are too long (m + 1 > seq_len), the prompt
is dropped and the targets are the completion's first tokens that fit (no EOS). How many
pairs were cut is logged (a warning, counted over the first 2000 pairs of the split).

Sources. JSONL: one object a line, {"prompt": str, "completion": str} (keys data.prompt_key
/ data.completion_key); data.sft_train / data.sft_eval are the files. TFDS: data.sft_dataset
names a dataset prepared as array_record (in data.data_dir) whose examples have those two
text features; data.sft_train / data.sft_eval are then its split names. The text keeps its
spaces as given: a completion that should follow "Answer:" with a space starts with one.

Train batches: pairs shuffled each epoch (seed), epochs repeated forever; the iterator
state is checkpointed like the text pipeline's. Eval batches: one pass in file order.
"""

from __future__ import annotations

import json
import os

from absl import logging
import grain
import numpy as np

from lm.errors import ConfigError
from lm.data import sources
from lm.data.pipeline import DataIterator, process_rows, seeds
from lm.data.tokenizers import Tokenizer

_READ = grain.ReadOptions(num_threads=2, prefetch_buffer_size=2)


def validate(d) -> None:
  if d.format != "sft":
    return
  for field in ("sft_train", "sft_eval"):
    if not d[field]:
      raise ConfigError(f"data.format='sft' needs data.{field}: a JSONL file of {{\"{d.prompt_key}\": ..., "
                        f"\"{d.completion_key}\": ...}} lines (or a split of data.sft_dataset).")


def read_jsonl(path: str, prompt_key: str = "prompt", completion_key: str = "completion",
               field: str = "data.sft_train") -> list[dict]:
  path = os.path.expanduser(path)
  if not os.path.isfile(path):
    raise ConfigError(f"{field}={path!r} does not exist; give a JSONL file with one "
                      f"{{\"{prompt_key}\": ..., \"{completion_key}\": ...}} object per line.")
  out = []
  with open(path, "rb") as f:
    for n, raw in enumerate(f, 1):
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise ConfigError(f"{path}, line {n}: not valid UTF-8 (byte {e.start} is {raw[e.start:e.start + 1]!r}); JSONL "
                          "is UTF-8 text: re-encode the file (e.g. iconv -f latin1 -t utf-8).") from None
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise ConfigError(f"{path}, line {n}: not valid JSON ({e.msg}).") from None
      if not isinstance(row, dict):
        raise ConfigError(f"{path}, line {n}: expected a JSON object, got {type(row).__name__}.")
      for key in (prompt_key, completion_key):
        if key not in row:
          raise ConfigError(f"{path}, line {n}: no field {key!r} (fields: {sorted(row)}); set "
                            f"data.prompt_key / data.completion_key to the names your file uses.")
        if not isinstance(row[key], str):
          raise ConfigError(f"{path}, line {n}: field {key!r} must be a string, got {type(row[key]).__name__}.")
      if not row[completion_key]:
        raise ConfigError(f"{path}, line {n}: the completion ({completion_key!r}) is empty; nothing to learn.")
      out.append({"prompt": row[prompt_key], "completion": row[completion_key]})
  if not out:
    raise ConfigError(f"{field}={path!r} holds no examples.")
  return out


def read_tfds(data_cfg, split: str, field: str) -> list[dict]:
  cfg = data_cfg.copy_and_resolve_references()
  cfg.dataset = data_cfg.sft_dataset
  builder = sources.get_builder(cfg)
  sources.check_split(builder, split, field)
  for key, name in ((data_cfg.prompt_key, "prompt_key"), (data_cfg.completion_key, "completion_key")):
    try:
      sources.check_text_key(builder, key)
    except ConfigError as e:
      raise ConfigError(str(e).replace("data.text_key", f"data.{name}")) from None
  source = builder.as_data_source(split=split)
  rows = [source[i] for i in range(len(source))]
  out = [{"prompt": sources.decode_text(r[data_cfg.prompt_key]),
          "completion": sources.decode_text(r[data_cfg.completion_key])} for r in rows]
  if not out:
    raise ConfigError(f"{field}={split!r} of {builder.info.full_name} is empty.")
  return out


def read_examples(data_cfg, which: str = "train") -> list[dict]:
  """The pairs of data.sft_train or data.sft_eval, as [{"prompt": str, "completion": str}]."""
  field = f"sft_{which}"
  if data_cfg.sft_dataset:
    return read_tfds(data_cfg, data_cfg[field], f"data.{field}")
  return read_jsonl(data_cfg[field], data_cfg.prompt_key, data_cfg.completion_key, f"data.{field}")


def tokenize_pair(tokenizer: Tokenizer, prompt: str, completion: str, seq_len: int) -> dict:
  """One pair -> inputs, targets, loss_mask int32 [<= seq_len], truncated by the module's rule."""
  start = list(tokenizer.start_ids)
  p = tokenizer.encode(prompt)
  c = tokenizer.encode(completion)
  eos = [tokenizer.eos_id]
  keep_p = max(0, seq_len - len(start) - len(c))   # inputs: start + p + c <= seq_len
  p = p[max(0, len(p) - keep_p):] if keep_p else []  # (p[len(p) - keep_p:] cut prompts that fit)
  if not start and not p:                          # c1 needs a token before it
    start = [tokenizer.bos_id]
  room = seq_len + 1 - len(start) - len(p)         # seq = start + p + c + eos holds seq_len + 1
  if len(c) + 1 > room:                            # the completion alone is too long: no EOS
    c, eos = c[:room], []
  seq = start + p + c + eos
  inputs, targets = seq[:-1], seq[1:]
  mask = [0] * (len(start) + len(p) - 1) + [1] * (len(c) + len(eos))   # targets: start[1:], p, then c and EOS
  return {"inputs": np.asarray(inputs, np.int32), "targets": np.asarray(targets, np.int32),
          "loss_mask": np.asarray(mask, np.int32)}


class _Tokenize(grain.transforms.Map):
  def __init__(self, tokenizer: Tokenizer, seq_len: int):
    self.tokenizer, self.seq_len = tokenizer, seq_len

  def map(self, pair: dict) -> dict:
    return tokenize_pair(self.tokenizer, pair["prompt"], pair["completion"], self.seq_len)


class _Finalize(grain.transforms.Map):
  """Packed global batch -> this process's rows, with the bytes of the loss-masked targets."""

  def __init__(self, token_bytes: np.ndarray, first_row: int, rows: int):
    self.token_bytes, self.first_row, self.rows = token_bytes, first_row, rows

  def map(self, packed: dict) -> dict:
    take = slice(self.first_row, self.first_row + self.rows)
    out = {"inputs": packed["inputs"][take], "targets": packed["targets"][take],
           "loss_mask": packed["loss_mask"][take], "segment_ids": packed["targets_segment_ids"][take],
           "positions": packed["targets_positions"][take]}
    out = {k: v.astype(np.int32) for k, v in out.items()}
    n = out["inputs"].shape[0]
    if n < self.rows:  # the last batch of a finite split: segment-0 rows
      out = {k: np.pad(v, ((0, self.rows - n), (0, 0))) for k, v in out.items()}
    counted = (out["segment_ids"] > 0) & (out["loss_mask"] > 0)
    out["target_bytes"] = np.where(counted, self.token_bytes[out["targets"]], 0).sum(1).astype(np.int32)
    return out


def _log_truncated(pairs: list[dict], tokenizer: Tokenizer, seq_len: int, name: str) -> None:
  cut = sum(len(tokenizer.encode(p["prompt"])) + len(tokenizer.encode(p["completion"])) + 1 > seq_len
            for p in pairs[:2000])
  if cut:
    logging.warning("%s: %d of the first %d pairs are longer than seq_len=%d and were truncated "
                    "(prompt cut from its start; see lm/data/sft.py)", name, cut, min(len(pairs), 2000), seq_len)


def packed_batches(pairs: grain.MapDataset, tokenizer: Tokenizer, seq_len: int, global_batch: int, *,
                   seed: int | None, finite: bool, process_index=None, process_count=None) -> grain.IterDataset:
  first_row, rows = process_rows(global_batch, process_index, process_count)
  it = pairs.map(_Tokenize(tokenizer, seq_len)).to_iter_dataset(_READ)
  it = grain.experimental.FirstFitPackIterDataset(
      it, length_struct={"inputs": seq_len, "targets": seq_len, "loss_mask": seq_len},
      num_packing_bins=max(global_batch, 64), seed=seed or 0, shuffle_bins=seed is not None)
  it = it.batch(global_batch, drop_remainder=not finite)
  return it.map(_Finalize(tokenizer.token_bytes, first_row, rows))


def _signature(kind, data_cfg, tokenizer, global_batch, n, seed=None) -> dict:
  return dict(kind=f"sft_{kind}", source=data_cfg.sft_dataset or "jsonl", split=data_cfg[f"sft_{kind}"],
              examples=n, tokenizer=tokenizer.kind, vocab_size=tokenizer.vocab_size,
              seq_len=int(data_cfg.seq_len), global_batch=int(global_batch), seed=seed)


def train_iterator(data_cfg, tokenizer: Tokenizer, global_batch_size: int, seed: int,
                   process_index: int | None = None, process_count: int | None = None) -> DataIterator:
  """Infinite packed batches of the training pairs, reshuffled every epoch."""
  validate(data_cfg)
  pairs = read_examples(data_cfg, "train")
  _log_truncated(pairs, tokenizer, int(data_cfg.seq_len), "data.sft_train")
  shuffle_seed, pack_seed = seeds(seed, 2)
  ds = grain.MapDataset.source(pairs).shuffle(seed=shuffle_seed).repeat()
  it = packed_batches(ds, tokenizer, int(data_cfg.seq_len), global_batch_size, seed=pack_seed, finite=False,
                      process_index=process_index, process_count=process_count)
  return DataIterator(it, _signature("train", data_cfg, tokenizer, global_batch_size, len(pairs), seed))


def eval_iterator(data_cfg, tokenizer: Tokenizer, global_batch_size: int,
                  process_index: int | None = None, process_count: int | None = None) -> DataIterator:
  """One pass over the held-out pairs in order; the last batch padded with segment-0 rows."""
  validate(data_cfg)
  pairs = read_examples(data_cfg, "eval")
  it = packed_batches(grain.MapDataset.source(pairs), tokenizer, int(data_cfg.seq_len), global_batch_size,
                      seed=None, finite=True, process_index=process_index, process_count=process_count)
  return DataIterator(it, _signature("eval", data_cfg, tokenizer, global_batch_size, len(pairs)))
