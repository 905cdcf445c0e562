"""Tokenizer files for a Hugging Face export or import: copy an HF tokenizer's files, or write
lm's byte tokenizer as an equivalent tokenizer.json. (The tokenizer itself, HFTokenizer, is
lm/data/hf_tokenizer.py: a tokenizer is data; this module only writes files.)
"""

from __future__ import annotations

import json
import os
import shutil

from lm.data.hf_tokenizer import SPECIAL_FILE, TOKENIZER_FILES, HFTokenizer, bytes_to_unicode  # noqa: F401

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


def write_byte_tokenizer(dst: str) -> list[str]:
  """lm's ByteTokenizer (pad 0, bos 1, eos 2, byte b -> b + 3) as an equivalent tokenizer.json:
  a byte-level BPE with no merges, so every byte is its own token. The one difference: the
  `tokenizers` library matches special tokens in raw text, so a literal "<s>", "</s>" or
  "<pad>" in the input becomes that special id rather than its bytes."""
  from tokenizers import AddedToken, Tokenizer as _Tok, decoders, models, pre_tokenizers  # local: export only
  b2u = bytes_to_unicode()
  vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{b2u[b]: b + 3 for b in range(256)}}
  tok = _Tok(models.BPE(vocab=vocab, merges=[]))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  tok.decoder = decoders.ByteLevel()
  tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<pad>", "<s>", "</s>")])
  os.makedirs(dst, exist_ok=True)
  tok.save(os.path.join(dst, "tokenizer.json"))
  with open(os.path.join(dst, "tokenizer_config.json"), "w") as f:
    json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
               "pad_token": "<pad>", "model_max_length": 1 << 30}, f, indent=2)
  return ["tokenizer.json", "tokenizer_config.json"]
