"""Tokenizer files for a Hugging Face export or import: copy an HF tokenizer's files, or write
lm's own tokenizers (bytes, SentencePiece) as an equivalent tokenizer.json. (The tokenizer
itself, HFTokenizer, is lm/data/hf_tokenizer.py: a tokenizer is data; this module only writes
files.)

An exported lm tokenizer starts every text with BOS, as lm's do: its post-processor is the
template '<s> $A' (what transformers >= 5 follows) and tokenizer_config.json says
add_bos_token (what older transformers read), so `AutoTokenizer(text)` and lm give the same
ids, and lm reads the export back (HFTokenizer) with the same start.

SentencePiece -> tokenizer.json, with the `tokenizers` library (a runtime dependency; the
conversion needs no transformers): the same pieces and ids; BPE merges recovered from the
pieces as transformers' SentencePieceExtractor does (each piece's splits into two pieces,
ranked by the merged piece's score), or the unigram scores; spaces as '▁' with no dummy
prefix (lm trains identity-normalised, lossless models: lm/data/tokenizers.py); byte
fallback. The one difference: lm encodes a literal '▁' (U+2581) as its three byte pieces,
while the tokenizer.json reads it as a space piece (a text holding U+2581 encodes
differently; decoding gives a space). tests/test_hf_tokenizers.py checks the ids on the corpus.
"""

from __future__ import annotations

import json
import os
import shutil

from lm.data.hf_tokenizer import SPECIAL_FILE, TOKENIZER_FILES, HFTokenizer, bytes_to_unicode  # noqa: F401
from lm.data.tokenizers import BOS, EOS, PAD, UNK

_SPECIALS = ("<pad>", "<s>", "</s>")


def copy_files(src: str, dst: str, special: dict) -> list[str]:
  """Copies the tokenizer files of `src` into `dst` and records the resolved special ids there."""
  os.makedirs(dst, exist_ok=True)
  copied = []
  for name in TOKENIZER_FILES:
    if os.path.isfile(os.path.join(src, name)) and os.path.abspath(src) != os.path.abspath(dst):
      shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))
      copied.append(name)
  with open(os.path.join(dst, SPECIAL_FILE), "w") as f:
    json.dump(special, f, indent=2)
  return copied + [SPECIAL_FILE]


def _starts_with_bos(tok) -> None:
  from tokenizers import processors  # local: export only
  tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                     special_tokens=[("<s>", BOS)])


def _write(tok, dst: str, extra_config: dict | None = None) -> list[str]:
  os.makedirs(dst, exist_ok=True)
  tok.save(os.path.join(dst, "tokenizer.json"))
  with open(os.path.join(dst, "tokenizer_config.json"), "w") as f:
    json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
               "pad_token": "<pad>", "add_bos_token": True, "add_eos_token": False, "model_max_length": 1 << 30,
               **(extra_config or {})}, f, indent=2)
  return ["tokenizer.json", "tokenizer_config.json"]


def write_byte_tokenizer(dst: str) -> list[str]:
  """lm's ByteTokenizer (pad 0, bos 1, eos 2, byte b -> b + 3) as an equivalent tokenizer.json:
  a byte-level BPE with no merges, so every byte is its own token. The one difference: the
  `tokenizers` library matches special tokens in raw text, so a literal "<s>", "</s>" or
  "<pad>" in the input becomes that special id rather than its bytes."""
  from tokenizers import AddedToken, Tokenizer as _Tok, decoders, models, pre_tokenizers  # local: export only
  b2u = bytes_to_unicode()
  vocab = {"<pad>": PAD, "<s>": BOS, "</s>": EOS, **{b2u[b]: b + 3 for b in range(256)}}
  tok = _Tok(models.BPE(vocab=vocab, merges=[]))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  tok.decoder = decoders.ByteLevel()
  tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in _SPECIALS])
  _starts_with_bos(tok)
  return _write(tok, dst)


def _bpe_merges(pieces: list[tuple[str, float]], vocab: dict[str, int]) -> list[tuple[str, str]]:
  """BPE merges from SentencePiece pieces (transformers' SentencePieceExtractor): every split of
  a piece into two pieces, ranked by the merged piece's score (SentencePiece merges the pair
  whose result scores highest), splits of one piece by their parts' ids."""
  merges = []
  for piece, score in pieces:
    local = [(piece[:i], piece[i:]) for i in range(1, len(piece)) if piece[:i] in vocab and piece[i:] in vocab]
    merges += [(score, vocab[left], vocab[right], left, right) for left, right in local]
  merges.sort(key=lambda m: (-m[0], m[1], m[2]))
  return [(left, right) for *_, left, right in merges]


def write_sentencepiece_tokenizer(model_proto: bytes, dst: str) -> list[str]:
  """lm's SentencePiece model as tokenizer.json (module docstring) plus tokenizer.model (the
  proto itself, for sentencepiece users)."""
  from sentencepiece import sentencepiece_model_pb2  # local: export only
  from tokenizers import AddedToken, Tokenizer as _Tok, decoders, models, normalizers  # local: export only
  proto = sentencepiece_model_pb2.ModelProto()
  proto.ParseFromString(model_proto)
  normal = sentencepiece_model_pb2.ModelProto.SentencePiece.NORMAL
  vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
  if proto.trainer_spec.model_type == sentencepiece_model_pb2.TrainerSpec.BPE:
    scored = [(p.piece, p.score) for p in proto.pieces if p.type == normal]
    model = models.BPE(vocab=vocab, merges=_bpe_merges(scored, vocab), unk_token=proto.pieces[UNK].piece,
                       byte_fallback=True, fuse_unk=True)
  else:  # unigram
    model = models.Unigram([(p.piece, p.score) for p in proto.pieces], unk_id=UNK, byte_fallback=True)
  tok = _Tok(model)
  tok.normalizer = normalizers.Replace(" ", "\u2581")  # identity normalisation, no dummy prefix
  tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
  tok.add_special_tokens([AddedToken(proto.pieces[i].piece, special=True, normalized=False)
                          for i in (PAD, BOS, EOS, UNK)])
  _starts_with_bos(tok)
  written = _write(tok, dst, {"unk_token": proto.pieces[UNK].piece})
  with open(os.path.join(dst, "tokenizer.model"), "wb") as f:
    f.write(model_proto)
  return written + ["tokenizer.model"]
