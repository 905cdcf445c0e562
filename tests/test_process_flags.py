"""Importing lm changes no process state; entry points set the process-wide XLA flags.

Each import runs in a fresh interpreter whose environment has no XLA_FLAGS and no
LM_XLA_CPU_DEFAULTS, the case in which lm used to append its flag on import.
"""

import json
import os
import pkgutil
import subprocess
import sys

import pytest

import lm
from lm import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMPORT_AND_DIFF = """
import importlib, json, os, sys
before = dict(os.environ)
for name in sys.argv[1:]:
  importlib.import_module(name)
after = dict(os.environ)
changed = {k: [before.get(k), after.get(k)] for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
print(json.dumps(changed))
"""


def _modules():
  """(library modules, command-line modules) of lm. A command-line module defines its own
  absl flags (several define --workdir), so each is imported in a process of its own."""
  library, commands = [], []
  for info in pkgutil.walk_packages(lm.__path__, "lm."):
    spec = info.module_finder.find_spec(info.name)
    with open(spec.origin, encoding="utf-8") as f:
      source = f.read()
    (commands if 'if __name__ == "__main__":' in source else library).append(info.name)
  return library, commands


LIBRARY, COMMANDS = _modules()


def _env_changes(modules):
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "LM_XLA_CPU_DEFAULTS")}
  out = subprocess.run([sys.executable, "-c", IMPORT_AND_DIFF, *modules], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.splitlines()[-1])


def test_the_module_lists_are_complete():
  assert {"lm.ops", "lm.model", "lm.kv_cache", "lm.train", "lm.decode", "lm.cli"} <= set(LIBRARY)
  assert {"lm.main", "lm.evaluate", "lm.generate", "lm.convert", "lm.evaluate_sft"} <= set(COMMANDS)


def test_importing_lm_and_every_library_module_leaves_the_environment_as_it_was():
  assert _env_changes(["lm", *LIBRARY]) == {}


@pytest.mark.parametrize("module", COMMANDS)
def test_importing_a_command_line_module_leaves_the_environment_as_it_was(module):
  assert _env_changes(["lm", module]) == {}  # its flags are set under __main__ only


@pytest.fixture
def clean_env(monkeypatch):
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  monkeypatch.delenv("LM_XLA_CPU_DEFAULTS", raising=False)
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")  # the tree-reduction flag is for the CPU: tested below
  monkeypatch.setattr(cli, "_EIGEN_DOTS_JAXLIB", "")  # any jaxlib: the version gate is tested below
  return monkeypatch


EIGEN, NO_TREE = "--xla_cpu_experimental_ynn_fusion_type=", "--xla_disable_hlo_passes=tree_reduction_rewriter"


def test_set_xla_flags_appends_each_flag_once(clean_env):
  clean_env.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
  cli.set_xla_flags()
  cli.set_xla_flags()
  assert os.environ["XLA_FLAGS"] == f"--xla_dump_to=/tmp/x {EIGEN} {NO_TREE}"


@pytest.mark.parametrize("env, expected", [
    ({"LM_XLA_CPU_DEFAULTS": "1"}, None),
    ({"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=dot"}, f"--xla_cpu_experimental_ynn_fusion_type=dot {NO_TREE}"),
    ({"XLA_FLAGS": "--xla_disable_hlo_passes=algsimp"}, f"--xla_disable_hlo_passes=algsimp {EIGEN}"),
])
def test_set_xla_flags_keeps_a_users_choice(clean_env, env, expected):
  for k, v in env.items():
    clean_env.setenv(k, v)
  cli.set_xla_flags()
  assert os.environ.get("XLA_FLAGS") == expected


def test_set_xla_flags_leaves_an_unmeasured_jaxlib_alone(clean_env):
  clean_env.setattr(cli, "_EIGEN_DOTS_JAXLIB", "no jaxlib version starts with this")
  cli.set_xla_flags()
  assert os.environ["XLA_FLAGS"] == NO_TREE


def test_set_xla_flags_keeps_the_tree_reductions_on_an_accelerator(clean_env):
  clean_env.setenv("JAX_PLATFORMS", "cuda")
  cli.set_xla_flags()
  assert os.environ["XLA_FLAGS"] == EIGEN


def test_the_test_process_runs_with_the_entry_points_flags():
  """conftest.py applies them, so in-process numerics are those of `python -m lm.main`."""
  before = os.environ.get("XLA_FLAGS")
  cli.set_xla_flags()
  assert os.environ.get("XLA_FLAGS") == before
