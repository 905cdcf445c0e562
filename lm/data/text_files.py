"""Evaluation text from plain files: one .txt file, or a folder of them (searched recursively).

Each file is one document, tokenized and packed exactly like the eval split (same batch
format, finite, in sorted path order, no shuffle). `lm.evaluate --text` uses this.

Invalid UTF-8 policy: a file is decoded as UTF-8; bytes that are not valid UTF-8 are each
replaced by U+FFFD (Python's errors="replace": one U+FFFD per invalid sequence), a warning
names the file and how many were replaced, and evaluation goes on. Bits per byte then count
the decoded text's UTF-8 bytes (3 per U+FFFD), not the file's raw size. Nothing else is
changed: no BOM stripping, no newline or Unicode normalization.
"""

from __future__ import annotations

import os

from absl import logging
import grain
import numpy as np

from lm.errors import ConfigError
from lm.data import pipeline
from lm.data.tokenizers import Tokenizer

_FFFD = "\ufffd".encode("utf-8")


def decode_utf8(raw: bytes, name: str = "<bytes>") -> tuple[str, int]:
  """(text, number of invalid sequences replaced by U+FFFD), warning when that is > 0."""
  try:
    return raw.decode("utf-8"), 0
  except UnicodeDecodeError:
    text = raw.decode("utf-8", errors="replace")
    replaced = text.count("\ufffd") - raw.count(_FFFD)  # U+FFFD already in the file is text
    logging.warning("%s: %d invalid UTF-8 sequence(s) replaced by U+FFFD", name, replaced)
    return text, replaced


def read_text(path: str) -> str:
  with open(path, "rb") as f:
    return decode_utf8(f.read(), path)[0]


def text_files(path: str) -> list[str]:
  """The documents behind --text: the file itself, or every *.txt under the folder, sorted."""
  path = os.path.expanduser(path)
  if os.path.isfile(path):
    return [path]
  if not os.path.isdir(path):
    raise ConfigError(f"--text={path!r} does not exist; pass a plain-text file or a folder of .txt files.")
  files = sorted(os.path.join(root, f) for root, _, names in os.walk(path)
                 for f in names if f.endswith(".txt"))
  if not files:
    raise ConfigError(f"--text={path!r} is a folder with no .txt files in it (searched recursively); "
                      "pass a plain-text file, or put the text in files named *.txt.")
  return files


def text_iterator(path: str, tokenizer: Tokenizer, seq_len: int, global_batch_size: int,
                  process_index: int | None = None,
                  process_count: int | None = None) -> pipeline.DataIterator:
  """One pass over the text at `path` (file or folder of .txt), batched like eval_iterator."""
  files = text_files(path)
  if not any(os.path.getsize(f) for f in files):
    raise ConfigError(f"--text={path!r}: the {len(files)} file(s) are empty; there is no text to evaluate.")

  def tokenize(file: str) -> np.ndarray:
    return np.asarray(tokenizer.encode(read_text(file)), np.int32)

  groups = pipeline.document_groups(grain.MapDataset.source(files), 16, repeat=False)
  ds = pipeline.batches(groups, tokenize, tokenizer, seq_len, global_batch_size, shuffle_seed=None,
                        process_index=process_index, process_count=process_count, finite=True)
  signature = dict(kind="text", path=os.path.abspath(os.path.expanduser(path)), files=len(files),
                   tokenizer=tokenizer.kind, vocab_size=tokenizer.vocab_size, seq_len=seq_len,
                   global_batch=global_batch_size)
  return pipeline.DataIterator(ds, signature)
