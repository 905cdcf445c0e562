"""Evaluation text from plain files: format, invalid UTF-8 policy, sharding, errors."""

import collections
import logging

import numpy as np
import pytest

from lm import data
from lm.errors import ConfigError
from lm.data import text_files, tokenizers
from lm.data.tokenizers import ByteTokenizer

L, B = 32, 4


@pytest.fixture
def folder(tmp_path):
  (tmp_path / "sub").mkdir()
  (tmp_path / "a.txt").write_bytes(b"caf\xc3\xa9 ok, then bad \xff\xfe bytes and a real \xef\xbf\xbd.\n")
  (tmp_path / "sub" / "b.txt").write_text("Second file, nested. " * 40 + "emoji 👋🏽\r\n", encoding="utf-8")
  (tmp_path / "notes.md").write_text("not a .txt file: ignored")
  return tmp_path


def targets_and_bytes(batches):
  counts, n_bytes = collections.Counter(), 0
  for batch in batches:
    assert batch["inputs"].shape == (B, L) and batch["target_bytes"].shape == (B,)
    counts.update(batch["targets"][batch["segment_ids"] > 0].tolist())
    n_bytes += int(batch["target_bytes"].sum())
  return counts, n_bytes


def test_decode_policy_counts_replacements(caplog):
  raw = b"ok \xff\xfe and \xe2\x82 cut, genuine \xef\xbf\xbd"
  with caplog.at_level(logging.WARNING):
    text, replaced = text_files.decode_utf8(raw, "x.txt")
  assert text == raw.decode("utf-8", errors="replace")
  assert replaced == 3  # \xff, \xfe, and the cut-off \xe2\x82; the real U+FFFD is text
  assert "x.txt: 3 invalid UTF-8" in caplog.text
  assert text_files.decode_utf8("fine ✓".encode()) == ("fine ✓", 0)


@pytest.mark.parametrize("tok_kind", ["bytes", "sp"])
def test_folder_evaluates_every_token_once(folder, tok_kind):
  if tok_kind == "bytes":
    tok = ByteTokenizer()
  else:
    tok = tokenizers.SentencePieceTokenizer(tokenizers.train_sentencepiece(
        ["Second file, nested. " * 50, "café and bytes and words " * 50], 300))
  files = text_files.text_files(str(folder))
  assert [f.split("/")[-1] for f in files] == ["a.txt", "b.txt"]
  texts = [text_files.read_text(f) for f in files]
  assert "\ufffd\ufffd bytes" in texts[0]  # the two invalid bytes, replaced, not dropped
  want = collections.Counter(i for t in texts for i in tok.encode(t) + [tok.eos_id])
  got, n_bytes = targets_and_bytes(data.text_iterator(str(folder), tok, L, B, process_index=0, process_count=1))
  assert got == want
  assert n_bytes == sum(len(t.encode("utf-8")) for t in texts)


def test_single_file_and_process_split(folder):
  tok = ByteTokenizer()
  path = str(folder / "sub" / "b.txt")
  whole = list(data.text_iterator(path, tok, L, B, process_index=0, process_count=1))
  halves = [list(data.text_iterator(path, tok, L, B, process_index=p, process_count=2)) for p in (0, 1)]
  assert len(whole) == len(halves[0]) == len(halves[1]) > 1
  for w, h0, h1 in zip(whole, *halves):
    for k in w:
      np.testing.assert_array_equal(np.concatenate([h0[k], h1[k]]), w[k])
  last = whole[-1]["segment_ids"]
  assert (last == 0).any()  # the last batch is padded


def test_missing_path(tmp_path):
  with pytest.raises(ConfigError, match="does not exist"):
    data.text_iterator(str(tmp_path / "nope.txt"), ByteTokenizer(), L, B, process_index=0, process_count=1)


def test_folder_without_txt(tmp_path):
  (tmp_path / "x.md").write_text("hello")
  with pytest.raises(ConfigError, match=r"no \.txt files"):
    data.text_iterator(str(tmp_path), ByteTokenizer(), L, B, process_index=0, process_count=1)


def test_empty_files(tmp_path):
  (tmp_path / "a.txt").write_text("")
  with pytest.raises(ConfigError, match="empty; there is no text"):
    data.text_iterator(str(tmp_path), ByteTokenizer(), L, B, process_index=0, process_count=1)


PEAK_RSS = """
import resource, sys
from lm.data import text_files
from lm.data.tokenizers import ByteTokenizer
tokens = sum(int((b["segment_ids"] > 0).sum()) for b in text_files.text_iterator(sys.argv[1], ByteTokenizer(), 1024, 8))
print(tokens, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def test_a_large_file_is_read_in_blocks_so_memory_stays_flat(tmp_path):
  import os
  import subprocess
  import sys
  line = "The state of the Union is strong, and the people are the Union.\n"
  peaks = {}
  for mb in (1, 12):
    path = tmp_path / f"{mb}mb.txt"
    path.write_text(line * (mb * 2**20 // len(line)))
    out = subprocess.run([sys.executable, "-c", PEAK_RSS, str(path)], capture_output=True, text=True, timeout=600,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr[-2000:]
    tokens, peaks[mb] = map(int, out.stdout.split())
    blocks = len(text_files.blocks([str(path)]))
    assert tokens == path.stat().st_size + 1 - (blocks - 1)  # every byte and the EOS, less one per later block
  assert peaks[12] - peaks[1] < 100, peaks  # MB; reading the file whole took 11x the text in Python ints
