"""Tokenizers: lossless round trips, byte accounting for bits per byte, caching, errors."""

import os
import pickle

import numpy as np
import pytest

from configs import base
from lm.errors import ConfigError
from lm.data import sources, tokenizers
from lm.data import build_tokenizer
from lm.data.tokenizers import ByteTokenizer

HOSTILE = [
    "",
    " ",
    "plain ascii",
    "emoji 👋🏽 family 👨‍👩‍👧 flag 🇺🇸",
    "nul\x00inside\x00\x00",
    "combining e\u0301 a\u0308\u0323 stacked Z\u0351\u0352\u0353",
    "x" * 5000,
    "Pneumonoultramicroscopicsilicovolcanoconiosis" * 40,
    "  leading, double  and trailing spaces  ",
    "tabs\tand\nnewlines\r\nand\rCR\n\n",
    "\u2581 sentencepiece's own space mark \u2581\u2581",
    "\ufeffBOM, zero\u200bwidth, RTL \u202eabc\u202c, NBSP\u00a0",
    "CJK 漢字かな한글, Greek αβγ, Arabic مرحبا, math ∮∑∫",
    "astral \U0001f600\U00010348\U0010fffd",
    "ligature ﬁ and fullwidth Ａ, ① — NFKC would change these",
    "<s></s><pad><unk> look like specials but are text",
]


@pytest.fixture(scope="module")
def data_cfg(tmp_path_factory):
  cfg = base.get_config().data
  cfg.data_dir = str(tmp_path_factory.getbasetemp() / "lm_data")  # shared by the data tests
  cfg.vocab_size = 512
  return cfg


@pytest.fixture(scope="module")
def corpus(data_cfg):
  source = sources.open_split(data_cfg, "eval_split")  # 23 speeches, ~1 MB
  return list(sources.iter_texts(source, data_cfg.text_key))


@pytest.fixture(scope="module", params=["bpe", "unigram", "bytes"])
def tok(request, data_cfg):
  cfg = data_cfg.copy_and_resolve_references()
  if request.param == "bytes":
    cfg.tokenizer = "bytes"
  else:
    cfg.sp_model_type = request.param
    cfg.sp_train_bytes = 2_000_000  # keeps unigram training to ~1 s
  return build_tokenizer(cfg)


def test_round_trip_corpus(tok, corpus):
  for text in corpus:
    assert tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_round_trip_hostile(tok, text):
  ids = tok.encode(text)
  assert tok.decode(ids) == text
  assert all(3 <= i < tok.vocab_size for i in ids) or tok.kind == "sentencepiece"
  assert tok.pad_id not in ids and tok.bos_id not in ids and tok.eos_id not in ids
  assert tok.count_bytes(ids) == len(text.encode("utf-8"))


def test_token_bytes_match_utf8_length(tok, corpus):
  # Bits per byte divide by these counts, so they must be the text's exact UTF-8 length.
  assert tok.token_bytes.shape == (tok.vocab_size,)
  assert tok.token_bytes[[tok.pad_id, tok.bos_id, tok.eos_id]].tolist() == [0, 0, 0]
  for text in corpus[:5]:
    assert tok.count_bytes(tok.encode(text)) == len(text.encode("utf-8"))


def test_lone_surrogates_become_replacement_char(tok):
  assert tok.decode(tok.encode("a\ud800b")) == "a\ufffdb"


def test_specials_in_decode_are_skipped(tok):
  ids = tok.encode("hello")
  assert tok.decode([tok.bos_id] + ids + [tok.eos_id, tok.pad_id]) == "hello"


def test_sentencepiece_compresses(data_cfg, corpus):
  tok = build_tokenizer(data_cfg)
  assert tok.vocab_size == data_cfg.vocab_size
  n_bytes = sum(len(t.encode()) for t in corpus)
  n_tokens = sum(len(tok.encode(t)) for t in corpus)
  assert n_bytes / n_tokens > 1.8  # measured 2.1 bytes/token at vocab 512 (4.3 at 4096; bytes: 1)


def test_byte_tokenizer_invalid_bytes_decode_to_replacement():
  tok = ByteTokenizer()
  assert tok.vocab_size == 259
  assert tok.decode([ord("a") + 3, 0xFF + 3, ord("b") + 3]) == "a\ufffdb"


def test_sentencepiece_pickles(data_cfg):
  tok = build_tokenizer(data_cfg)
  copy = pickle.loads(pickle.dumps(tok))
  assert copy.encode("State of the Union") == tok.encode("State of the Union")


def test_cache_reused_and_keyed_by_settings(data_cfg):
  path = tokenizers.tokenizer_path(data_cfg)
  build_tokenizer(data_cfg)
  mtime = os.stat(path).st_mtime_ns
  build_tokenizer(data_cfg)
  assert os.stat(path).st_mtime_ns == mtime  # not retrained
  other = data_cfg.copy_and_resolve_references()
  other.vocab_size = 600
  assert tokenizers.tokenizer_path(other) != path
  other.vocab_size, other.sp_model_type = 512, "unigram"
  assert tokenizers.tokenizer_path(other) != path


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_training_is_deterministic(corpus, model_type):
  # Every host trains its own copy on first use, so the copies must be identical.
  a = tokenizers.train_sentencepiece(corpus[:4], 400, model_type)
  b = tokenizers.train_sentencepiece(corpus[:4], 400, model_type)
  assert a == b


def test_vocab_too_large_names_the_fix():
  with pytest.raises(ConfigError, match=r"data.vocab_size=5000 is too large.*set --config.data.vocab_size to \d+"):
    tokenizers.train_sentencepiece(["a tiny corpus with few words"] * 20, 5000)


def test_vocab_too_small_names_the_fix():
  cfg = base.get_config().data
  cfg.vocab_size = 100
  with pytest.raises(ConfigError, match="data.vocab_size=100 is too small"):
    build_tokenizer(cfg)
  with pytest.raises(ConfigError, match=r"too small.*need \d+"):
    tokenizers.train_sentencepiece(["".join(chr(0x4e00 + i) for i in range(400))] * 5, 300)


def test_bad_tokenizer_name():
  cfg = base.get_config().data
  cfg.tokenizer = "wordpiece"
  with pytest.raises(ConfigError, match="data.tokenizer"):
    build_tokenizer(cfg)
