"""Tokenizers behind one small interface: SentencePiece (trained on first use) and bytes.

    tok = build_tokenizer(cfg.data)   # lm/data/builders.py: the one data.tokenizer names
    ids = tok.encode(text)            # list[int], no BOS/EOS added
    tok.decode(ids) == text           # exact, for any str (lone surrogates become U+FFFD)
    tok.prompt_ids(text)              # what the model is given: tok.start_ids + ids
    tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id
    tok.token_bytes[ids].sum() == len(text.encode("utf-8"))   # for bits per byte

Start of a text: `start_ids` are the ids every text begins with, wherever lm builds one (a
prompt for generation or exact match, an SFT pair, a training or evaluation document). lm's
own tokenizers start with BOS; a Hugging Face tokenizer follows its own convention
(hf_tokenizer.py: what its post-processor adds, as transformers does), e.g. BOS for Llama 2
and 3, nothing for GPT-2 or SmolLM2.

Both reserve pad=0, bos=1, eos=2 (SentencePiece also unk=3, never produced: unseen
characters fall back to byte pieces). The SentencePiece model is trained so that it is
lossless: identity normalization, no dummy prefix, whitespace kept, byte fallback. Its
one gap, the character U+2581 ("▁", which SentencePiece uses for spaces), is encoded as
its three byte pieces. Trained models are cached under DATA_DIR/lm_tokenizers/ with a
fingerprint of the training split and the settings in the name.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from typing import Iterable, Iterator, Sequence

from absl import logging
import numpy as np
import sentencepiece as spm

from lm.errors import ConfigError
from lm.data import sources

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SP_NUM_THREADS = 4       # fixed: the trained model depends on it, and must match on every host
SP_MAX_LINE = 4000       # SentencePiece skips "sentences" over max_sentence_length bytes
SP_TRAINER_VERSION = 1   # bump when the trainer options below change
_U2581 = "\u2581"


def valid_text(text: str) -> str:
  """Lone surrogates cannot be UTF-8 encoded; they become U+FFFD, like invalid bytes do."""
  try:
    text.encode("utf-8")
    return text
  except UnicodeEncodeError:
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


class Tokenizer:
  """The interface the model, training and evaluation rely on."""
  kind: str
  vocab_size: int
  pad_id, bos_id, eos_id = PAD, BOS, EOS
  eos_ids = (EOS,)  # every id that ends a sequence (an HF Llama 3 tokenizer has several)
  start_ids = (BOS,)  # the ids a text starts with (module docstring)
  token_bytes: np.ndarray  # int32 [vocab_size]: UTF-8 bytes each id stands for (0 for specials)

  @property
  def adds_bos(self) -> bool:
    return tuple(self.start_ids) == (self.bos_id,)

  def encode(self, text: str) -> list[int]:
    raise NotImplementedError

  def prompt_ids(self, text: str, max_len: int | None = None) -> list[int]:
    """start_ids + encode(text); with max_len, only the text's last ids that fit beside the
    start. A text with no ids and no start gets [bos_id]: a model needs one token to condition
    on (transformers' generate() starts from bos_token_id too)."""
    start, ids = list(self.start_ids), self.encode(text)
    if max_len is not None:
      keep = max(0, max_len - len(start))
      ids = ids[max(0, len(ids) - keep):] if keep else []
    return start + ids if (start or ids) else [self.bos_id]

  def decode(self, ids: Iterable[int]) -> str:
    raise NotImplementedError

  def count_bytes(self, ids) -> int:
    return int(self.token_bytes[np.asarray(ids, dtype=np.int64)].sum())

  def __repr__(self):
    return f"{type(self).__name__}(vocab_size={self.vocab_size})"


class ByteTokenizer(Tokenizer):
  """UTF-8 bytes: id = byte + 3 after pad/bos/eos, so vocab_size = 3 + 256 = 259."""
  kind = "bytes"
  OFFSET = 3
  vocab_size = OFFSET + 256

  def __init__(self):
    self.token_bytes = np.array([0] * self.OFFSET + [1] * 256, dtype=np.int32)

  def encode(self, text: str) -> list[int]:
    raw = np.frombuffer(valid_text(text).encode("utf-8"), dtype=np.uint8)
    return (raw.astype(np.int32) + self.OFFSET).tolist()

  def decode(self, ids: Iterable[int]) -> str:
    # Specials and ids beyond the vocabulary are skipped; invalid byte runs (which a model
    # can sample) decode to U+FFFD.
    raw = bytes(i - self.OFFSET for i in ids if self.OFFSET <= i < self.vocab_size)
    return raw.decode("utf-8", errors="replace")


class SentencePieceTokenizer(Tokenizer):
  """A trained SentencePiece model (bpe or unigram) with byte fallback."""
  kind = "sentencepiece"

  def __init__(self, model_proto: bytes):
    self.model_proto = model_proto
    self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
    self.vocab_size = self._sp.get_piece_size()
    assert (self._sp.pad_id(), self._sp.bos_id(), self._sp.eos_id()) == (PAD, BOS, EOS)
    self._u2581 = [self._sp.piece_to_id(f"<0x{b:02X}>") for b in _U2581.encode("utf-8")]
    self.token_bytes = np.array([self._piece_bytes(i) for i in range(self.vocab_size)], np.int32)

  def _piece_bytes(self, i: int) -> int:
    if self._sp.is_byte(i):
      return 1
    if self._sp.is_control(i) or self._sp.is_unknown(i):
      return 0
    return len(self._sp.id_to_piece(i).replace(_U2581, " ").encode("utf-8"))

  def encode(self, text: str) -> list[int]:
    text = valid_text(text)
    if _U2581 not in text:
      return self._sp.encode(text)
    ids = []
    for k, part in enumerate(text.split(_U2581)):
      if k:
        ids += self._u2581
      if part:
        ids += self._sp.encode(part)
    return ids

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return [self.encode(t) for t in texts]

  def decode(self, ids: Iterable[int]) -> str:
    ids = [int(i) for i in ids if 0 <= int(i) < self.vocab_size]
    return self._sp.decode(ids)

  def id_to_piece(self, i: int) -> str:
    return self._sp.id_to_piece(i)

  def __getstate__(self):  # the processor itself does not pickle; its proto does
    return {"model_proto": self.model_proto}

  def __setstate__(self, state):
    self.__init__(state["model_proto"])


def _lines(texts: Iterable[str]) -> Iterator[str]:
  """Cuts documents into "sentences" of <= SP_MAX_LINE chars, each cut before a space so
  that the space stays with the word after it (as it does when encoding)."""
  for text in texts:
    start = 0
    while start < len(text):
      end = min(len(text), start + SP_MAX_LINE)
      if end < len(text):
        cut = text.rfind(" ", start + 1, end)
        end = cut if cut > start else end
      yield text[start:end]
      start = end


def train_sentencepiece(texts: Iterable[str], vocab_size: int, model_type: str = "bpe") -> bytes:
  """Trains a lossless SentencePiece model and returns its serialized proto."""
  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=_lines(texts), model_writer=model, model_type=model_type,
        vocab_size=vocab_size, normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=False, byte_fallback=True, split_digits=True,
        allow_whitespace_only_pieces=True, character_coverage=0.9995,
        pad_id=PAD, bos_id=BOS, eos_id=EOS, unk_id=UNK,
        max_sentence_length=4 * SP_MAX_LINE + 16,  # bytes; SP_MAX_LINE chars are <= 4x that
        input_sentence_size=0, num_threads=SP_NUM_THREADS, minloglevel=2)
  except RuntimeError as e:
    msg = str(e)
    too_high = re.search(r"Vocabulary size too high \((\d+)\).*<= (\d+)", msg)
    if too_high:
      raise ConfigError(
          f"data.vocab_size={vocab_size} is too large for this training text: SentencePiece "
          f"({model_type}) can make at most {too_high.group(2)} pieces from it; set "
          f"--config.data.vocab_size to {too_high.group(2)} or less, train on more text, or use "
          f"--config.data.tokenizer=bytes.") from None
    too_low = re.search(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)", msg)
    if too_low:
      raise ConfigError(
          f"data.vocab_size={vocab_size} is too small: the 256 byte pieces, 4 specials and the "
          f"text's characters need {too_low.group(2)}; set --config.data.vocab_size above "
          f"{too_low.group(2)}.") from None
    if "empty" in msg.lower() or "no sentence" in msg.lower():
      raise ConfigError(f"SentencePiece found no training text ({msg}); the training split is "
                        "empty or its text feature is blank: check data.train_split / data.text_key.") from None
    raise
  return model.getvalue()


