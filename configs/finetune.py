"""Supervised fine-tuning of a pretrained model on (prompt, completion) pairs.

    python -m lm.main --config=configs/finetune.py:PRETRAINED --workdir=FT \
        --config.data.sft_train=train.jsonl --config.data.sft_eval=heldout.jsonl

PRETRAINED is an lm training run, a workdir written by `python -m lm.convert --from_hf`, or
a Hugging Face checkpoint directory (Llama / GPT-2, imported on the fly). Its model section
and tokenizer settings are copied (they must match its parameters), train.init_from points
at it, and data.format='sft' makes training read the pairs (lm/data/sft.py): the loss is
on completion tokens only, and each evaluation reports the completion loss (eval_loss) and
exact-match accuracy of greedy answers (eval_exact_match) on the held-out pairs.

Without an argument: the default model's shape, and train.init_from must be set.
The optimizer: a lower peak rate than pretraining (1e-3 against 3e-3), a short warm-up,
cosine to 10%, no weight decay (a few hundred steps on a small task).
"""

import json
import os

from configs import base
from configs import default

# The data fields that decide the tokenizer: copied so the fine-tune finds the same one.
TOKENIZER_FIELDS = ("dataset", "data_dir", "text_key", "train_split", "tokenizer", "hf_tokenizer", "sp_model_type",
                    "vocab_size", "sp_train_bytes", "seq_len")


def pretrained_config(path: str) -> dict:
  """The resolved config (a dict) of an lm workdir, or the import config of an HF directory."""
  path = os.path.expanduser(path)
  with open(os.path.join(path, "config.json")) as f:
    raw = json.load(f)
  if "model" in raw and "data" in raw:  # an lm workdir
    tok_dir = os.path.join(path, "tokenizer")  # an imported workdir's own tokenizer copy
    if raw["data"].get("tokenizer") == "hf" and os.path.isfile(os.path.join(tok_dir, "tokenizer.json")):
      raw["data"]["hf_tokenizer"] = os.path.abspath(tok_dir)
    return raw
  from lm.hf.architectures import import_config  # a Hugging Face directory: config.json only, no weights read
  return import_config(path)[0].to_dict()


def get_config(arg=None):
  cfg = base.get_config()
  if arg:
    src = pretrained_config(arg)
    model_fields = {k: v for k, v in src["model"].items() if k in cfg.model}
    cfg.model.update(model_fields)
    cfg.data.update({k: src["data"][k] for k in TOKENIZER_FIELDS if k in src["data"]})
    cfg.train.init_from = os.path.abspath(os.path.expanduser(arg))
  else:  # the default model, with the data fields its tokenizer and positions depend on
    src = default.get_config()
    cfg.model.update(src.model.to_dict())
    cfg.data.update({k: src.data[k] for k in TOKENIZER_FIELDS})
  cfg.experiment = "finetune"
  d = cfg.data
  d.format = "sft"
  d.sft_eval_examples = 128
  d.sft_max_new_tokens = 16
  t = cfg.train
  t.steps = 300
  t.batch_size = 16
  t.eval_every = 100
  t.eval_steps = 8
  t.checkpoint_every = 100
  t.log_every = 10
  t.samples = 0
  o = cfg.optim
  o.lr = 1e-3
  o.warmup_steps = 20
  o.weight_decay = 0.0
  return cfg
