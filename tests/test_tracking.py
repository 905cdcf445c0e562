"""What a run writes beside metrics.jsonl (lm/tracking.py): a Weights & Biases run in offline
mode (its records read back from the .wandb file), the same run resumed after preemption,
TensorBoard scalars including the task metrics and MFU, and a jax.profiler trace. Nothing
here reaches the network."""

import glob
import json
import os
import signal
import struct
import subprocess
import sys
import time

import pytest

wandb = pytest.importorskip("wandb", reason="wandb is in the test extra: pip install -e '.[test]'")

from lm import train as train_lib  # noqa: E402
from lm.metrics import read_jsonl  # noqa: E402
from tests.helpers import child_env, shared_data_dir, tiny_run_config  # noqa: E402

pytestmark = pytest.mark.slow  # full training runs, one of them preempted and resumed as processes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_CONSOLE", "off")  # no stdout capture inside pytest


def wandb_records(run_dir: str) -> list:
  """The records of an offline run's transaction log (run-ID.wandb): a 7-byte header
  (":W&B", magic, version), then 32 KiB blocks of records, each with a 7-byte header (crc32,
  length, type: 1 full, 2 first, 3 middle, 4 last) and a protobuf wandb Record."""
  from wandb.proto import wandb_internal_pb2  # local: the protobuf module only this reader needs
  (path,) = glob.glob(os.path.join(run_dir, "run-*.wandb"))
  with open(path, "rb") as f:
    raw = f.read()
  assert raw[:4] == b":W&B"
  block, pos, records, part = 32768, 7, [], b""
  while pos + 7 <= len(raw):
    if block - pos % block < 7:  # a block's tail too short for a header is padding
      pos += block - pos % block
      continue
    _, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
    data, pos = raw[pos + 7:pos + 7 + length], pos + 7 + length
    if kind in (1, 2):
      part = data
    elif kind in (3, 4):
      part += data
    if kind in (1, 4):
      record = wandb_internal_pb2.Record()
      record.ParseFromString(part)
      records.append(record)
  return records


def items(update) -> dict:
  return {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in update}


def offline_run(run_dir: str) -> dict:
  """{"run": the run record, "history": {step: {key: value}}, "summary": {key: value}}."""
  out = {"run": None, "history": {}, "summary": {}}
  for r in wandb_records(run_dir):
    kind = r.WhichOneof("record_type")
    if kind == "run":
      out["run"] = r.run
    elif kind == "history":
      out["history"].setdefault(r.history.step.num, {}).update(items(r.history.item))
    elif kind == "summary":
      out["summary"].update(items(r.summary.update))
  return out


def wandb_logging(group="sweep-a", tags="ladder,cpu"):
  return dict(wandb=True, wandb_mode="offline", wandb_project="lm-tests", wandb_group=group, wandb_tags=tags)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  texts = tmp_path_factory.mktemp("eval") / "texts"  # a text-set task named after its folder: task_texts_*
  texts.mkdir()
  (texts / "speech.txt").write_text("Fellow citizens, the year has been one of trial and of promise.")
  (texts / "code.txt").write_text("for i in range(10):\n    print(i)\n")
  cfg = tiny_run_config(shared_data_dir(tmp_path_factory),
                        train=dict(steps=4, eval_every=2, checkpoint_every=2, log_every=1,
                                   eval_tasks=f"sotu_mc,{texts}", eval_task_examples=8),
                        logging=dict(profile_steps="1:3", **wandb_logging()))
  workdir = str(tmp_path_factory.mktemp("tracked") / "run")
  result = train_lib.train(cfg, workdir)
  return workdir, result.summary


