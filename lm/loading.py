"""A trained model from a workdir: its config, tokenizer, model and latest parameters.

Used by lm.evaluate, lm.generate and lm.convert; `--workdir` may also name a Hugging Face
checkpoint directory (lm/hf/). The mesh is rebuilt for the devices present (all on
`data` unless told otherwise), so a model trained on 8 devices loads on 1.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import numpy as np
from ml_collections import ConfigDict

from lm import checkpoint as checkpoint_lib
from lm import data as data_lib
from lm import sharding
from lm.errors import ConfigError
from lm.hf import files as hf_files
from lm.hf import importer
from lm.model import ModelConfig, Transformer, stack_layers


@dataclasses.dataclass
class Trained:
  cfg: ConfigDict
  model: Transformer
  params: Any
  tokenizer: data_lib.Tokenizer
  mesh: jax.sharding.Mesh
  rules: tuple
  step: int


def load(workdir: str, mesh_cfg: ConfigDict | None = None) -> Trained:
  """The newest intact checkpoint of an lm workdir (an imported one included; a damaged newer
  one is skipped with a warning, as training does: lm/checkpoint.py), or a Hugging Face
  checkpoint directory (config.json + *.safetensors of a LlamaForCausalLM / GPT2LMHeadModel,
  with its tokenizer.json), imported in memory as step 0. '~' is expanded.

  Raises FileNotFoundError naming the fix when `workdir` holds no run or no checkpoint, and
  lm.errors.HFError (a ConfigError) when a Hugging Face checkpoint cannot be read.
  """
  workdir = os.path.expanduser(workdir)
  hf = hf_files.is_hf_dir(workdir)
  if hf:
    cfg, hf_params, tokenizer = importer.load_hf(workdir)
  else:
    cfg = checkpoint_lib.load_config(workdir)
    checkpoint_lib.latest_step_directory(workdir)  # fail before building anything
    _local_tokenizer_files(cfg, workdir)
    tokenizer = data_lib.build_tokenizer(cfg.data)
  if mesh_cfg is None:
    mesh_cfg = cfg.mesh.copy_and_resolve_references()
    mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor = -1, 1, 1
  mesh, rules = sharding.make_mesh(mesh_cfg), sharding.rules(mesh_cfg)
  model = Transformer(ModelConfig.from_config(cfg.model, tokenizer.vocab_size))
  target = checkpoint_lib.abstract_with_shardings(*sharding.abstract_params(model, mesh, rules))
  if hf:
    params, step = place_params(importer.to_model_layout(hf_params, model.cfg), target, workdir), 0
  else:
    params, step = checkpoint_lib.load_params(workdir, target)
  return Trained(cfg, model, params, tokenizer, mesh, rules, step)


def _local_tokenizer_files(cfg: ConfigDict, workdir: str) -> None:
  """An imported workdir keeps its tokenizer in WORKDIR/tokenizer: use that copy, so a
  workdir that was moved or copied elsewhere still finds it."""
  local = os.path.join(workdir, "tokenizer")
  if cfg.data.tokenizer == "hf" and os.path.isfile(os.path.join(local, "tokenizer.json")):
    cfg.data.hf_tokenizer = os.path.abspath(local)


def place_params(params, target, source: str):
  """Host parameters -> arrays placed as `target` (ShapeDtypeStructs with shardings), after
  checking that every parameter is there with the target's shape."""
  flat, _ = jax.tree_util.tree_flatten_with_path(params)
  want, _ = jax.tree_util.tree_flatten_with_path(target)
  have = {jax.tree_util.keystr(p): x for p, x in flat}
  need = {jax.tree_util.keystr(p): x for p, x in want}
  if set(have) != set(need):
    raise ConfigError(f"{source}: the parameters {sorted(set(need) - set(have))[:4]} are missing and "
                      f"{sorted(set(have) - set(need))[:4]} unexpected for this model config.")
  for name, x in need.items():
    if tuple(have[name].shape) != tuple(x.shape):
      raise ConfigError(f"{source}: parameter {name} has shape {tuple(have[name].shape)} but the model config "
                        f"gives {tuple(x.shape)}; use the checkpoint's own model config (configs/finetune.py:PATH "
                        "copies it).")
  return jax.tree.map(lambda x, t: jax.device_put(np.asarray(x).astype(t.dtype), t.sharding), params, target)


def init_params_from(path: str, abstract_params) -> tuple[Any, int]:
  """`train.init_from`: parameters from an lm workdir / checkpoint, or from a Hugging Face
  checkpoint directory (imported on the fly), placed by the shardings in abstract_params."""
  if hf_files.is_hf_dir(path):
    cfg, params, _ = importer.load_hf(path, with_tokenizer=False)
    if "layers" in abstract_params:  # the fine-tuning model scans its layers
      params = stack_layers(params, cfg.model.n_layers)
    return place_params(params, abstract_params, path), 0
  return checkpoint_lib.load_params(path, abstract_params)
