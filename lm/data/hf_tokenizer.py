"""A Hugging Face tokenizer.json (the `tokenizers` library) behind lm's Tokenizer interface.

    tok = HFTokenizer(DIR, vocab_size=EMBEDDING_ROWS)   # DIR holds tokenizer.json
    tok.encode(text)      # ids, no special tokens added (lm's pipeline adds BOS / EOS itself)
    tok.start_ids         # what the tokenizer puts before a text: (bos,) or ()
    tok.decode(ids)       # special tokens skipped; decode(encode(text)) == text for GPT-2's
                          # byte-level BPE and Llama's SentencePiece-style tokenizers

Vocabulary rule: the embedding may have more rows than the tokenizer has ids (checkpoints
pad it, e.g. to a multiple of 64), never fewer. lm's `vocab_size` is the embedding's row
count; ids the tokenizer never produces decode to nothing and stand for 0 bytes.

Special ids, first found wins: DIR/lm_special_tokens.json (written by lm.convert), the
model's config.json, generation_config.json, then the token strings of tokenizer_config.json
/ special_tokens_map.json. No BOS -> the EOS id (GPT-2 uses one id for both); no pad -> EOS.
A list of EOS ids (Llama 3) keeps the first as eos_id and all of them in eos_ids.

Start of a text (start_ids, used for every prompt, SFT pair and document): the special
tokens tokenizer.json's post-processor puts before a text, i.e. what transformers'
`tokenizer(text)` starts with: (bos,) for Llama 2 / 3 ('<s> $A' templates), () for GPT-2 and
SmolLM2. transformers >= 5 ignores tokenizer_config.json's add_bos_token when a tokenizer.json
exists (tokenization_utils_base drops it), and so does lm, with a warning if the two disagree;
in published checkpoints they agree. Any suffix (add_eos_token) is not added to prompts.

token_bytes (bits per byte): the UTF-8 bytes each id decodes to, read off its string:
  byte-level BPE (decoder ByteLevel: GPT-2, Llama 3): each character of the token stands for
      one byte (GPT-2's bytes_to_unicode table);
  SentencePiece style (decoders Metaspace / Replace('▁') / ByteFallback: Llama 1-2): "<0xAB>"
      is one byte, otherwise the piece with '▁' read as a space. The dummy-prefix space such
      tokenizers add at the start of a text counts as one byte (decode strips it): at most
      one byte too many per encoded text;
  anything else (WordPiece, ...): the length of the id decoded alone (approximate);
  special (added) tokens: 0.
"""

from __future__ import annotations

import functools
import json
import os
import re
from typing import Iterable

from absl import logging
import numpy as np

from lm.data.tokenizers import Tokenizer, valid_text
from lm.errors import HFError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
SPECIAL_FILE = "lm_special_tokens.json"
_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
  """GPT-2's reversible byte -> printable character table (byte-level BPE)."""
  bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
  cs = bs[:]
  n = 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return dict(zip(bs, map(chr, cs)))


def _read_json(path: str) -> dict:
  if not os.path.isfile(path):
    return {}
  try:
    with open(path, encoding="utf-8") as f:
      out = json.load(f)
  except ValueError as e:
    raise HFError(f"{path} is not valid JSON ({e}); copy it again from the checkpoint it came with.") from None
  return out if isinstance(out, dict) else {}


def _decoder_types(node) -> set[str]:
  if not isinstance(node, dict):
    return set()
  types = {node.get("type", "")}
  if node.get("type") == "Replace" and "▁" in json.dumps(node.get("pattern", {}), ensure_ascii=False):
    types.add("ReplaceMetaspace")
  for child in node.get("decoders") or []:
    types |= _decoder_types(child)
  return types