def test_wandb_offline_run_has_the_config_scalars_and_summary(run):
  workdir, summary = run
  with open(os.path.join(workdir, "wandb_run.json")) as f:
    run_id = json.load(f)["id"]
  (run_dir,) = glob.glob(os.path.join(workdir, "wandb", f"offline-run-*-{run_id}"))
  got = offline_run(run_dir)
  assert (got["run"].run_id, got["run"].project, got["run"].run_group) == (run_id, "lm-tests", "sweep-a")
  assert list(got["run"].tags) == ["ladder", "cpu"] and got["run"].display_name == "run"
  config = items(got["run"].config.update)
  assert config["model"]["d_model"] == 32 and config["train"]["steps"] == 4 and config["logging"]["wandb"]
  rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  for row in rows:  # every scalar of metrics.jsonl, at its step
    logged = got["history"][row["step"]]
    for key, value in row.items():
      if key != "step" and value is not None:
        assert logged[key] == pytest.approx(value, rel=1e-6), key
  assert {"task_sotu_mc_acc", "task_sotu_mc_acc_norm", "task_texts_code_bpb", "task_texts_bpb_macro"} <= set(
      got["history"][4])
  for key in ("status", "eval_loss", "train_loss", "task_sotu_mc_acc", "params_total"):
    assert got["summary"][key] == summary[key]


def test_summary_and_metrics_carry_one_column_per_task_metric(run):
  workdir, summary = run
  evals = [r for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if "eval_loss" in r]
  assert [r["step"] for r in evals] == [2, 4]
  task_keys = sorted(k for k in evals[-1] if k.startswith("task_"))
  assert task_keys == ["task_sotu_mc_acc", "task_sotu_mc_acc_norm", "task_texts_bpb", "task_texts_bpb_macro",
                       "task_texts_code_bpb", "task_texts_speech_bpb"]
  assert {k: summary[k] for k in task_keys} == {k: evals[-1][k] for k in task_keys}
  assert summary["task_sotu_mc_acc"] in {i / 8 for i in range(9)}


def test_tensorboard_events_hold_the_scalars_tasks_and_mfu(run):
  from tensorboard.backend.event_processing import event_accumulator  # local: the tensorboard extra
  workdir, _ = run
  acc = event_accumulator.EventAccumulator(os.path.join(workdir, "tensorboard"))
  acc.Reload()
  tags = set(acc.Tags()["scalars"])
  assert {"train_loss", "eval_loss", "eval_bpb", "lr", "tokens_per_s", "mfu", "task_sotu_mc_acc",
          "task_texts_bpb_macro"} <= tags
  assert [e.step for e in acc.Scalars("task_sotu_mc_acc")] == [2, 4]


def test_profile_steps_write_a_trace(run):
  workdir, _ = run
  traces = glob.glob(os.path.join(workdir, "profile", "plugins", "profile", "*", "*.xplane.pb"))
  assert len(traces) == 1 and os.path.getsize(traces[0]) > 0


def test_a_preempted_and_resumed_run_logs_to_the_same_wandb_run(tmp_path, tmp_path_factory):
  workdir = tmp_path / "run"
  flags = [f"--config.logging.{k}={v}" for k, v in wandb_logging(group="resume", tags="").items()]
  cmd = [sys.executable, "-m", "lm.main", "--config=configs/tiny.py", f"--workdir={workdir}",
         f"--config.data.data_dir={shared_data_dir(tmp_path_factory)}", "--config.train.steps=400",
         "--config.train.checkpoint_every=20", "--config.train.eval_every=1000", "--config.train.samples=0", *flags]
  env = child_env(PYTHONPATH=ROOT)
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 300
  while not os.path.isdir(workdir / "checkpoints" / "20"):
    assert proc.poll() is None, proc.stdout.read()[-3000:]
    assert time.time() < deadline, "no checkpoint in time"
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  proc.communicate(timeout=300)
  first = json.load(open(workdir / "summary.json"))
  assert first["status"] == "preempted"
  resumed = subprocess.run([*cmd[:6], "--config.train.steps=" + str(first["steps"] + 10), *cmd[7:]], cwd=ROOT,
                           env=env, capture_output=True, text=True, timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  run_id = json.load(open(workdir / "wandb_run.json"))["id"]
  runs = sorted(glob.glob(str(workdir / "wandb" / "offline-run-*")))
  assert len(runs) == 2 and all(r.endswith(f"-{run_id}") for r in runs)  # two segments, one W&B run
  before, after = offline_run(runs[0]), offline_run(runs[1])
  assert before["run"].run_id == after["run"].run_id == run_id
  assert max(after["history"]) == first["steps"] + 10 and min(after["history"]) > 20
  assert after["summary"]["status"] == "finished" and before["summary"]["status"] == "preempted"
