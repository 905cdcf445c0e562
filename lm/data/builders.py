"""What the `data.` section selects: the tokenizer (data.tokenizer), the train and eval
iterators (data.format), and the checks of the section, run before any data is read.

    tok = build_tokenizer(cfg.data)
    train_it = train_iterator(cfg.data, tok, cfg.train.batch_size, cfg.train.seed)
    eval_it = eval_iterator(cfg.data, tok, cfg.train.batch_size)

data.format 'text' is language modelling on data.dataset (lm/data/pipeline.py); 'sft' is
(prompt, completion) pairs with the loss on completions only (lm/data/sft.py).
"""

from __future__ import annotations

from lm.data import pipeline, sft
from lm.data.hf_tokenizer import HFTokenizer
from lm.data.tokenizers import ByteTokenizer, Tokenizer, trained_sentencepiece
from lm.errors import ConfigError

TOKENIZERS = ("sentencepiece", "bytes", "hf")
SP_MODEL_TYPES = ("bpe", "unigram")
SP_MIN_VOCAB = 261  # 256 byte-fallback pieces + pad, bos, eos, unk + at least one more
FORMATS = {"text": pipeline, "sft": sft}  # data.format -> the module whose iterators it uses


def _choice(value, allowed, field):
  if value not in allowed:
    raise ConfigError(f"{field}={value!r} is not one of {tuple(allowed)}; set --config.{field} to one of them.")


def validate(d) -> None:
  """Cheap checks of the `data.` section; the data code checks the dataset itself."""
  for field in ("dataset", "text_key", "train_split", "eval_split"):
    if not isinstance(d[field], str) or not d[field]:
      raise ConfigError(f"data.{field}={d[field]!r} must be a non-empty string.")
  _choice(d.tokenizer, TOKENIZERS, "data.tokenizer")
  _choice(d.format, FORMATS, "data.format")
  if d.tokenizer == "hf" and not d.hf_tokenizer:
    raise ConfigError("data.tokenizer='hf' needs data.hf_tokenizer: a folder holding a Hugging Face "
                      "tokenizer.json (an imported checkpoint's folder, or WORKDIR/tokenizer of `lm.convert`).")
  if d.tokenizer == "sentencepiece":
    _choice(d.sp_model_type, SP_MODEL_TYPES, "data.sp_model_type")
    if int(d.vocab_size) < SP_MIN_VOCAB:
      raise ConfigError(
          f"data.vocab_size={d.vocab_size} is too small for SentencePiece with byte fallback (256 byte "
          f"pieces + 4 specials + the corpus's characters); use at least a few hundred (e.g. 4096), "
          f"or --config.data.tokenizer=bytes (vocabulary 259, data.vocab_size ignored).")
  if int(d.seq_len) < 1:
    raise ConfigError(f"data.seq_len={d.seq_len} must be a positive integer.")
  sft.validate(d)


def build_tokenizer(data_cfg) -> Tokenizer:
  """The tokenizer data.tokenizer names; prepares the dataset and trains SentencePiece if needed."""
  validate(data_cfg)
  if data_cfg.tokenizer == "bytes":
    return ByteTokenizer()
  if data_cfg.tokenizer == "hf":
    return HFTokenizer(data_cfg.hf_tokenizer, vocab_size=int(data_cfg.vocab_size))
  return trained_sentencepiece(data_cfg)


def train_iterator(data_cfg, tokenizer: Tokenizer, global_batch_size: int, seed: int, **kw):
  """The endless, checkpointable training iterator data.format names (this process's rows)."""
  return FORMATS[data_cfg.format].train_iterator(data_cfg, tokenizer, global_batch_size, seed, **kw)


def eval_iterator(data_cfg, tokenizer: Tokenizer, global_batch_size: int, **kw):
  """One finite pass over the held-out split (or pairs) that data.format names."""
  return FORMATS[data_cfg.format].eval_iterator(data_cfg, tokenizer, global_batch_size, **kw)
