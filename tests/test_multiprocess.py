"""Two processes on one machine, as on two hosts: jax.distributed over gloo, 2 CPU devices
each, one 4-device mesh. Training matches a single 4-device process, and a checkpoint
written by the two processes resumes on two processes or on one."""

import os
import shutil
import socket
import subprocess
import sys

import pytest

from lm.metrics import read_jsonl
from tests.helpers import child_env, shared_data_dir

pytestmark = pytest.mark.slow  # two jax.distributed processes, then one, each training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def launch(workdir, data_dir, processes: int, devices_per_process: int):
  args = [sys.executable, "-m", "lm.main", "--config=configs/tiny.py", f"--workdir={workdir}",
          f"--config.data.data_dir={data_dir}", "--config.train.steps=6", "--config.train.checkpoint_every=3",
          "--config.train.eval_every=3", "--config.train.samples=0"]
  env = child_env(JAX_NUM_CPU_DEVICES=str(devices_per_process))
  if processes > 1:
    port = free_port()
    args += [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={processes}"]
    procs = [subprocess.Popen(args + [f"--process_id={i}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(processes)]
  else:
    procs = [subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  return outs[0]


def losses(workdir):
  return {r["step"]: r["train_loss"] for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if "train_loss" in r}


def cut_at_step_3(src, dst):
  shutil.copytree(src, dst)
  shutil.rmtree(os.path.join(dst, "checkpoints", "6"))


def test_two_processes_train_and_resume_like_one(tmp_path_factory, tmp_path):
  data_dir = shared_data_dir(tmp_path_factory)
  one, two = tmp_path / "one", tmp_path / "two"
  launch(one, data_dir, processes=1, devices_per_process=4)
  launch(two, data_dir, processes=2, devices_per_process=2)
  a, b = losses(one), losses(two)
  assert sorted(a) == sorted(b) == list(range(1, 7))
  for s in a:
    assert b[s] == pytest.approx(a[s], rel=1e-5), (s, a[s], b[s])
  assert sorted(os.listdir(two / "checkpoints")) == ["3", "6"]

  # The 2-process checkpoint at step 3, resumed by 2 processes.
  cut_at_step_3(two, tmp_path / "two_again")
  out = launch(tmp_path / "two_again", data_dir, processes=2, devices_per_process=2)
  assert "Resumed from the checkpoint at step 3" in out
  resumed = losses(tmp_path / "two_again")
  for s in (4, 5, 6):
    assert resumed[s] == pytest.approx(a[s], rel=1e-5), (s, a[s], resumed[s])


def test_one_process_resumes_a_two_process_checkpoint_like_one(tmp_path_factory, tmp_path):
  data_dir = shared_data_dir(tmp_path_factory)
  one, two = tmp_path / "one", tmp_path / "two"
  launch(one, data_dir, processes=1, devices_per_process=4)
  launch(two, data_dir, processes=2, devices_per_process=2)
  cut_at_step_3(two, tmp_path / "one_from_two")
  out = launch(tmp_path / "one_from_two", data_dir, processes=1, devices_per_process=4)
  assert "Resumed from the checkpoint at step 3" in out
  a, resumed = losses(one), losses(tmp_path / "one_from_two")
  for s in (4, 5, 6):
    assert resumed[s] == pytest.approx(a[s], rel=1e-5), (s, a[s], resumed[s])