class HFTokenizer(Tokenizer):
  kind = "hf"

  def __init__(self, path: str, vocab_size: int | None = None, model_config: dict | None = None):
    from tokenizers import Tokenizer as _Tok  # local: the `tokenizers` library loads only for data.tokenizer='hf'
    self.path = os.path.abspath(os.path.expanduser(path))
    file = os.path.join(self.path, "tokenizer.json")
    if not os.path.isfile(file):
      raise HFError(f"no tokenizer.json in {self.path}: lm reads Hugging Face tokenizers in the `tokenizers` JSON "
                    "format. For a checkpoint with only a SentencePiece tokenizer.model, write one with "
                    "transformers: AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR).")
    try:
      self._tok = _Tok.from_file(file)
    except Exception as e:  # noqa: BLE001 - the tokenizers library raises a bare Exception
      raise HFError(f"{file} is not a tokenizer.json the `tokenizers` library can read ({str(e)[:200]}); copy it "
                    "again from the checkpoint it came with.") from None
    vocab = self._tok.get_vocab(with_added_tokens=True)
    self.tokenizer_vocab_size = max(vocab.values()) + 1
    self.vocab_size = self.tokenizer_vocab_size if vocab_size is None else int(vocab_size)
    if self.tokenizer_vocab_size > self.vocab_size:
      raise HFError(f"the tokenizer ({file}) has ids up to {self.tokenizer_vocab_size - 1} but the model's embedding "
                    f"has {self.vocab_size} rows (vocab_size); they must come from the same checkpoint (the "
                    "embedding may have more rows than the tokenizer has ids, never fewer).")
    self._special = self._resolve_special(model_config or {})
    self.bos_id, self.eos_id, self.pad_id = (self._special[k] for k in ("bos_id", "eos_id", "pad_id"))
    self.eos_ids = tuple(self._special["eos_ids"])
    self.start_ids = self._start_ids()
    self.token_bytes = self._token_bytes(vocab)

  def _start_ids(self) -> tuple[int, ...]:
    """The ids the post-processor puts before a text (module docstring)."""
    probe = "a b"
    plain = self._tok.encode(probe, add_special_tokens=False).ids
    full = self._tok.encode(probe, add_special_tokens=True).ids
    start = next((tuple(full[:i]) for i in range(len(full) - len(plain) + 1) if full[i:i + len(plain)] == plain), ())
    flag = _read_json(os.path.join(self.path, "tokenizer_config.json")).get("add_bos_token")
    if isinstance(flag, bool) and flag != (start == (self.bos_id,)):
      logging.warning("%s: tokenizer_config.json says add_bos_token=%s, but tokenizer.json's post-processor puts %s "
                      "before a text; lm follows tokenizer.json, as transformers >= 5 does.", self.path, flag,
                      list(start) or "nothing")
    return start

  # ---- special ids ----
  def _resolve_special(self, model_config: dict) -> dict:
    d = self.path
    ids: dict = {}
    for source in (_read_json(os.path.join(d, SPECIAL_FILE)),):
      for k in ("bos_id", "eos_id", "pad_id", "eos_ids"):
        if source.get(k) is not None:
          ids[k] = source[k]
    for source in (model_config, _read_json(os.path.join(d, "config.json")),
                   _read_json(os.path.join(d, "generation_config.json"))):
      for k in ("bos", "eos", "pad"):
        value = source.get(f"{k}_token_id")
        if ids.get(f"{k}_id") is None and value is not None and value != []:
          ids[f"{k}_id"] = value
    for source in (_read_json(os.path.join(d, "tokenizer_config.json")),
                   _read_json(os.path.join(d, "special_tokens_map.json"))):
      for k in ("bos", "eos", "pad"):
        token = source.get(f"{k}_token")
        token = token.get("content") if isinstance(token, dict) else token
        if ids.get(f"{k}_id") is None and isinstance(token, str) and self._tok.token_to_id(token) is not None:
          ids[f"{k}_id"] = self._tok.token_to_id(token)
    eos = ids.get("eos_id")
    if eos is None:
      raise HFError(f"no end-of-sequence token for the tokenizer in {d}: none of {SPECIAL_FILE}, config.json "
                    "(eos_token_id), generation_config.json, tokenizer_config.json (eos_token) names one; lm needs it "
                    "to end documents. Set eos_token_id in the checkpoint's config.json.")
    eos_ids = ids.get("eos_ids") or (list(eos) if isinstance(eos, (list, tuple)) else [eos])
    out = {"eos_ids": [int(e) for e in eos_ids]}
    out["eos_id"] = out["eos_ids"][0]
    out["bos_id"] = int(ids["bos_id"]) if ids.get("bos_id") is not None else out["eos_id"]
    pad = ids.get("pad_id")
    out["pad_id"] = int(pad[0] if isinstance(pad, (list, tuple)) else pad) if pad is not None else out["eos_id"]
    for k in ("bos_id", "eos_id", "pad_id"):
      if not 0 <= out[k] < self.vocab_size:
        raise HFError(f"the {k[:-3]} token id {out[k]} (from the checkpoint's config / tokenizer files in {d}) is "
                      f"outside the vocabulary [0, {self.vocab_size}).")
    return out

  def special_ids(self) -> dict:
    return dict(self._special)

  # ---- bytes per id ----
  def _token_bytes(self, vocab: dict) -> np.ndarray:
    spec = _read_json(os.path.join(self.path, "tokenizer.json"))
    types = _decoder_types(spec.get("decoder"))
    added = {t["content"]: bool(t.get("special")) for t in spec.get("added_tokens", [])}
    byte_level = "ByteLevel" in types
    sentencepiece = bool(types & {"Metaspace", "ReplaceMetaspace", "ByteFallback"})
    u2b = {c: b for b, c in bytes_to_unicode().items()}
    out = np.zeros(self.vocab_size, np.int32)
    for token, i in vocab.items():
      if token in added:
        out[i] = 0 if added[token] else len(token.encode("utf-8"))
      elif byte_level:
        out[i] = sum(1 if ch in u2b else len(ch.encode("utf-8")) for ch in token)
      elif sentencepiece:
        out[i] = 1 if _BYTE_PIECE.match(token) else len(token.replace("▁", " ").encode("utf-8"))
      else:
        out[i] = len(self._tok.decode([i], skip_special_tokens=True).encode("utf-8"))
    return out

  # ---- the interface ----
  def encode(self, text: str) -> list[int]:
    return self._tok.encode(valid_text(text), add_special_tokens=False).ids

  def encode_batch(self, texts) -> list[list[int]]:
    return [e.ids for e in self._tok.encode_batch([valid_text(t) for t in texts], add_special_tokens=False)]

  def decode(self, ids: Iterable[int]) -> str:
    ids = [int(i) for i in ids if 0 <= int(i) < self.tokenizer_vocab_size]
    return self._tok.decode(ids, skip_special_tokens=True)

  def __getstate__(self):
    return {"path": self.path, "vocab_size": self.vocab_size}

  def __setstate__(self, state):
    self.__init__(state["path"], state["vocab_size"])
