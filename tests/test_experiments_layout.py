"""experiments/ as places (experiments/README.md): no experiment imports another sub-package, the
launchers import only the standard library, no module reads another module's private names,
and every old command name still runs its new command after one line on stderr."""

import ast
import contextlib
import io
import pathlib
import runpy
import sys
import warnings

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PLACES = ("sweep", "launch", "bench", "studies")
MOVED = {  # old module -> new module, as experiments/README.md lists them
    "experiments.collect": "experiments.sweep.collect",
    "experiments.launch_tpu": "experiments.launch.tpu",
    "experiments.launch_slurm": "experiments.launch.slurm",
    "experiments.bench_train_step": "experiments.bench.train_step",
    "experiments.bench_inference": "experiments.bench.inference",
    "experiments.bench_data": "experiments.bench.data",
    "experiments.quality_vs_cost": "experiments.studies.quality_vs_cost",
    "experiments.sft_sotu": "experiments.studies.sft_sotu",
}


def imports(path: pathlib.Path) -> list[str]:
  """Every module a file imports, at any depth (function-local imports too)."""
  names = []
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names += [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module:
      names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
  return names


def files(*parts) -> list[pathlib.Path]:
  return sorted(ROOT.joinpath(*parts).rglob("*.py"))


@pytest.mark.parametrize("place", PLACES)
def test_an_experiment_imports_lm_and_configs_but_no_other_experiment(place):
  found = [(p.relative_to(ROOT).as_posix(), name) for p in files("experiments", place) for name in imports(p)
           if name.startswith("experiments.") and not name.startswith(f"experiments.{place}")]
  assert found == []


def test_the_launchers_need_only_the_standard_library():
  found = [(p.name, name) for p in files("experiments", "launch") for name in imports(p)
           if name.split(".")[0] not in sys.stdlib_module_names and not name.startswith("experiments.launch")]
  assert found == []


def test_no_module_reads_another_modules_private_names():
  """`module._name` where `module` is an imported module (lm's and experiments' files)."""
  found = []
  for p in files("lm") + files("experiments"):
    tree = ast.parse(p.read_text())
    modules = {a.asname or a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
               for a in n.names}
    found += [(p.relative_to(ROOT).as_posix(), f"{n.value.id}.{n.attr}") for n in ast.walk(tree)
              if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in modules
              and n.attr.startswith("_") and not n.attr.startswith("__")]
  assert found == []


@pytest.fixture
def fresh(request):
  """The old module neither imported before the test nor left behind by it."""
  old = request.node.callspec.params["old"]
  sys.modules.pop(old, None)
  yield
  sys.modules.pop(old, None)


@pytest.mark.parametrize("old,new", MOVED.items())
def test_an_old_import_gives_the_new_module(old, new, fresh):
  with pytest.warns(DeprecationWarning, match=f"{old} is deprecated; import {new}"):
    module = __import__(old, fromlist=["_"])
  assert module is sys.modules[new] and module.__name__ == new


@pytest.mark.parametrize("old,new,argv,code", [
    ("experiments.collect", "experiments.sweep.collect", ["--sweep_dir=/nonexistent/sweep"], 2),
    ("experiments.launch_tpu", "experiments.launch.tpu", ["--zone=z"], 2),
    ("experiments.launch_slurm", "experiments.launch.slurm", ["--nodes=1", "--gpus_per_node=1"], 2),
])
def test_an_old_command_says_its_new_name_on_one_stderr_line_then_runs_it(old, new, argv, code, fresh, monkeypatch):
  monkeypatch.setattr(sys, "argv", [old, *argv])
  err = io.StringIO()
  with contextlib.redirect_stderr(err), warnings.catch_warnings(), pytest.raises(SystemExit) as e:
    warnings.simplefilter("ignore", RuntimeWarning)  # runpy: the new module was imported already
    runpy.run_module(old, run_name="__main__", alter_sys=True)
  assert e.value.code == code
  first, *rest = err.getvalue().splitlines()
  assert first == f"python -m {old} is deprecated; use python -m {new} (same arguments)."
  assert rest and "deprecated" not in "\n".join(rest)  # then the new command's own message
