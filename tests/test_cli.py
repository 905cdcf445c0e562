"""The command line, as a user runs it: exact resume after SIGKILL, SIGTERM preemption,
config errors, and evaluation on plain text. Each test runs `python -m lm...` processes."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from lm.metrics import read_jsonl
from tests.helpers import child_env, exit_codes, shared_data_dir

pytestmark = pytest.mark.slow  # every test runs `python -m lm...` processes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = child_env()  # one CPU device per process


def command(workdir, data_dir, *overrides, steps=100):
  return [sys.executable, "-m", "lm.main", "--config=configs/tiny.py", f"--workdir={workdir}",
          f"--config.data.data_dir={data_dir}", f"--config.train.steps={steps}",
          "--config.train.checkpoint_every=20", "--config.train.eval_every=50", "--config.train.samples=0",
          *overrides]


def run(cmd, **kw):
  return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300, **kw)


def start_and_wait_for_checkpoint(cmd, workdir, step):
  proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  target = os.path.join(workdir, "checkpoints", str(step))
  deadline = time.time() + 240
  while not os.path.isdir(target):
    assert proc.poll() is None, f"the run ended before step {step}: {proc.stdout.read()[-2000:]}"
    assert time.time() < deadline, "no checkpoint in time"
    time.sleep(0.02)
  return proc


def losses(workdir):
  return {r["step"]: r["train_loss"] for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if "train_loss" in r}


def data_state(workdir, step):
  with open(os.path.join(workdir, "checkpoints", str(step), "data", "metadata")) as f:
    return json.load(f)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return shared_data_dir(tmp_path_factory)


def test_sigkill_then_same_command_resumes_bitwise_identically(tmp_path, data_dir):
  straight, killed = tmp_path / "straight", tmp_path / "killed"
  done = run(command(straight, data_dir))
  assert done.returncode == 0, done.stderr[-3000:]
  proc = start_and_wait_for_checkpoint(command(killed, data_dir), killed, 40)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not os.path.exists(killed / "summary.json")  # it really died mid-run
  resumed = run(command(killed, data_dir))
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "Resumed from the checkpoint at step" in resumed.stdout
  a, b = losses(straight), losses(killed)
  assert sorted(b) == list(range(1, 101))          # no step lost or logged twice
  assert all(a[s] == b[s] for s in a), [(s, a[s], b[s]) for s in a if a[s] != b[s]][:5]  # bitwise
  assert data_state(straight, 100) == data_state(killed, 100)   # the same data position


def test_sigterm_checkpoints_the_step_reached_and_the_next_launch_resumes(tmp_path, data_dir):
  workdir = tmp_path / "run"
  proc = start_and_wait_for_checkpoint(command(workdir, data_dir), workdir, 20)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == exit_codes()["EXIT_PREEMPTED"], out[-3000:]  # was 0 before issue 14
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["status"] == "preempted" and summary["steps"] < 100
  reached = summary["steps"]
  assert max(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit()) == reached
  assert f"saved a checkpoint at step {reached}" in out
  again = run(command(workdir, data_dir))
  assert again.returncode == 0, again.stderr[-3000:]
  assert f"Resumed from the checkpoint at step {reached}" in again.stdout
  assert json.loads((workdir / "summary.json").read_text())["status"] == "finished"


@pytest.mark.parametrize("override,message", [
    ("--config.model.d_modle=64", 'Did you mean "d_model"'),
    ("--config.model.d_model=wide", "invalid literal for int()"),
    ("--config.model.n_kv_heads=3", "model.n_kv_heads=3 does not divide model.n_heads=4"),
    ("--config.optim.schedule=linear", "optim.schedule='linear' is not one of"),
])
def test_bad_overrides_fail_fast_with_one_clear_line(tmp_path, data_dir, override, message):
  result = run(command(tmp_path / "run", data_dir, override))
  assert result.returncode != 0
  assert message in result.stderr
  assert "Traceback" not in result.stderr
  assert not os.path.exists(tmp_path / "run" / "checkpoints")  # nothing was started


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
  workdir = tmp_path_factory.mktemp("trained") / "run"
  assert run(command(workdir, data_dir, steps=10)).returncode == 0
  return workdir


def test_evaluate_prints_loss_and_bits_per_byte_on_plain_text(tmp_path, trained):
  workdir = trained
  text = tmp_path / "texts"
  text.mkdir()
  (text / "a.txt").write_text("We the People of the United States, in Order to form a more perfect Union.")
  (text / "b.txt").write_bytes(b"Invalid \xff\xfe UTF-8 is replaced, not fatal.")
  result = run([sys.executable, "-m", "lm.evaluate", f"--workdir={workdir}", f"--text={text}", "--json"])
  assert result.returncode == 0, result.stderr[-2000:]
  row = json.loads(result.stdout.strip().splitlines()[-1])
  nbytes = len("We the People of the United States, in Order to form a more perfect Union.") + len(
      "Invalid \ufffd\ufffd UTF-8 is replaced, not fatal.".encode())
  assert row["bytes"] == nbytes and row["tokens"] == nbytes + 2   # bytes tokenizer: one per byte, + 2 EOS
  assert 0 < row["loss"] < 10 and row["bits_per_byte"] > 0 and row["step"] == 10
  missing = run([sys.executable, "-m", "lm.evaluate", f"--workdir={tmp_path / 'nothing'}", f"--text={text}"])
  assert missing.returncode != 0 and "is not an lm workdir" in missing.stderr


def generate(workdir, *flags):
  return run([sys.executable, "-m", "lm.generate", f"--workdir={workdir}", *flags])


def test_generate_streams_a_continuation_and_rejects_bad_prompts(tmp_path, trained):
  greedy = ["--prompt=The Union", "--max_new_tokens=12", "--temperature=0", "--chunk_tokens=4"]
  first, second = generate(trained, *greedy), generate(trained, *greedy)
  assert first.returncode == 0, first.stderr[-2000:]
  assert first.stdout.startswith("The Union") and len(first.stdout.rstrip("\n")) > len("The Union")
  assert first.stdout == second.stdout  # greedy is deterministic
  prompts = tmp_path / "prompts.txt"
  prompts.write_text("Fellow citizens\nOur economy\n")
  batch = generate(trained, f"--prompt_file={prompts}", "--max_new_tokens=8", "--seed=3")
  assert batch.returncode == 0 and "[1] Fellow citizens" in batch.stdout and "[2] Our economy" in batch.stdout
  for flags, message in [(["--prompt="], "the prompt is empty"),
                         (["--prompt=" + "x" * 30, "--max_new_tokens=8"], "> the model's context"),
                         (["--prompt=hi", "--max_new_tokens=8", "--top_p=1.5"], "top_p=1.5 must be in (0, 1]")]:
    bad = generate(trained, *flags)
    assert bad.returncode != 0 and message in bad.stderr, (flags, bad.stderr[-500:])
  missing = generate(tmp_path / "nothing", "--prompt=hi")
  assert missing.returncode != 0 and "is not an lm workdir" in missing.stderr


def test_a_first_ctrl_c_saves_like_sigterm_and_a_second_stops_at_once(tmp_path, data_dir):
  workdir = tmp_path / "run"
  proc = start_and_wait_for_checkpoint(command(workdir, data_dir), workdir, 20)
  proc.send_signal(signal.SIGINT)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == exit_codes()["EXIT_PREEMPTED"], out[-3000:]
  assert "Traceback" not in out and "KeyboardInterrupt" not in out
  reached = json.loads((workdir / "summary.json").read_text())
  assert reached["status"] == "preempted" and f"Ctrl-C: saved a checkpoint at step {reached['steps']}" in out
  assert max(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit()) == reached["steps"]
  next_checkpoint = (reached["steps"] // 20 + 1) * 20
  again = start_and_wait_for_checkpoint(command(workdir, data_dir, steps=400), workdir, next_checkpoint)
  again.send_signal(signal.SIGINT)
  time.sleep(0.05)
  again.send_signal(signal.SIGINT)
  out, _ = again.communicate(timeout=120)
  assert again.returncode == exit_codes()["EXIT_INTERRUPTED"], out[-3000:]
  assert "Interrupted by a second Ctrl-C" in out and "Traceback" not in out


def test_a_loss_blow_up_is_diverged_with_its_own_exit_status(tmp_path, data_dir):
  workdir = tmp_path / "run"
  blow_up = ["--config.optim.lr=30", "--config.optim.clip_norm=0", "--config.optim.warmup_steps=0"]
  result = run(command(workdir, data_dir, *blow_up, steps=20))
  assert result.returncode == exit_codes()["EXIT_DIVERGED"], result.stderr[-3000:]
  assert "train.divergence_factor 2 x ln(vocab_size 259)" in result.stdout and "Traceback" not in result.stderr
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["status"] == "diverged" and summary["steps"] < 20
  # The same blow-up with the threshold off runs to the end; --json then has null, not Infinity.
  off = tmp_path / "off"
  assert run(command(off, data_dir, *blow_up, "--config.train.divergence_factor=0", steps=20)).returncode == 0
  text = tmp_path / "t.txt"
  text.write_text("We the People of the United States, in Order to form a more perfect Union.")
  out = run([sys.executable, "-m", "lm.evaluate", f"--workdir={off}", f"--text={text}", "--json"])
  row = json.loads(out.stdout.strip().splitlines()[-1], parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
  assert row["loss"] > 709 and row["perplexity"] is None


@pytest.mark.parametrize("args,message", [
    (["--config=configs/nope.py"], "Config error: --config: [Errno 2] No such file or directory: 'configs/nope.py'"),
    (["--config=configs/ladder.py:p7q"], "Config error: unknown ladder rung 'p7q'"),
])
def test_a_bad_config_file_is_one_line(tmp_path, args, message):
  result = run([sys.executable, "-m", "lm.main", *args, f"--workdir={tmp_path / 'run'}"])
  assert result.returncode != 0 and result.stderr.strip().splitlines() == [result.stderr.strip()]
  assert message in result.stderr and "Traceback" not in result.stderr


def test_a_workdir_that_is_a_file_is_one_line(tmp_path, data_dir):
  (tmp_path / "file").write_text("x")
  result = run(command(tmp_path / "file", data_dir))
  assert result.returncode == exit_codes()["EXIT_FAILED"]
  assert "is a file, not a directory" in result.stderr and "Traceback" not in result.stderr
