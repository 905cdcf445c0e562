"""Export an lm model as a Hugging Face checkpoint (lm/hf/importer.py reads one).

    export(model_cfg, params, tokenizer, OUT)      # OUT/config.json, model.safetensors, tokenizer files
    export_workdir(WORKDIR, OUT)                   # the latest checkpoint of a run

transformers' AutoModelForCausalLM loads what this writes (tests/test_hf_io.py).

A µP model (model.parameterization='mup') is written as the SP model that computes the same
logits: its multipliers folded into the weights (lm/parameterization.py:fold_into_sp), so a
tied µP model is written with an untied head (embedding.T / m). tests/test_mup.py checks
the re-imported logits equal the µP model's.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np

from lm import loading
from lm import parameterization as param_lib
from lm.errors import HFError
from lm.hf import files
from lm.hf.architectures import export_architecture, hf_config
from lm.hf.importer import np_dtype
from lm.hf.tokenizer import copy_files, write_byte_tokenizer, write_sentencepiece_tokenizer
from lm.hf.weights import TO_HF
from lm.model import unstack_layers


def unrolled(params: dict, m) -> dict:
  if m.scan_layers:
    return unstack_layers(params, m.n_layers)
  return params


def export(m, params, tokenizer, out_dir: str, dtype: str = "float32", max_shard_bytes: int | None = None) -> list[str]:
  """Writes OUT/config.json, generation_config.json, safetensors and the tokenizer files.

  m: the ModelConfig; params: lm parameters (any device layout; fetched to the host).
  Tokenizer files: an 'hf' tokenizer's own files; lm's byte and SentencePiece tokenizers as
  equivalent tokenizer.json files that start a text with BOS as lm does (lm/hf/tokenizer.py),
  the SentencePiece proto also as tokenizer.model.
  """
  out_dir = os.path.expanduser(out_dir)
  kind = export_architecture(m)
  host = jax.tree.map(np.asarray, jax.device_get(params))
  host = host["params"] if set(host) == {"params"} else host
  m, sp_params = param_lib.fold_into_sp(m, unrolled(host, m))  # 'sp': unchanged
  tensors = TO_HF[kind](sp_params, m, np_dtype(dtype))
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
    written += write_sentencepiece_tokenizer(tokenizer.model_proto, out_dir)
  return written


def export_workdir(workdir: str, out_dir: str, dtype: str = "float32", max_shard_bytes: int | None = None) -> list[str]:
  """Exports the latest checkpoint of an lm workdir (or a Hugging Face directory, re-written)."""
  workdir, out_dir = os.path.expanduser(workdir), os.path.expanduser(out_dir)
  if os.path.abspath(workdir) == os.path.abspath(out_dir):
    raise HFError("--to_hf must be a different directory from --from.")
  trained = loading.load(workdir)
  return export(trained.model.cfg, trained.params, trained.tokenizer, out_dir, dtype, max_shard_bytes)
