"""Rebuilds lm/data/heldout/heldout.jsonl.xz, the shipped multi-domain held-out set.

    mkdir /tmp/heldout && cd /tmp/heldout
    apt-get download dict-devil=1.0-13.1 dict-jargon=4.4.7-3.1 doc-debian=11.3+nmu1 base-files=12.4+deb12u15
    pip download six==1.17.0 --no-deps -d .
    python -m lm.data.make_heldout --src=/tmp/heldout        # needs dpkg-deb (Debian's dpkg)

Five domains, none in the training corpus (the State of the Union addresses), each cut to
at most MAX_BYTES of UTF-8 at an entry or paragraph boundary (see heldout/PROVENANCE.md
for sources and licences):

    satire_1911     Ambrose Bierce, The Devil's Dictionary (1911)   dict-devil   public domain
    hacker_jargon   The Jargon File 4.4.7 (2003)                     dict-jargon  public domain
    licences        Apache-2.0 and MPL-2.0 licence texts             base-files   verbatim copies
    debian_docs     Debian social contract, constitution, bug-reporting guide   doc-debian  GPL / OPL
    python_code     six.py 1.17.0                                    PyPI six     MIT

The dictionaries (dictd format, gzip) keep their entries as plain text: the dictfmt header
entries (`00-database-*`) are dropped, nothing else is changed. Output: one JSON object a
line, {domain, id, source, license, text}, xz-compressed, deterministic.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import hashlib
import io
import json
import lzma
import os
import subprocess
import tempfile
import zipfile

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "heldout", "heldout.jsonl.xz")
MAX_BYTES = 64_000  # per domain: ~15K SentencePiece tokens, ~3 s to evaluate on 2 CPU cores

DEBS = {"dict-devil": "1.0-13.1", "dict-jargon": "4.4.7-3.1", "doc-debian": "11.3+nmu1",
        "base-files": "12.4+deb12u15"}
WHEEL = "six-1.17.0-py2.py3-none-any.whl"


def _unpack_deb(path: str, into: str) -> str:
  subprocess.run(["dpkg-deb", "-x", path, into], check=True)
  return into


def _cut(text: str, sep: str) -> str:
  """The longest prefix of whole pieces (split at `sep`) within MAX_BYTES."""
  out, size = [], 0
  for piece in text.split(sep):
    size += len((piece + sep).encode("utf-8"))
    if size > MAX_BYTES and out:
      break
    out.append(piece)
  return sep.join(out).strip() + "\n"


def _dict_text(root: str, name: str) -> str:
  """A dictd database as text, entry by entry in the file's order, without the dictfmt
  header entries (00-database-*). The .index gives each entry's byte offset and length
  in base 64 (digits A-Z a-z 0-9 + /)."""
  with gzip.open(os.path.join(root, "usr/share/dictd", f"{name}.dict.dz"), "rb") as f:
    raw = f.read()
  digits = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

  def number(s: str) -> int:
    value = 0
    for c in s:
      value = value * 64 + digits.index(c)
    return value

  with open(os.path.join(root, "usr/share/dictd", f"{name}.index"), encoding="utf-8") as f:
    entries = [line.rstrip("\n").split("\t") for line in f if line.strip()]
  spans = sorted({(number(e[1]), number(e[2])) for e in entries if not e[0].replace("-", "").startswith("00database")})
  return "\n\n".join(raw[off:off + n].decode("utf-8").strip("\n") for off, n in spans)


def build(src: str) -> list[dict]:
  work = tempfile.mkdtemp(prefix="heldout_")
  roots = {}
  for name, version in DEBS.items():
    matches = glob.glob(os.path.join(src, f"{name}_{version}_*.deb"))
    if not matches:
      raise SystemExit(f"{src} has no {name}_{version}_*.deb; run `apt-get download {name}={version}` there.")
    roots[name] = _unpack_deb(matches[0], os.path.join(work, name))
  rows = []

  def add(domain, doc_id, source, license_, text):
    rows.append({"domain": domain, "id": doc_id, "source": source, "license": license_, "text": text})

  add("satire_1911", "devils_dictionary", "Debian dict-devil 1.0-13.1: devil.dict.dz",
      "public domain (copyright expired)", _cut(_dict_text(roots["dict-devil"], "devil"), "\n\n"))
  add("hacker_jargon", "jargon_file_4.4.7", "Debian dict-jargon 4.4.7-3.1: jargon.dict.dz",
      "public domain", _cut(_dict_text(roots["dict-jargon"], "jargon"), "\n\n"))
  for lic in ("Apache-2.0", "MPL-2.0"):
    with open(os.path.join(roots["base-files"], "usr/share/common-licenses", lic), encoding="utf-8") as f:
      add("licences", lic, f"Debian base-files 12.4+deb12u15: /usr/share/common-licenses/{lic}",
          "verbatim copying permitted by the licence text itself", f.read())
  docs = roots["doc-debian"] + "/usr/share/doc/debian"
  for doc in ("social-contract.txt", "constitution.txt", "bug-reporting.txt"):
    with gzip.open(os.path.join(docs, doc + ".gz"), "rt", encoding="utf-8") as f:
      text = f.read()
    add("debian_docs", doc[:-4], f"Debian doc-debian 11.3+nmu1: /usr/share/doc/debian/{doc}.gz",
        "GPL (bug-reporting) / Open Publication License v1.0 (social contract, constitution)",
        _cut(text, "\n\n"))
  wheel = os.path.join(src, WHEEL)
  if not os.path.exists(wheel):
    raise SystemExit(f"{src} has no {WHEEL}; run `pip download six==1.17.0 --no-deps -d {src}`.")
  with zipfile.ZipFile(wheel) as z:
    add("python_code", "six.py", "PyPI six 1.17.0 (wheel): six.py", "MIT (Benjamin Peterson)",
        _cut(z.read("six.py").decode("utf-8"), "\n\n"))
  return rows


def write(rows: list[dict], out: str = OUT) -> str:
  os.makedirs(os.path.dirname(out), exist_ok=True)
  data = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows).encode("utf-8")
  buf = io.BytesIO()
  with lzma.open(buf, "wb", preset=9 | lzma.PRESET_EXTREME) as f:
    f.write(data)
  with open(out, "wb") as f:
    f.write(buf.getvalue())
  return hashlib.sha256(buf.getvalue()).hexdigest()


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--src", required=True, help="Folder with the downloaded .deb files and the six wheel.")
  parser.add_argument("--out", default=OUT)
  args = parser.parse_args()
  rows = build(args.src)
  digest = write(rows, args.out)
  for domain in sorted({r["domain"] for r in rows}):
    size = sum(len(r["text"].encode("utf-8")) for r in rows if r["domain"] == domain)
    print(f"{domain:15s} {size:8,d} bytes")
  print(f"{args.out}: {os.path.getsize(args.out):,} bytes, sha256 {digest}")


if __name__ == "__main__":
  main()
