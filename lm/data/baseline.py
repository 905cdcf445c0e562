"""The unigram baseline: how well token frequencies alone predict the eval split.

A model that has learned anything beats it; training reports how far below it gets.
p(t) = (count_train(t) + 1) / (N_train + V), add-one smoothing over the whole vocabulary,
with one EOS counted per document as the pipeline's targets do. Cross-entropy on the eval
split's targets (tokens + EOS per document) in nats/token, and in bits per UTF-8 byte so
tokenizers compare. For a tokenizer that starts a text with no special token (GPT-2's), the
first token of a document is no target, as in the pipeline, and its bytes are not counted.
Counts are cached beside the tokenizer (a few seconds on sotu).
"""

from __future__ import annotations

import hashlib
import json
import math
import os

from absl import logging
import numpy as np

from lm.data import sources
from lm.data.tokenizers import Tokenizer

_MAX_BYTES = 64_000_000  # of each split, at most: enough for a stable unigram estimate


def _tokenizer_id(tokenizer: Tokenizer) -> str:
  proto = getattr(tokenizer, "model_proto", b"")
  if tokenizer.kind == "hf":  # the tokenizer.json, and how a text starts
    with open(os.path.join(tokenizer.path, "tokenizer.json"), "rb") as f:
      proto = f.read() + repr(tuple(tokenizer.start_ids)).encode()
  return f"{tokenizer.kind}{tokenizer.vocab_size}-{hashlib.sha256(proto).hexdigest()[:12]}"


def _counts(data_cfg, tokenizer: Tokenizer, split_field: str) -> tuple[np.ndarray, int]:
  """Target-token counts [V] (EOS once per document) and the UTF-8 bytes behind them."""
  counts = np.zeros(tokenizer.vocab_size, np.int64)
  n_bytes = 0
  source = sources.open_split(data_cfg, split_field)
  for text in sources.iter_texts(source, data_cfg.text_key, _MAX_BYTES):
    ids = np.asarray(tokenizer.encode(text), np.int64)
    n_bytes += len(text.encode("utf-8"))
    if not tokenizer.start_ids and len(ids):  # the first token is context, not a target
      n_bytes -= int(tokenizer.token_bytes[ids[0]])
      ids = ids[1:]
    counts += np.bincount(ids, minlength=tokenizer.vocab_size)
    counts[tokenizer.eos_id] += 1
  return counts, n_bytes


def unigram_log_probs(train_counts: np.ndarray) -> np.ndarray:
  """log p(t) with add-one smoothing: (c_t + 1) / (N + V)."""
  return np.log(train_counts + 1.0) - math.log(train_counts.sum() + len(train_counts))


def unigram_baseline(data_cfg, tokenizer: Tokenizer) -> dict:
  """{nats_per_token, bits_per_byte, eval_tokens, eval_bytes, train_tokens} on data.eval_split."""
  key = dict(train=sources.split_fingerprint(data_cfg, "train_split"),
             eval=sources.split_fingerprint(data_cfg, "eval_split"),
             tokenizer=_tokenizer_id(tokenizer), max_bytes=_MAX_BYTES)
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
  ddir = sources.data_dir(data_cfg)
  root = ddir if sources.is_local(ddir) else sources.default_data_dir()
  path = os.path.join(root, "lm_tokenizers", f"unigram-{digest}.json")
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  logging.info("Computing the unigram baseline of %r (%s -> %s)", data_cfg.dataset,
               data_cfg.train_split, data_cfg.eval_split)
  train_counts, _ = _counts(data_cfg, tokenizer, "train_split")
  eval_counts, eval_bytes = _counts(data_cfg, tokenizer, "eval_split")
  nats = -float(eval_counts @ unigram_log_probs(train_counts))
  result = dict(nats_per_token=nats / float(eval_counts.sum()), bits_per_byte=nats / math.log(2) / eval_bytes,
                eval_tokens=int(eval_counts.sum()), eval_bytes=int(eval_bytes),
                train_tokens=int(train_counts.sum()))
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(result, f)
  os.replace(tmp, path)
  return result
