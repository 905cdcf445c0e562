"""Relaunching a workdir (issue 14): a changed config is refused before anything changes, safe
changes resume and are reported, damaged checkpoints are told apart from another run's, one
writer at a time, whole-file writes, and a relaunch of a finished run changes nothing."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from lm import metrics as metrics_lib
from lm import train as train_lib
from lm import workdir as workdir_lib
from lm.errors import WorkdirError
from lm.metrics import read_jsonl
from tests.helpers import shared_data_dir, tiny_run_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return shared_data_dir(tmp_path_factory)


def config(data_dir, **train):
  return tiny_run_config(data_dir, train=dict(dict(steps=4, eval_every=2, checkpoint_every=2, samples=0), **train))


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data_dir):
  """A finished 4-step run with checkpoints at steps 2 and 4; tests work on copies of it."""
  run = tmp_path_factory.mktemp("finished") / "run"
  train_lib.train(config(data_dir), str(run))
  return run


@pytest.fixture
def run(tmp_path, finished):
  shutil.copytree(finished, tmp_path / "run")
  return tmp_path / "run"


def snapshot(run) -> dict:
  """Every file of the workdir (tensorboard aside) and its bytes."""
  out = {}
  for root, _, files in os.walk(run):
    for name in files:
      path = os.path.join(root, name)
      if "tensorboard" not in path and name != workdir_lib.LOCK_FILE:
        with open(path, "rb") as f:
          out[os.path.relpath(path, run)] = f.read()
  return out


def damage(run, step):
  for root, _, files in os.walk(run / "checkpoints" / str(step) / "state"):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"not a checkpoint")


@pytest.mark.parametrize("section,field,value,shown", [
    ("model", "d_model", 64, "model.d_model: 32 -> 64"),
    ("optim", "name", "lion", "optim.name: 'adamw' -> 'lion'"),
    ("data", "tokenizer", "sentencepiece", "data.tokenizer: 'bytes' -> 'sentencepiece'"),
])
def test_a_relaunch_that_changes_what_the_run_computes_is_refused_and_changes_nothing(
    run, data_dir, section, field, value, shown):
  before = snapshot(run)
  cfg = config(data_dir, steps=6)
  cfg[section][field] = value
  with pytest.raises(WorkdirError) as e:
    train_lib.train(cfg, str(run))
  assert shown in str(e.value) and "Nothing in the workdir was changed" in str(e.value)
  assert f"--config.train.init_from={run}" in str(e.value)   # the fix is named
  assert snapshot(run) == before  # checkpoints, config.json, metrics.jsonl, summary.json untouched


def test_safe_changes_resume_and_say_what_changed(run, data_dir, capsys):
  summary = train_lib.train(config(data_dir, steps=6, eval_every=3, log_every=2), str(run)).summary
  out = capsys.readouterr().out
  assert "Resumed from the checkpoint at step 4" in out
  assert ("Changed on resume: train.steps 4 -> 6: the cosine learning-rate schedule is recomputed for 6 steps; "
          "at the resumed step 4 the lr goes from") in out
  assert "Changed on resume: train.eval_every 2 -> 3." in out and "train.log_every 1 -> 2." in out
  assert summary["status"] == "finished" and summary["steps"] == 6
  assert json.loads((run / "config.json").read_text())["train"]["steps"] == 6  # written once accepted


def test_a_checkpoint_of_another_shape_is_refused_without_config_json_too(run, data_dir):
  (run / "config.json").unlink()
  before = snapshot(run)
  cfg = config(data_dir)
  cfg.model.d_model = 64
  with pytest.raises(WorkdirError, match=r"holds another model or optimizer than this config builds: .*"
                                         r"\(259, 32\) saved vs \(259, 64\) here"):
    train_lib.train(cfg, str(run))
  assert snapshot(run) == before and not (run / "checkpoints" / "unreadable-4").exists()


def test_a_torn_last_metrics_line_is_dropped_with_a_warning(run, data_dir):
  with open(run / "metrics.jsonl", "a") as f:
    f.write('{"step": 5, "train_lo')  # a kill or a full disk in the middle of a write
  assert [r["step"] for r in read_jsonl(str(run / "metrics.jsonl")) if "train_loss" in r] == [1, 2, 3, 4]
  summary = train_lib.train(config(data_dir, steps=6), str(run)).summary
  assert summary["status"] == "finished"
  lines = (run / "metrics.jsonl").read_text().splitlines()
  assert all(json.loads(line) for line in lines)  # the torn line is gone: every line parses
  assert [r["step"] for r in map(json.loads, lines) if "train_loss" in r] == [1, 2, 3, 4, 5, 6]


def test_the_start_up_rewrite_of_metrics_jsonl_is_all_or_nothing(run, monkeypatch):
  before = (run / "metrics.jsonl").read_bytes()

  def full_disk(fd):
    raise OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr(os, "fsync", full_disk)
  with pytest.raises(OSError, match="No space left"):
    metrics_lib.MetricWriter(str(run), resume_step=2, tensorboard=False)  # drops steps 3 and 4
  assert (run / "metrics.jsonl").read_bytes() == before  # the history is intact
  assert [p for p in os.listdir(run) if ".tmp" in p] == []  # and no temporary file is left


def test_a_step_set_aside_twice_gets_a_new_name(run, data_dir, capsys):
  (run / "checkpoints" / "unreadable-4").mkdir()
  (run / "checkpoints" / "unreadable-4" / "x").write_text("set aside by an earlier relaunch")
  damage(run, 4)
  summary = train_lib.train(config(data_dir), str(run)).summary
  out = capsys.readouterr().out
  assert "falling back to step 2" in out and f"kept as {run}/checkpoints/unreadable-4-2" in out
  assert summary["status"] == "finished" and (run / "checkpoints" / "unreadable-4" / "x").exists()


def test_when_every_checkpoint_is_unreadable_the_run_is_refused(run, data_dir):
  damage(run, 2)
  damage(run, 4)
  before = snapshot(run)
  with pytest.raises(WorkdirError) as e:
    train_lib.train(config(data_dir), str(run))
  assert "none of the 2 checkpoint(s)" in str(e.value) and "step 4: unreadable" in str(e.value)
  assert "To start over on purpose, move" in str(e.value)
  assert snapshot(run) == before  # nothing moved, nothing retrained


def test_a_permission_problem_is_not_damage(run, data_dir, monkeypatch):
  import orbax.checkpoint as ocp

  def denied(self, step, *a, **k):
    raise PermissionError(errno.EACCES, "Permission denied", f"checkpoints/{step}/state")
  monkeypatch.setattr(ocp.CheckpointManager, "restore", denied)  # root reads everything: simulate it
  before = snapshot(run)
  with pytest.raises(WorkdirError, match="permission denied .* not a damaged checkpoint; nothing was changed"):
    train_lib.train(config(data_dir), str(run))
  assert snapshot(run) == before


def test_a_second_writer_is_refused_and_a_killed_one_leaves_no_lock(tmp_path, data_dir):
  workdir = tmp_path / "run"
  workdir.mkdir()
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from lm import workdir; l = workdir.Lock(sys.argv[1]).__enter__(); "
                             "print('locked', flush=True); time.sleep(600)", str(workdir)],
      cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert holder.stdout.readline().strip() == "locked"
  with pytest.raises(WorkdirError, match=rf"is in use: another lm.main trains in it \(pid {holder.pid} on "):
    train_lib.train(config(data_dir, steps=2), str(workdir))
  assert not (workdir / "checkpoints").exists()
  holder.send_signal(signal.SIGKILL)
  holder.wait()
  summary = train_lib.train(config(data_dir, steps=2), str(workdir)).summary  # the kernel dropped the lock
  assert summary["status"] == "finished"


def test_relaunching_a_finished_run_changes_nothing_and_says_so(run, data_dir, capsys):
  before = snapshot(run)
  result = train_lib.train(config(data_dir), str(run))
  assert "already finished its 4 steps: nothing to do, nothing changed" in capsys.readouterr().out
  assert result.already_finished and snapshot(run) == before


def test_a_run_killed_before_its_summary_reports_the_same_numbers_on_relaunch(run, data_dir):
  first = json.loads((run / "summary.json").read_text())
  (run / "summary.json").unlink()
  again = train_lib.train(config(data_dir), str(run)).summary
  for column in ("status", "steps", "tokens", "train_loss", "tokens_per_s", "mfu", "eval_loss"):
    assert again[column] == first[column], column
  assert first["train_loss"] is not None and first["tokens_per_s"] is not None


def test_a_checkpoint_beyond_train_steps_is_refused(run, data_dir):
  with pytest.raises(WorkdirError, match="checkpoint at step 4, beyond train.steps=3"):
    train_lib.train(config(data_dir, steps=3, eval_every=1, checkpoint_every=1), str(run))


def test_workdir_paths_expand_home_and_refuse_a_file(tmp_path, data_dir, monkeypatch):
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  monkeypatch.chdir(tmp_path)
  summary = train_lib.train(config(data_dir, steps=2), "~/runs/x").summary
  assert summary["status"] == "finished" and (tmp_path / "home" / "runs" / "x" / "summary.json").is_file()
  assert not (tmp_path / "~").exists()
  (tmp_path / "a_file").write_text("x")
  with pytest.raises(WorkdirError, match="is a file, not a directory"):
    train_lib.train(config(data_dir, steps=2), str(tmp_path / "a_file"))


def test_config_changes_compare_every_field_over_todays_defaults(data_dir):
  cfg = config(data_dir)
  saved = json.loads(cfg.to_json_best_effort())
  del saved["train"]["z_loss"]  # a field added after the run was made takes its default
  saved["derived"] = {"params_total": 1}
  assert workdir_lib.config_changes(saved, cfg) == []
  cfg.mesh.rules.embed = "fsdp,tensor"
  cfg.model.n_layers = 3
  assert workdir_lib.config_changes(saved, cfg) == [("mesh.rules.embed", "fsdp", "fsdp,tensor"),
                                                     ("model.n_layers", 2, 3)]


def test_a_full_disk_keeps_the_real_error_and_records_it_when_it_can(tmp_path, data_dir, monkeypatch):
  import builtins
  real_open, real_write = builtins.open, metrics_lib.MetricWriter.write

  def fill_disk_at_step_3(under):  # from step 3 on, writing any file under `under` fails with ENOSPC
    def full_open(file, mode="r", *args, **kwargs):
      if str(file).startswith(str(under)) and any(m in mode for m in "wax"):
        raise OSError(errno.ENOSPC, "No space left on device", str(file))
      return real_open(file, mode, *args, **kwargs)

    def write(self, step, metrics):
      if step == 3:
        monkeypatch.setattr(builtins, "open", full_open)
      return real_write(self, step, metrics)
    monkeypatch.setattr(metrics_lib.MetricWriter, "write", write)

  # The disk fills for good: the error raised is the run's own (metrics.jsonl's, the first), not
  # the summary's, and no torn or temporary file is left.
  workdir = tmp_path / "full"
  fill_disk_at_step_3(workdir)
  try:
    with pytest.raises(OSError) as e:
      train_lib.train(config(data_dir), str(workdir))
  finally:
    monkeypatch.setattr(builtins, "open", real_open)
  assert e.value.errno == errno.ENOSPC and e.value.filename.endswith("metrics.jsonl")
  assert not (workdir / "summary.json").exists() and [p for p in os.listdir(workdir) if ".tmp" in p] == []
  # Only the checkpoint's files fail (the last save, asynchronous, fails while the run ends): the
  # summary still has room, and records the failure with the real error.
  workdir = tmp_path / "room_for_the_summary"
  fill_disk_at_step_3(workdir / "checkpoints")
  try:
    with pytest.raises(Exception, match="No space left on device"):
      train_lib.train(config(data_dir), str(workdir))
  finally:
    monkeypatch.setattr(builtins, "open", real_open)
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["status"] == "failed" and "No space left on device" in summary["error"] and summary["steps"] == 4
