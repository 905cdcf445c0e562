"""Every command README.md shows works (issue 14), run as a user would, on tiny settings.

COMMANDS lists each command of the README, exactly as written there (continuation lines joined,
trailing comments and `[optional]` brackets dropped), in the order they run here, with what
running it needs: tiny overrides appended, or a reason it is not run (Skip). A README command
missing from the table fails `test_the_table_covers_every_readme_command`, so a new command
comes with its test; a table entry the README no longer shows fails it too. README paths
(`runs/`, `/tmp/smoke`, `~/models/...`, `train.jsonl`, ...) are mapped into a temporary
directory, so nothing is written in the checkout.

To add a command: copy it from the README into COMMANDS as Run(extra args) or Skip(reason).
The cluster launchers run only with --dry_run and wait for the experiments/ restructure.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from tests.helpers import child_env, shared_data_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXECUTABLES = ("python", "python3", "pip", "gcloud")


@dataclasses.dataclass(frozen=True)
class Run:
  extra: tuple = ()       # appended arguments ({data} is the prepared corpus directory)
  subs: tuple = ()        # (README text, replacement) pairs for this command only
  timeout: int = 900


@dataclasses.dataclass(frozen=True)
class Skip:
  reason: str


DATA = "--config.data.data_dir={data}"
QUICK = (DATA, "--config.train.steps=2", "--config.train.eval_every=2", "--config.train.checkpoint_every=2",
         "--config.train.eval_steps=1", "--config.train.batch_size=8",
         "--config.optim.warmup_steps=1")  # the ladder's warm-up (10 steps and up) does not fit 2 steps
SFT_QUICK = QUICK + ("--config.data.sft_eval_examples=2", "--config.data.sft_max_new_tokens=2", "--config.train.samples=0")
SWEEP_QUICK = ("--config.budgets=(3e9,)", "--config.budget_models=(('p8k','p50k'),)",
               "--config.min_steps=10",  # at 3e9 the rungs train 39 and 11 steps: below the sweep's 100
               "--config.overrides.data.data_dir={data}")
COMMITTED_RESULTS = ("runs/iso/results.csv", "experiments/results/isoflop_cpu/results.csv")
CLUSTER = Skip("cluster set-up or a cluster launcher: tests/test_launchers.py and tests/test_cluster_sweeps.py "
               "pin the launchers' --dry_run scripts against fake gcloud and SLURM")
SUITE = Skip("the test suite itself (and its set-up), which runs this test")
BENCH = Skip("a benchmark, minutes by design (its numbers are in experiments/results/)")

COMMANDS = {  # README command -> how this test runs it, in running order
    "python3 -m venv .venv": SUITE,
    "pip install -e .": Skip("installs the checkout this test runs from"),
    "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu": SUITE,
    "pip install -e '.[test]'": SUITE,
    "pip install -e '.[mkl]'": Skip("the optional MKL extra, 1.1 GB; tests/test_cpu_gemm.py runs on whichever BLAS is linked"),
    "python -m pytest -q -n 2 tests": SUITE,
    "python -m pytest -q --extended tests": SUITE,
    "python -m lm.main --config=configs/default.py --workdir=runs/default": Run(QUICK + ("--config.train.samples=1",)),
    "python -m lm.main --config=configs/default.py --workdir=runs/wide --config.model.d_model=384 "
    "--config.model.n_heads=6 --config.optim.lr=2e-3 --config.train.steps=2000": Run(QUICK + ("--config.train.samples=0",)),
    "python -m lm.main --config=configs/ladder.py:p5m --workdir=runs/p5m": Run(QUICK + ("--config.train.samples=0",)),
    "python -m lm.main --config=configs/tiny.py --workdir=/tmp/smoke": Run((DATA,)),  # as it is: samples included
    "python -m configs.ladder": Run(),
    "XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m lm.main --config=configs/tiny.py "
    "--workdir=/tmp/mesh --config.mesh.data=2 --config.mesh.fsdp=2 --config.mesh.tensor=2": Run((DATA,)),
    "python -m lm.evaluate --workdir=runs/default --text=my_heldout.txt --json": Run(),
    "python -m lm.generate --workdir=runs/default --prompt=\"The state of the Union is\" --temperature=0 "
    "--max_new_tokens=50": Run(),
    "python -m lm.generate --workdir=runs/default --prompt_file=prompts.txt": Run(("--max_new_tokens=8",)),
    "python -m experiments.sweep --config=experiments/sweeps/isoflop_cpu.py --sweep_dir=runs/iso --dry_run":
        Run(SWEEP_QUICK),
    "python -m experiments.sweep --config=experiments/sweeps/isoflop_cpu.py --sweep_dir=runs/iso --parallel=2":
        Run(SWEEP_QUICK),
    "python -m experiments.sweep --status --sweep_dir=runs/iso": Run(),
    "python -m experiments.sweep.collect --sweep_dir=runs/iso": Run(),
    # The fits need a grid; the tiny sweep above has one budget, so they read the committed CPU sweep.
    "python -m lm.scaling fit --results=runs/iso/results.csv --law=isoflop --out=runs/iso/FIT.json":
        Run(("--bootstrap=20",), subs=(COMMITTED_RESULTS,)),
    "python -m lm.scaling backtest --results=runs/iso/results.csv --law=chinchilla --holdout=largest_budget "
    "--json=OUT": Skip("a profile-likelihood fit per held-out budget; tests/test_scaling_stats.py runs backtests"),
    "python -m lm.scaling report --results=runs/iso/results.csv --out_dir=runs/iso/report":
        Skip("the report's figures and page; tests/test_scaling_stats.py builds one from a synthetic table"),
    "python -m lm.scaling report --results=experiments/results/isoflop_cpu/results.csv --out_dir=DIR":
        Skip("the same report on the committed table (tests/test_scaling_stats.py covers the code)"),
    "python -m lm.scaling plan --fit=runs/iso/FIT.json --flops=1e13": Run(),
    "python -m lm.scaling plot --results=runs/iso/results.csv --fit=runs/iso/FIT.json --out_dir=runs/iso":
        Run(("--bootstrap=20",), subs=(COMMITTED_RESULTS,)),
    "python -m experiments.bench.inference": BENCH,
    "python -m lm.coord_check --out=coord_check.png": Run(("--widths=16,32", "--steps=1")),
    "python -m experiments.studies.lr_transfer": Run(("--smoke", "--out=runs/lr_smoke")),
    "python -m experiments.studies.depth_transfer": Run(("--smoke", "--out=runs/depth_smoke")),
    "python -m experiments.studies.muon_vs_adamw": Run(("--smoke", "--out=runs/muon_smoke")),
    "python -m experiments.studies.recipe_table": Run(),
    "python -m experiments.studies.quality_vs_cost --train --sweep_dir=runs/qvc --out_dir=experiments/results/quality_vs_cost":
        Skip("trains six ladder rungs for 38 minutes; tests/test_quality_vs_cost.py runs its code on tiny runs"),
    "python -m lm.convert --from_hf=~/models/llama-3.2-1b --to=runs/llama1b": Run(),
    "python -m lm.convert --from=runs/default --to_hf=exports/default": Run(),
    "python -m lm.generate --workdir=~/models/llama-3.2-1b --prompt=\"...\"": Run(("--max_new_tokens=4",)),
    "python -m lm.main --config=configs/finetune.py:runs/llama1b --workdir=runs/ft "
    "--config.data.sft_train=train.jsonl --config.data.sft_eval=heldout.jsonl": Run(SFT_QUICK),
    "python -m experiments.studies.sft_sotu build --out=runs/sft_sotu": Run(),
    "python -m lm.main --config=configs/finetune.py:runs/default --workdir=runs/sotu_sft "
    "--config.data.sft_train=runs/sft_sotu/train.jsonl --config.data.sft_eval=runs/sft_sotu/heldout.jsonl":
        Run(SFT_QUICK),
    "python -m experiments.studies.sft_sotu compare --examples=runs/sft_sotu/heldout.jsonl --workdirs=runs/default,runs/sotu_sft":
        Run(("--max_examples=4",)),
    "python -m lm.evaluate_sft": Run(("--workdir=runs/sotu_sft", "--examples=runs/sft_sotu/heldout.jsonl",
                                      "--max_examples=4")),
    "gcloud auth login": CLUSTER,
    "gcloud config set project PROJECT": CLUSTER,
    "gcloud storage buckets create gs://my-lm --location=us-west4 --uniform-bucket-level-access "
    "--enable-hierarchical-namespace": Skip("creates a cloud bucket"),
    "python -m experiments.launch.tpu --zone=us-west4-a --accelerator_type=v5litepod-16 --spot --bucket=gs://my-lm "
    "--sweep=\"--config=experiments/sweeps/isoflop_cpu.py --sweep_dir=/mnt/my-lm/sweeps/iso1\" --dry_run": CLUSTER,
    "python3 -m experiments.launch.slurm --nodes=2 --gpus_per_node=8 --time=24:00:00 --partition=gpu "
    "--account=myproj --sweep=\"--config=experiments/sweeps/isoflop_cpu.py --sweep_dir=/shared/$USER/sweeps/iso1\" "
    "--dry_run": CLUSTER,
    "gcloud compute tpus queued-resources delete <name> --zone=<zone> --force --quiet": CLUSTER,
    "pip install -U \"jax[cuda12]\"": CLUSTER,
    "python -m experiments.bench.train_step": BENCH,
    "python -m experiments.bench.train_step --rounds=3 --peer_malloc=lm": BENCH,
    "python -m experiments.bench.data": BENCH,
    "python -m experiments.bench.matmul_shapes": Run(("--tokens=64", "--blocks=4096", "--repeats=1")),
    "python -m experiments.bench.decode_products": Run(("--rows=1,3", "--layers=1", "--repeats=1")),
    "python3 -m experiments.launch.slurm --per_point --max_running=16 --gpus_per_node=8 --time=4:00:00 "
    "--partition=gpu --sweep=\"--config=experiments/sweeps/isoflop_cpu.py --sweep_dir=/shared/$USER/sweeps/iso1\" "
    "--wait --dry_run": CLUSTER,
    "python -m experiments.launch.tpu --per_point --max_slices=8 --zone=us-west4-a --accelerator_type=v5litepod-8 "
    "--spot --bucket=gs://my-lm --sweep=\"--config=experiments/sweeps/isoflop_cpu.py --sweep_dir=/mnt/my-lm/sweeps/iso1\" "
    "--dry_run": CLUSTER,
    "python -m lm.evaluate --workdir=runs/default --text=heldout": Run(),
    "python -m lm.harness run --model lm --model_args workdir=runs/default --batch_size 64 --include_path "
    "lm/harness_tasks --tasks lm_sotu_mc lm_sotu_gen lm_heldout":
        Skip("needs the eval extra's lm-eval; tests/test_harness.py runs these local tasks through lm_eval"),
    "python -m lm.harness run --model lm --model_args workdir=runs/default --batch_size 64 --tasks hellaswag "
    "arc_easy arc_challenge lambada_openai": Skip("downloads HF datasets (needs internet)"),
    "python -m lm.harness": Skip("lm_eval's own command line (above)"),
    "pip install -e '.[eval]'": Skip("an optional extra; the test extra includes it"),
    "pip install -e '.[tracking]'": Skip("an optional extra; the test extra includes it"),
    "pip install xprof": Skip("a trace viewer, not part of lm"),
    "python -m lm.main --config=configs/default.py --workdir=runs/default --config.logging.wandb=True "
    "--config.logging.wandb_project=lm --config.logging.wandb_group=my-sweep":
        Skip("logs to W&B's servers; tests/test_tracking.py runs it in W&B's offline mode"),
    "python -m lm.main --config=configs/default.py --workdir=runs/prof --config.logging.profile_steps=20:25":
        Skip("a 25-step trace of the default model; tests/test_tracking.py traces a tiny run"),
    "python -m experiments.sweep ... --point=NAME": Skip("a pattern, not a command (experiments/README.md)"),
    "python -m experiments.sweep --status": Skip("the same command as the --status line above, without its flag"),
    "python -m experiments.sweep.collect": Skip("the same command as the collect line above, without its flag"),
    "python -m lm...": Skip("a pattern, not a command"),
}


def readme_commands(text: str) -> list[str]:
  """The commands of fenced code blocks (lines starting with an executable, `&&` split) and of
  inline code spans that start with one, normalised as COMMANDS writes them."""
  found = []
  blocks = re.findall(r"^[ \t]*```[^\n]*\n(.*?)^[ \t]*```", text, re.S | re.M)
  for block in blocks:
    for line in re.sub(r"\\\n\s*", " ", block).splitlines():
      for part in line.split(" && "):
        found.append(_normalise(part))
  prose = re.sub(r"^[ \t]*```[^\n]*\n.*?^[ \t]*```", "", text, flags=re.S | re.M)
  found += [_normalise(span) for span in re.findall(r"`([^`\n]+)`", prose)]
  return list(dict.fromkeys(c for c in found if _is_command(c)))


def _normalise(command: str) -> str:
  command = re.sub(r"\s+#.*$", "", command.strip())         # a trailing comment
  command = re.sub(r"\[(--[^\]]*)\]", r"\1", command)      # [--optional flags]
  return " ".join(command.split())


def _is_command(command: str) -> bool:
  words = [w for w in command.split() if not re.match(r"^[A-Z_]+=", w)]
  return bool(words) and words[0] in EXECUTABLES and len(command.split()) > 1


def test_the_table_covers_every_readme_command():
  with open(os.path.join(ROOT, "README.md")) as f:
    shown = readme_commands(f.read())
  missing = [c for c in shown if c not in COMMANDS]
  stale = [c for c in COMMANDS if c not in shown]
  assert not missing, f"README commands not in tests/test_readme.py's COMMANDS (add Run(...) or Skip(...)): {missing}"
  assert not stale, f"COMMANDS entries the README no longer shows: {stale}"
  assert "XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m lm.main --config=configs/tiny.py " \
         "--workdir=/tmp/mesh --config.mesh.data=2 --config.mesh.fsdp=2 --config.mesh.tensor=2" in shown


def test_the_readme_exit_statuses_are_lm_mains():
  from tests.helpers import exit_codes
  with open(os.path.join(ROOT, "README.md")) as f:
    text = " ".join(f.read().split())
  codes = exit_codes()
  for name, phrase in (("EXIT_FINISHED", "finished"), ("EXIT_FAILED", "an error"), ("EXIT_DIVERGED", "diverged"),
                       ("EXIT_PREEMPTED", "preempted"), ("EXIT_INTERRUPTED", "stopped by a second Ctrl-C")):
    assert f"{codes[name]} {phrase}" in text, (name, codes[name])


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
  """Where README paths point during the run, with the inputs the commands read."""
  from lm.data import sotu
  from tests import hf_helpers
  tmp = tmp_path_factory.mktemp("readme")
  texts = [r["text"] for r in sotu.read_corpus()[-2:]]
  (tmp / "my_heldout.txt").write_text(texts[0][:3000])
  (tmp / "prompts.txt").write_text("Fellow citizens\nOur economy\n")
  pairs = [{"prompt": f"Q: who spoke in {y}?\nA:", "completion": f" {p}"} for y, p in ((1790, "Washington"),
                                                                                     (1801, "Jefferson"))] * 8
  for name in ("train.jsonl", "heldout.jsonl"):
    (tmp / name).write_text("".join(json.dumps(p) + "\n" for p in pairs))
  hf_helpers.make_llama(str(tmp / "hf_llama"), max_position_embeddings=64)
  return tmp


def _argv(command: str, plan: Run, tmp, data) -> tuple[list[str], dict]:
  for old, new in plan.subs:
    command = command.replace(old, new)
  for old, new in (("~/models/llama-3.2-1b", f"{tmp}/hf_llama"), ("/tmp/smoke", f"{tmp}/smoke"),
                   ("/tmp/mesh", f"{tmp}/mesh"), ("=my_heldout.txt", f"={tmp}/my_heldout.txt"),
                   ("=prompts.txt", f"={tmp}/prompts.txt"), ("=train.jsonl", f"={tmp}/train.jsonl"),
                   ("=heldout.jsonl", f"={tmp}/heldout.jsonl")):
    command = command.replace(old, new)
  command = re.sub(r"(?<![\w/])(runs|exports)/", lambda m: f"{tmp}/{m.group(1)}/", command)
  words = shlex.split(command) + [re.sub(r"(?<![\w/])runs/", f"{tmp}/runs/", a.format(data=data)) for a in plan.extra]
  env = child_env()
  while re.match(r"^[A-Z_]+=", words[0]):
    key, value = words.pop(0).split("=", 1)
    env[key] = value
  assert words[0] in ("python", "python3"), words
  return [sys.executable, *words[1:]], env


def _run(command: str, plan: Run, sandbox, data) -> str | None:
  """None when the command exits 0 without a traceback, else what failed."""
  argv, env = _argv(command, plan, sandbox, data)
  done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=plan.timeout)
  if done.returncode != 0 or "Traceback" in done.stderr:
    return f"{command}\n  exit {done.returncode}: {(done.stdout + done.stderr)[-1500:]}"
  return None


QUICKSTART = "python -m lm.main --config=configs/default.py --workdir=runs/default"


def test_the_quickstart_command_runs(sandbox, tmp_path_factory):
  """The CI tier's share of the walk below: the README's first command, with its table entry."""
  failure = _run(QUICKSTART, COMMANDS[QUICKSTART], sandbox, shared_data_dir(tmp_path_factory))
  assert failure is None, failure
  summary = json.loads((sandbox / "runs" / "default" / "summary.json").read_text())
  assert summary["status"] == "finished" and summary["steps"] == 2


def test_every_local_readme_command_runs(sandbox, tmp_path_factory):
  data = shared_data_dir(tmp_path_factory)
  failures = [f for command, plan in COMMANDS.items() if not isinstance(plan, Skip)
              for f in [_run(command, plan, sandbox, data)] if f]
  assert not failures, "\n\n".join(failures)
