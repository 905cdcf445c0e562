"""Evaluation text from plain files: one .txt file, or a folder of them (searched recursively).

Each file is one document, tokenized and packed exactly like the eval split (same batch
format, finite, in sorted path order, no shuffle). `lm.evaluate --text` uses this.

Streaming: a file is read in blocks of about BLOCK_BYTES (1 MiB), each cut after a newline
(or, in a run of 64 KiB without one, at a character boundary), and one block is tokenized at
a time, so memory does not grow with the file (5 MB and 20 MB of text: README.md). A block
after the first continues the document: its first token is context for the next, not a target
(a tokenizer cannot merge across the cut): one target fewer per MiB, and files under 1 MiB are
evaluated exactly as whole documents.

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
BLOCK_BYTES = 1 << 20
_LOOKAHEAD = 1 << 16  # bytes searched past a block's end for a newline to cut after


def decode_utf8(raw: bytes, name: str = "<bytes>") -> tuple[str, int]:
  """(text, number of invalid sequences replaced by U+FFFD), warning when that is > 0."""
  try:
    return raw.decode("utf-8"), 0
  except UnicodeDecodeError:
    text = raw.decode("utf-8", errors="replace")
    replaced = text.count("\ufffd") - raw.count(_FFFD)  # U+FFFD already in the file is text
    logging.warning("%s: %d invalid UTF-8 sequence(s) replaced by U+FFFD", name, replaced)
    return text, replaced


def read_text(path: str, start: int = 0, end: int | None = None) -> str:
  """The text of bytes [start, end) of a file (the whole file by default)."""
  with open(path, "rb") as f:
    f.seek(start)
    raw = f.read() if end is None else f.read(end - start)
  whole = start == 0 and (end is None or end >= os.path.getsize(path))
  return decode_utf8(raw, path if whole else f"{path} (bytes {start}-{end})")[0]


def blocks(files: list[str]) -> list[tuple[str, int, int, bool]]:
  """(file, start, end, last) byte ranges of about BLOCK_BYTES covering each file (module docstring)."""
  out = []
  for path in files:
    size, start = os.path.getsize(path), 0
    with open(path, "rb") as f:
      while True:
        end = min(size, start + BLOCK_BYTES)
        if end < size:
          f.seek(end)
          ahead = f.read(_LOOKAHEAD)
          newline = ahead.find(b"\n")
          if newline >= 0:
            end += newline + 1
          else:  # no newline near: cut before a UTF-8 continuation byte (0b10xxxxxx), never inside a character
            f.seek(end - 3)
            back = f.read(4)
            end -= next((k for k in range(4) if back[3 - k] & 0xC0 != 0x80), 0)
        out.append((path, start, end, end >= size))
        if end >= size:
          break
        start = end
  return out


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

  start, eos = np.asarray(tokenizer.start_ids, np.int32), np.asarray([tokenizer.eos_id], np.int32)

  def sequence(block) -> np.ndarray:  # a file's first block starts as a document does, its last ends with EOS
    path, a, b, last = block
    ids = np.asarray(tokenizer.encode(read_text(path, a, b)), np.int32)
    return np.concatenate([start if a == 0 else start[:0], ids, eos if last else eos[:0]])

  groups = pipeline.document_groups(grain.MapDataset.source(blocks(files)), 1, repeat=False)
  ds = pipeline.batches(groups, None, tokenizer, seq_len, global_batch_size, shuffle_seed=None,
                        process_index=process_index, process_count=process_count, finite=True, sequence=sequence)
  signature = dict(kind="text", path=os.path.abspath(os.path.expanduser(path)), files=len(files),
                   tokenizer=tokenizer.kind, vocab_size=tokenizer.vocab_size, seq_len=seq_len,
                   global_batch=global_batch_size)
  return pipeline.DataIterator(ds, signature)
