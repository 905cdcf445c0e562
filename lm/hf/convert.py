"""Import a Hugging Face checkpoint into lm, and export an lm model as one.

    cfg, params, tokenizer = load_hf(DIR)          # in memory: an lm config, numpy params, HFTokenizer
    import_to_workdir(DIR, WORKDIR)                # WORKDIR/config.json + tokenizer/ + checkpoints/0
    export(model_cfg, params, tokenizer, OUT)      # OUT/config.json, model.safetensors, tokenizer files

An imported workdir is an ordinary lm workdir whose checkpoint (step 0) holds only
parameters, so `train.init_from=WORKDIR`, `lm.evaluate --workdir=WORKDIR` and
`lm.generate --workdir=WORKDIR` read it like any run. (Do not train *into* it: the step-0
checkpoint has no optimizer state; fine-tune into a new workdir with init_from.)

The lm config of an import is configs/base.py with the model fields from config.json
(lm/hf/config.py), data.tokenizer='hf' pointing at the tokenizer files, data.vocab_size =
the embedding's rows, and data.seq_len = min(context, 1024) unless given.
"""

from __future__ import annotations

import json
import os

import numpy as np
from ml_collections import ConfigDict

from lm.hf import files
from lm.hf.config import HFError, hf_config, import_config
from lm.hf.tokenizer import HFTokenizer, copy_files, write_byte_tokenizer
from lm.hf.weights import TO_HF, TO_LM

TOKENIZER_DIR = "tokenizer"


def model_config(cfg: ConfigDict):
  from lm.model import ModelConfig
  return ModelConfig.from_config(cfg.model, cfg.data.vocab_size)


def to_model_layout(params: dict, m) -> dict:
  """Unrolled layers -> the layout the model declares (stacked under `layers` if it scans)."""
  if m.scan_layers:
    from lm.model import stack_layers
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
  import jax
  from lm import checkpoint as checkpoint_lib
  from lm import flops
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


# ---- export ----

def unrolled(params: dict, m) -> dict:
  if m.scan_layers:
    from lm.model import unstack_layers
    return unstack_layers(params, m.n_layers)
  return params


def export(m, params, tokenizer, out_dir: str, dtype: str = "float32", max_shard_bytes: int | None = None) -> list[str]:
  """Writes OUT/config.json, generation_config.json, safetensors and the tokenizer files.

  m: the ModelConfig; params: lm parameters (any device layout; fetched to the host).
  Tokenizer files: an 'hf' tokenizer's own files; lm's byte tokenizer as an equivalent
  tokenizer.json; a SentencePiece model as tokenizer.model (its serialized proto, for
  sentencepiece.SentencePieceProcessor: no tokenizer.json is written for it).
  """
  import jax
  from lm.hf.config import export_architecture
  kind = export_architecture(m)
  host = jax.tree.map(np.asarray, jax.device_get(params))
  host = host["params"] if set(host) == {"params"} else host
  tensors = TO_HF[kind](unrolled(host, m), m, np_dtype(dtype))
  special = {"bos": tokenizer.bos_id, "eos": tokenizer.eos_id, "pad": tokenizer.pad_id}
  os.makedirs(out_dir, exist_ok=True)
  written = files.write_tensors(out_dir, tensors, max_shard_bytes)
  config = hf_config(m, special, dtype)
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(config, f, indent=2)
  eos_ids = list(tokenizer.eos_ids)
  with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
    json.dump({"bos_token_id": tokenizer.bos_id, "eos_token_id": eos_ids if len(eos_ids) > 1 else eos_ids[0],
               "pad_token_id": tokenizer.pad_id}, f, indent=2)
  written += ["config.json", "generation_config.json"]
  if tokenizer.kind == "hf":
    written += copy_files(tokenizer.path, out_dir, tokenizer.special_ids())
  elif tokenizer.kind == "bytes":
    written += write_byte_tokenizer(out_dir)
  elif tokenizer.kind == "sentencepiece":
    with open(os.path.join(out_dir, "tokenizer.model"), "wb") as f:
      f.write(tokenizer.model_proto)
    written.append("tokenizer.model")
  return written


def np_dtype(name: str) -> np.dtype:
  import ml_dtypes  # numpy has no bfloat16; jax's ml_dtypes does
  return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def export_workdir(workdir: str, out_dir: str, dtype: str = "float32", max_shard_bytes: int | None = None) -> list[str]:
  """Exports the latest checkpoint of an lm workdir (or a Hugging Face directory, re-written)."""
  from lm import loading
  if os.path.abspath(workdir) == os.path.abspath(out_dir):
    raise HFError("--to_hf must be a different directory from --from.")
  trained = loading.load(workdir)
  return export(trained.model.cfg, trained.params, trained.tokenizer, out_dir, dtype, max_shard_bytes)
