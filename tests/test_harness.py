"""lm as an lm-evaluation-harness model (lm/harness.py), offline: rolling log-likelihood equals
lm.evaluate, the repo's local tasks run through the harness and agree with lm/tasks.py, and
`python -m lm.harness` registers the model for lm_eval's own command line."""

import json
import math
import os
import subprocess
import sys

os.environ["HF_DATASETS_OFFLINE"] = "1"  # before datasets is imported: nothing may download
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is in the test extra: pip install -e '.[test]'")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from lm import evaluation  # noqa: E402
from lm import harness  # noqa: E402
from lm import scoring  # noqa: E402
from lm import tasks  # noqa: E402
from lm import train as train_lib  # noqa: E402
from tests.helpers import child_env, shared_data_dir, tiny_run_config  # noqa: E402

pytestmark = pytest.mark.slow  # a trained run behind the adapter; one test spawns lm_eval's CLI

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = os.path.join(ROOT, "lm", "harness_tasks")
TEXT = ("Mr. Speaker, Mr. President, and distinguished Members of the Congress: the state of our Union is "
        "strong, and the work before us is great. We meet in a season of change; let us meet it well.\n")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  cfg = tiny_run_config(shared_data_dir(tmp_path_factory), train=dict(steps=6, eval_every=6, checkpoint_every=6))
  path = tmp_path_factory.mktemp("harness") / "run"
  train_lib.train(cfg, str(path))
  return str(path)


@pytest.fixture(scope="module")
def model(workdir):
  return harness.LMHarness(workdir=workdir, batch_size=8)


def request(kind, *args):
  return Instance(request_type=kind, doc={}, arguments=args, idx=0)


def test_rolling_loglikelihood_equals_lm_evaluate_less_the_eos(tmp_path, model):
  path = tmp_path / "text.txt"
  path.write_text(TEXT)
  ev = evaluation.text_file_loss(model.trained, str(path))
  ids = model.tokenizer.encode(TEXT)
  assert ev["tokens"] == len(ids) + 1 and len(ids) > 4 * model.max_length  # several windows, + EOS
  (rolling,) = model.loglikelihood_rolling([request("loglikelihood_rolling", TEXT)])
  # lm.evaluate also scores the EOS that ends the document, in the document's last window
  start = len(ids) // model.max_length * model.max_length
  inputs, targets = ([model.tokenizer.bos_id] + ids)[start:], (ids + [model.tokenizer.eos_id])[start:]
  ((eos_logprob, _),) = model.scorer(model.trained.params, [scoring.Row(inputs, targets, len(targets) - 1)])
  assert -(rolling + eos_logprob) == pytest.approx(ev["loss"] * ev["tokens"], rel=1e-5)
  assert -rolling / math.log(2) / ev["bytes"] == pytest.approx(
      ev["bits_per_byte"] + eos_logprob / math.log(2) / ev["bytes"], rel=1e-5)


def test_loglikelihood_moves_trailing_spaces_to_the_continuation(model):
  a, b = model.loglikelihood([request("loglikelihood", "The state of the Union ", "is strong"),
                              request("loglikelihood", "The state of the Union", " is strong")])
  assert a == b and a[0] < 0


def test_generate_until_stops_at_the_until_strings(model):
  out = model.generate_until([request("generate_until", "The Congress", {"until": ["e"], "max_gen_toks": 6}),
                              request("generate_until", "We", {"until": [], "max_gen_toks": 6})])
  assert "e" not in out[0] and len(out[0]) <= 6 and 0 < len(out[1]) <= 6  # a byte token is at most a character


def test_local_tasks_run_offline_and_multiple_choice_agrees_with_lm_tasks(model):
  results = lm_eval.simple_evaluate(model=model, tasks=["lm_sotu_mc", "lm_sotu_gen", "lm_heldout"], limit=8,
                                    task_manager=TaskManager(include_path=TASKS))["results"]
  items = harness_items()[:8]
  ours = tasks.MultipleChoice("sotu", items, model.tokenizer, model.scorer)(model.trained.params)
  assert results["lm_sotu_mc"]["acc,none"] == ours["task_sotu_acc"]
  assert results["lm_sotu_mc"]["acc_norm,none"] == ours["task_sotu_acc_norm"]
  assert 0 <= results["lm_sotu_gen"]["exact_match,none"] <= 1
  assert results["lm_heldout"]["bits_per_byte,none"] > 0


def harness_items():
  with open(os.path.join(TASKS, "sotu_mc.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def test_local_multiple_choice_file_is_lm_tasks_own_items():
  assert harness_items() == tasks.sotu_continuations(len(harness_items()))


def test_python_m_lm_harness_registers_the_model_for_lm_evals_cli(workdir):
  env = child_env(PYTHONPATH=ROOT)
  out = subprocess.run([sys.executable, "-m", "lm.harness", "run", "--model", "lm", "--model_args",
                        f"workdir={workdir}", "--include_path", TASKS, "--tasks", "lm_sotu_mc", "--limit", "4",
                        "--batch_size", "8"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "lm_sotu_mc" in out.stdout and "acc_norm" in out.stdout