def _settings(data_cfg) -> dict:
  return dict(model_type=data_cfg.sp_model_type, vocab_size=int(data_cfg.vocab_size),
              train_bytes=int(data_cfg.sp_train_bytes or 0),
              trainer=SP_TRAINER_VERSION, sentencepiece=spm.__version__)


def tokenizer_path(data_cfg) -> str:
  """DATA_DIR/lm_tokenizers/<dataset>-<split>-<type><vocab>-<fingerprint>.model"""
  key = dict(corpus=sources.split_fingerprint(data_cfg, "train_split"), **_settings(data_cfg))
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
  name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{data_cfg.dataset}-{data_cfg.train_split}")
  ddir = sources.data_dir(data_cfg)
  root = ddir if sources.is_local(ddir) else sources.default_data_dir()  # models are cached locally
  return os.path.join(root, "lm_tokenizers",
                      f"{name}-{data_cfg.sp_model_type}{data_cfg.vocab_size}-{digest}.model")


def trained_sentencepiece(data_cfg) -> SentencePieceTokenizer:
  """The SentencePiece model of data_cfg, trained on data.train_split on first use and cached."""
  source = sources.open_split(data_cfg, "train_split")  # checks before any training
  path = tokenizer_path(data_cfg)
  if not os.path.exists(path):
    with sources.file_lock(path + ".lock"):
      if not os.path.exists(path):  # another process may have trained it meanwhile
        max_bytes = int(data_cfg.sp_train_bytes or 0) or None
        logging.info("Training SentencePiece %s, vocab %d, on data.train_split=%r of %r "
                     "(first use; cached at %s)", data_cfg.sp_model_type, data_cfg.vocab_size,
                     data_cfg.train_split, data_cfg.dataset, path)
        proto = train_sentencepiece(sources.iter_texts(source, data_cfg.text_key, max_bytes),
                                    int(data_cfg.vocab_size), data_cfg.sp_model_type)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "wb") as f:
          f.write(proto)
        os.replace(tmp, path)  # atomic: readers see no model or a whole one
  with open(path, "rb") as f:
    tok = SentencePieceTokenizer(f.read())
  if tok.vocab_size != data_cfg.vocab_size:
    raise ConfigError(f"The cached tokenizer {path} has {tok.vocab_size} pieces, not "
                      f"data.vocab_size={data_cfg.vocab_size}; delete it to retrain.")
  return tok
