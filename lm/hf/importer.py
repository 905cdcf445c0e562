"""Import a Hugging Face checkpoint into lm (lm/hf/exporter.py writes one).

    cfg, params, tokenizer = load_hf(DIR)          # in memory: an lm config, numpy params, HFTokenizer
    import_to_workdir(DIR, WORKDIR)                # WORKDIR/config.json + tokenizer/ + checkpoints/0

An imported workdir is an ordinary lm workdir whose checkpoint (step 0) holds only
parameters, so `train.init_from=WORKDIR`, `lm.evaluate --workdir=WORKDIR` and
`lm.generate --workdir=WORKDIR` read it like any run. (Do not train *into* it: the step-0
checkpoint has no optimizer state; fine-tune into a new workdir with init_from.)

The lm config of an import is the default config (lm/schema.py) with the model fields from
config.json (lm/hf/architectures.py), data.tokenizer='hf' pointing at the tokenizer files, data.vocab_size =
the embedding's rows, and data.seq_len = min(context, 1024) unless given.
"""

from __future__ import annotations

import json
import os

import jax
import ml_dtypes
import numpy as np
from ml_collections import ConfigDict

from lm import checkpoint as checkpoint_lib
from lm import flops
from lm.data.hf_tokenizer import HFTokenizer
from lm.errors import HFError
from lm.hf import files
from lm.hf.architectures import import_config
from lm.hf.tokenizer import copy_files
from lm.hf.weights import TO_LM
from lm.model import ModelConfig, stack_layers

TOKENIZER_DIR = "tokenizer"


def model_config(cfg: ConfigDict) -> ModelConfig:
  return ModelConfig.from_config(cfg.model, cfg.data.vocab_size)


def to_model_layout(params: dict, m) -> dict:
  """Unrolled layers -> the layout the model declares (stacked under `layers` if it scans)."""
  if m.scan_layers:
    return stack_layers(params, m.n_layers)
  return params


def load_hf(hf_dir: str, seq_len: int | None = None, param_dtype: str = "float32",
            with_tokenizer: bool = True) -> tuple[ConfigDict, dict, HFTokenizer | None]:
  """(lm config, unrolled numpy params, tokenizer) of a Llama / GPT-2 checkpoint directory."""
  cfg, kind = import_config(hf_dir, seq_len, param_dtype)
  m = model_config(cfg)
  tokenizer = None
  if with_tokenizer:  # before the weights: a tokenizer problem is cheaper to report first
    tokenizer = HFTokenizer(hf_dir, vocab_size=m.vocab_size, model_config=files.read_config(hf_dir))
  try:
    params = TO_LM[kind](files.read_tensors(hf_dir), m, np_dtype(param_dtype))
  except HFError as e:
    raise HFError(f"{hf_dir}: {e}") from None
  return cfg, params, tokenizer


def import_to_workdir(hf_dir: str, workdir: str, seq_len: int | None = None, param_dtype: str = "float32") -> dict:
  """Writes an lm workdir holding the checkpoint; returns a summary of what was written."""
  hf_dir, workdir = os.path.expanduser(hf_dir), os.path.expanduser(workdir)
  if os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise FileExistsError(f"{workdir} already holds checkpoints/; import into a new directory.")
  cfg, params, tokenizer = load_hf(hf_dir, seq_len, param_dtype)
  m = model_config(cfg)
  os.makedirs(workdir, exist_ok=True)
  tok_dir = os.path.join(os.path.abspath(workdir), TOKENIZER_DIR)
  copy_files(tokenizer.path, tok_dir, tokenizer.special_ids())
  cfg.data.hf_tokenizer = tok_dir
  counts = flops.param_counts(m)
  checkpoint_lib.write_config(cfg, workdir, vocab_size=m.vocab_size, params_total=counts.total,
                              params_nonembedding=counts.nonembedding, hf_source=os.path.abspath(hf_dir),
                              tokenizer_vocab_size=tokenizer.tokenizer_vocab_size)
  ckpt = checkpoint_lib.Checkpointer(workdir, keep=1)
  state = {"params": jax.tree.map(jax.numpy.asarray, to_model_layout(params, m))}
  ckpt.save(0, state, {}, {"step": 0, "tokens": 0, "wall_s": 0.0, "hf_source": os.path.abspath(hf_dir)}, wait=True)
  ckpt.close()
  return {"workdir": workdir, "experiment": cfg.experiment, "params": counts.total, "vocab_size": m.vocab_size,
          "tokenizer_vocab_size": tokenizer.tokenizer_vocab_size, "seq_len": cfg.data.seq_len}


def np_dtype(name: str) -> np.dtype:
  # numpy has no bfloat16; jax's ml_dtypes does
  return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)
