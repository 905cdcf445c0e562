"""A trained model from a workdir: its config, tokenizer, model and latest parameters.

Used by lm.evaluate and lm.generate. The mesh is rebuilt for the devices present (all on
`data` unless told otherwise), so a model trained on 8 devices loads on 1.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from lm import checkpoint as checkpoint_lib
from lm import data as data_lib
from lm import sharding
from lm.model import ModelConfig, Transformer


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
  """Raises FileNotFoundError naming the fix when `workdir` holds no run or no checkpoint."""
  cfg = checkpoint_lib.load_config(workdir)
  checkpoint_lib.latest_step_directory(workdir)  # fail before building anything
  if mesh_cfg is None:
    mesh_cfg = cfg.mesh.copy_and_resolve_references()
    mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor = -1, 1, 1
  mesh, rules = sharding.make_mesh(mesh_cfg), sharding.rules(mesh_cfg)
  tokenizer = data_lib.build_tokenizer(cfg.data)
  model = Transformer(ModelConfig.from_config(cfg.model, tokenizer.vocab_size))
  tokens = jnp.zeros((1, cfg.data.seq_len), jnp.int32)
  abstract, shardings = sharding.abstract_shardings(lambda r: model.init(r, tokens), mesh, rules,
                                                    jax.random.key(0))
  target = checkpoint_lib.abstract_with_shardings(abstract["params"], shardings["params"])
  params, step = checkpoint_lib.load_params(workdir, target)
  return Trained(cfg, model, params, tokenizer, mesh, rules, step)
