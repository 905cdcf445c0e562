"""Tiny configs shared by the tests, and the environment of the processes they start."""

import os

from configs import base
from lm.model import ModelConfig

VOCAB = 97  # prime, so no accidental divisibility hides a shape bug


def tiny_config(**model_overrides):
  cfg = base.get_config()
  m = cfg.model
  m.n_layers, m.d_model, m.n_heads, m.n_kv_heads, m.d_ff, m.max_seq_len = 2, 32, 4, 2, 64, 16
  m.update(model_overrides)
  cfg.data.seq_len = 16
  cfg.train.batch_size = 8
  return cfg


def tiny_model_config(vocab_size=VOCAB, **model_overrides) -> ModelConfig:
  return ModelConfig.from_config(tiny_config(**model_overrides).model, vocab_size)


def tiny_run_config(data_dir, **sections):
  """configs/tiny.py with the corpus in `data_dir`; `sections` like train=dict(steps=8)."""
  from configs import tiny
  cfg = tiny.get_config()
  cfg.data.data_dir = str(data_dir)
  for section, values in sections.items():
    cfg[section].update(values)
  return cfg


def shared_data_dir(tmp_path_factory):
  """One prepared corpus for the whole test session (the data tests use the same one)."""
  return tmp_path_factory.getbasetemp() / "lm_data"


def child_env(inherit=True, **extra) -> dict[str, str]:
  """The environment of a process a test starts: on the CPU, at the tests' XLA flags
  (tests/conftest.py sets LM_TEST_XLA_FLAGS), on top of this process's environment unless
  `inherit` is False (then only those two, for callers that merge it themselves)."""
  env = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": os.environ.get("LM_TEST_XLA_FLAGS", ""), **extra}
  return {**os.environ, **env} if inherit else env


def exit_codes() -> dict[str, int]:
  """lm/main.py's EXIT_* constants, read from its source: importing lm.main would define its
  absl flags in the test process, where lm.generate's --workdir already lives."""
  import ast
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lm", "main.py")
  with open(path) as f:
    tree = ast.parse(f.read())
  codes = {}
  for node in tree.body:
    if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Tuple):
      names = [t.id for t in node.targets[0].elts]
      if all(n.startswith("EXIT_") for n in names):
        codes.update(zip(names, ast.literal_eval(node.value)))
  return codes
