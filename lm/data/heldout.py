"""The shipped multi-domain held-out set (heldout/heldout.jsonl.xz, heldout/PROVENANCE.md):
five small domains unlike the training corpus, for bits per byte that compare across
tokenizers and across domains.

    rows = read()            # [{domain, id, source, license, text}], 8 documents
    path = folder()          # the set as DIR/<domain>/<id>.txt, written once to the cache
    python -m lm.evaluate --workdir=RUN --text=heldout      # the table of lm/domains.py

The folder is written under ~/.cache/lm/heldout-<sha256 of the archive, 12 hex>/ (or
$XDG_CACHE_HOME), atomically (a temporary folder renamed into place), so processes that
start at once agree and a changed archive never reuses an old folder.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import lzma
import os
import shutil
import tempfile

from lm.cache import cache_root

NAME = "heldout"  # what --text and train.eval_tasks call it
ARCHIVE = "heldout.jsonl.xz"


def _raw() -> bytes:
  return importlib.resources.files("lm.data").joinpath("heldout").joinpath(ARCHIVE).read_bytes()


def read() -> list[dict]:
  return [json.loads(line) for line in lzma.decompress(_raw()).decode("utf-8").splitlines()]


def domains() -> list[str]:
  return sorted({r["domain"] for r in read()})


def folder(root: str | None = None) -> str:
  """DIR with one sub-folder per domain holding its documents as .txt (UTF-8, as shipped)."""
  raw = _raw()
  root = root or cache_root()
  path = os.path.join(root, f"{NAME}-{hashlib.sha256(raw).hexdigest()[:12]}")
  if os.path.isdir(path):
    return path
  os.makedirs(root, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{NAME}-", dir=root)
  for row in read():
    os.makedirs(os.path.join(tmp, row["domain"]), exist_ok=True)
    with open(os.path.join(tmp, row["domain"], row["id"] + ".txt"), "w", encoding="utf-8", newline="") as f:
      f.write(row["text"])
  try:
    os.rename(tmp, path)
  except OSError:  # another process renamed its copy first: the same bytes
    shutil.rmtree(tmp, ignore_errors=True)
  return path
