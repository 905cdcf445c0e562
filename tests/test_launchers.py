"""Launchers: exact dry-run output (commands and sbatch scripts) for a run and a sweep on each,
flag errors before anything runs, the spot-restart loop against scripted gcloud replies, and the
sbatch script's signal handling under bash with fake srun/scancel/scontrol. No gcloud, no SLURM."""

import io
import os
import signal
import subprocess
import tarfile
import time

import pytest

from experiments.launch import common
from experiments.launch import slurm as launch_slurm
from experiments.launch import tpu as launch_tpu


@pytest.fixture
def repo(tmp_path, monkeypatch):
  """A stand-in repository with the configs the commands name; the launchers ship it."""
  root = tmp_path / "repo"
  for f in ("configs/tiny.py", "experiments/sweeps/isoflop.py"):
    (root / f).parent.mkdir(parents=True, exist_ok=True)
    (root / f).write_text("")
  monkeypatch.setattr(common, "REPO", root)
  monkeypatch.chdir(tmp_path)
  return root


def dry_run(module, argv, repo):
  out = io.StringIO()
  assert module.main(argv, out) == 0
  return out.getvalue().replace(str(repo), "<REPO>").replace(str(repo.parent), "<CWD>")


TPU_RUN_ARGS = ["--zone=us-west4-a", "--project=my-proj", "--accelerator_type=v5litepod-16", "--spot",
                "--bucket=gs://my-bucket", "--dry_run", "--",
                "--config=configs/tiny.py", "--workdir=/mnt/my-bucket/runs/tiny", "--config.train.steps=20"]


def test_tpu_dry_run_of_a_run(repo):
  assert dry_run(launch_tpu, TPU_RUN_ARGS, repo) == TPU_RUN


def test_tpu_dry_run_of_a_sweep(repo):
  argv = ["--name=iso-v6e", "--zone=europe-west4-a", "--accelerator_type=v6e-16", "--reserved",
          "--shared_dir=/mnt/nfs", "--git_ref=v0.3", "--env=XLA_FLAGS=--xla_dump_to=/tmp/x y", "--keep",
          "--max_restarts=2", "--log_dir=logs/iso", "--dry_run",
          "--sweep=--config=experiments/sweeps/isoflop.py --sweep_dir=/mnt/nfs/sweeps/iso"]
  assert dry_run(launch_tpu, argv, repo) == TPU_SWEEP


def test_slurm_dry_run_of_a_run(repo):
  argv = ["--nodes=2", "--gpus_per_node=8", "--time=24:00:00", "--partition=gpu", "--account=lm",
          "--cpus_per_task=32", "--dry_run", "--run=--config=configs/tiny.py --workdir=/shared/runs/tiny"]
  assert dry_run(launch_slurm, argv, repo) == SLURM_RUN


def test_slurm_dry_run_of_a_sweep(repo):
  argv = ["--nodes=4", "--gpus_per_node=4", "--job_name=iso", "--venv=/shared/venvs/lm", "--skip_install",
          "--setup=module load cuda/12.4", "--env=NCCL_DEBUG=WARN", "--signal_s=600", "--max_restarts=3",
          "--sbatch_arg=--constraint=h100", "--log_dir=/shared/logs", "--shared_fs=/shared", "--dry_run",
          "--sweep=--config=experiments/sweeps/isoflop.py --sweep_dir=/shared/sweeps/iso --parallel=1"]
  assert dry_run(launch_slurm, argv, repo) == SLURM_SWEEP


# ---- values that reach a script are quoted or refused (issue 14) ----

def test_a_shared_dir_with_shell_syntax_is_a_path_not_a_command(repo, tmp_path):
  shared = f"/mnt/nfs$(touch {tmp_path}/pwned)"
  args = launch_tpu.parse_args(["--zone=z", "--accelerator_type=v6e-8", f"--shared_dir={shared}",
                                f"--sweep=--config=configs/tiny.py '--sweep_dir={shared}/iso'"])
  setup = launch_tpu.plan(args)[3]
  check = setup.splitlines()[-1]  # the line that checks the mount, run here as on a worker
  result = subprocess.run(["bash", "-c", check], capture_output=True, text=True, cwd=tmp_path)
  assert not (tmp_path / "pwned").exists()
  assert result.returncode == 1 and result.stderr.startswith(f"{shared} is not mounted on ")


def test_a_job_name_with_a_line_break_is_refused(repo, capsys):
  argv = ["--nodes=1", "--gpus_per_node=1", "--job_name=x\nrm -rf ~", "--dry_run",
          "--run=--config=configs/tiny.py --workdir=/s/x"]
  out = io.StringIO()
  assert launch_slurm.main(argv, out) == 2 and out.getvalue() == ""
  err = capsys.readouterr().err
  assert "--job_name='x\\nrm -rf ~': use letters, digits" in err and err.count("\n") == 1


@pytest.mark.parametrize("flag", ["--partition", "--log_dir", "--sbatch_arg"])
def test_a_line_break_in_any_value_of_an_sbatch_line_is_refused(repo, capsys, flag):
  argv = ["--nodes=1", "--gpus_per_node=1", f"{flag}=/ok\n#SBATCH --nodes=64", "--dry_run",
          "--run=--config=configs/tiny.py --workdir=/s/x"]
  assert launch_slurm.main(argv, io.StringIO()) == 2
  assert "contains a line break" in capsys.readouterr().err


def test_sbatch_reads_every_value_as_it_was_given(repo):
  """A log dir with a space, a '#' and a quote: sbatch's own parsing of the #SBATCH lines
  (tests/fake_slurm.py ports it) gives back exactly the values passed."""
  from tests.fake_slurm import sbatch_options
  log_dir = str(repo / 'logs of "run" #1')
  args = launch_slurm.parse_args(["--nodes=1", "--gpus_per_node=1", f"--log_dir={log_dir}", "--partition=gpu,long",
                                  "--sbatch_arg=--comment=two words", "--run=--config=configs/tiny.py --workdir=/s/x"])
  script = launch_slurm.plan(args)[4]
  options = sbatch_options(script)
  assert f"--output={log_dir}/%x-%j.out" in options and "--partition=gpu,long" in options
  assert "--comment=two words" in options and "--requeue" in options
  assert options[-1] == "--comment=two words"  # nothing after it was swallowed


TPU_BASE = ["--zone=z", "--accelerator_type=v6e-8", "--bucket=gs://b", "--dry_run"]
SLURM_BASE = ["--nodes=2", "--gpus_per_node=8", "--dry_run"]


@pytest.mark.parametrize("module,argv,message", [
    (launch_tpu, TPU_BASE, "Say what to run"),
    (launch_tpu, TPU_BASE + ["--run=--workdir=/mnt/b/x", "--sweep=--config=configs/tiny.py"], "Say what to run"),
    (launch_tpu, TPU_BASE + ["--run=--workdir=/mnt/b/x"], "needs --config"),
    (launch_tpu, TPU_BASE + ["--run=--config=configs/nope.py --workdir=/mnt/b/x"], "no file configs/nope.py"),
    (launch_tpu, TPU_BASE + ["--run=--config=configs/tiny.py"], "needs --workdir"),
    (launch_tpu, TPU_BASE + ["--sweep=--config=configs/tiny.py"], "needs --sweep_dir"),
    (launch_tpu, TPU_BASE + ["--run=--config=configs/tiny.py --workdir=runs/x"],
     "--workdir=runs/x is not on storage every worker sees (--bucket=gs://b is mounted at /mnt/b); "
     "use e.g. --workdir=/mnt/b/x"),
    (launch_tpu, TPU_BASE[:2] + ["--shared_dir=/nfs", "--dry_run", "--", "--config=configs/tiny.py",
                                 "--workdir=/home/me/x"], "not on storage every worker sees (--shared_dir=/nfs)"),
    (launch_tpu, ["--zone=z", "--accelerator_type=tpu-v5e-16", "--bucket=gs://b", "--run=--config=configs/tiny.py "
                  "--workdir=/mnt/b/x"], "expected <generation>-<size>"),
    (launch_tpu, ["--zone=z", "--accelerator_type=v5e-16", "--bucket=gs://b", "--run=--config=configs/tiny.py "
                  "--workdir=/mnt/b/x"], "e.g. v5litepod-16"),
    (launch_tpu, ["--zone=z", "--accelerator_type=v4-8", "--bucket=gs://b/runs", "--run=--config=configs/tiny.py "
                  "--workdir=/mnt/b/x"], "expected gs://BUCKET"),
    (launch_tpu, TPU_BASE + ["--name=Big_Name", "--run=--config=configs/tiny.py --workdir=/mnt/b/x"],
     "--name=Big_Name"),
    (launch_tpu, TPU_BASE + ["--env=1X=2", "--run=--config=configs/tiny.py --workdir=/mnt/b/x"], "KEY=VALUE"),
    (launch_slurm, SLURM_BASE + ["--run=--config=configs/tiny.py --workdir=/tmp/x"], "node-local storage"),
    (launch_slurm, SLURM_BASE + ["--shared_fs=/shared", "--", "--config=configs/tiny.py", "--workdir=runs/x"],
     "is not under the shared filesystem (/shared)"),
    (launch_slurm, SLURM_BASE + ["--time=1 day", "--run=--config=configs/tiny.py --workdir=/s/x"], "--time=1 day"),
    (launch_slurm, ["--nodes=0", "--gpus_per_node=8", "--run=--config=configs/tiny.py --workdir=/s/x"], "at least 1"),
])
def test_flag_errors_are_one_line_before_anything_runs(repo, capsys, module, argv, message):
  out = io.StringIO()
  assert module.main(argv, out) == 2
  assert out.getvalue() == ""  # nothing was printed to run, nothing ran
  err = capsys.readouterr().err
  assert message in err and err.count("\n") == 1


@pytest.mark.parametrize("module,argv", [
    (launch_tpu, ["--accelerator_type=v6e-8", "--bucket=gs://b"]),  # no --zone
    (launch_tpu, ["--zone=z", "--accelerator_type=v6e-8"]),          # no --bucket or --shared_dir
    (launch_tpu, TPU_BASE + ["--spot", "--reserved"]),
    (launch_slurm, ["--nodes=2", "--run=--config=configs/tiny.py --workdir=/s/x"]),  # no --gpus_per_node
])
def test_missing_or_conflicting_flags(repo, capsys, module, argv):
  with pytest.raises(SystemExit) as e:
    module.main(argv)
  assert e.value.code == 2 and "error:" in capsys.readouterr().err


class ScriptedGcloud(common.Runner):
  """A runner whose `describe` replies come from a script and whose commands exit with scripted
  statuses ("run": [255, 0]: the first run's ssh connection drops, the second finishes; "watch":
  the run hangs until the watcher's poll finds the slice gone)."""

  def __init__(self, log_dir, states, statuses=None):
    super().__init__(dry_run=False, log_dir=log_dir, out=io.StringIO())
    self.states, self.statuses, self.calls = list(states), {k: list(v) for k, v in (statuses or {}).items()}, []

  def _execute(self, argv, log_path, stream, watch, watch_every):
    log_path.touch()
    kind = log_path.stem.split("-")[0]
    self.calls.append(kind)
    status = self.statuses.get(kind, []).pop(0) if self.statuses.get(kind) else 0
    if status == "watch":  # the watcher polls while the command runs, sees the slice go, and stops it
      assert watch()
      return -15
    return status

  def _capture(self, argv):
    assert argv[:5] == ["gcloud", "compute", "tpus", "queued-resources", "describe"]
    self.calls.append("describe")
    return 0, self.states.pop(0)  # an IndexError here means the launcher polled more than scripted

  def sleep(self, seconds):
    pass


def launch(tmp_path, states, statuses=None, max_restarts=3, keep=False):
  tpu = launch_tpu.Tpu("qr", "z", None, "v5litepod-16", "v2-alpha-tpuv5-lite", "spot")
  runner = ScriptedGcloud(tmp_path / "logs", states, statuses)
  rc = launch_tpu.launch(tpu, runner, "code.tar.gz", "setup", "run", max_restarts, keep, poll_s=30, settle_s=30)
  assert not runner.states, "scripted states left over"
  return rc, runner.calls, runner.out.getvalue()


SLICE = ["create", "describe", "describe", "describe", "ship", "setup", "run"]  # waits twice, then runs
SETTLE = ["describe", "describe"]  # still ACTIVE 30 s after the command ended: finished


def test_spot_preempted_during_the_run_is_recreated_and_rerun(tmp_path):
  states = ["WAITING_FOR_RESOURCES", "PROVISIONING", "ACTIVE", "SUSPENDED",
            "WAITING_FOR_RESOURCES", "PROVISIONING", "ACTIVE", "ACTIVE", "ACTIVE"]
  rc, calls, out = launch(tmp_path, states, {"run": [255, 0]})
  assert rc == 0
  assert calls == SLICE + ["describe", "delete"] + SLICE + SETTLE + ["delete"]
  assert "restart 1 of 3: delete it and create it again" in out


def test_preemption_seen_by_the_watcher_while_the_run_hangs(tmp_path):
  states = ["ACTIVE", "SUSPENDING", "SUSPENDED", "ACTIVE", "ACTIVE", "ACTIVE"]
  rc, calls, _ = launch(tmp_path, states, {"run": ["watch", 0]})
  assert rc == 0
  assert calls == (["create", "describe", "ship", "setup", "run", "describe", "describe", "delete",
                    "create", "describe", "ship", "setup", "run"] + SETTLE + ["delete"])


def test_lm_exits_0_on_sigterm_but_the_slice_goes_away_after_it(tmp_path):
  # lm checkpoints on SIGTERM and exits 0 before the queued resource leaves ACTIVE: not finished.
  states = ["ACTIVE", "ACTIVE", "SUSPENDING", "ACTIVE", "ACTIVE", "ACTIVE"]
  rc, calls, _ = launch(tmp_path, states)
  assert rc == 0
  assert calls == (["create", "describe", "ship", "setup", "run", "describe", "describe", "delete",
                    "create", "describe", "ship", "setup", "run"] + SETTLE + ["delete"])


def test_request_that_fails_while_queued_is_recreated(tmp_path):
  rc, calls, _ = launch(tmp_path, ["WAITING_FOR_RESOURCES", "FAILED", "ACTIVE", "ACTIVE", "ACTIVE"])
  assert rc == 0
  assert calls == (["create", "describe", "describe", "delete", "create", "describe", "ship", "setup", "run"]
                   + SETTLE + ["delete"])


def test_lost_ssh_connection_reruns_on_the_same_slice(tmp_path):
  rc, calls, out = launch(tmp_path, ["ACTIVE", "ACTIVE", "ACTIVE", "ACTIVE", "ACTIVE"], {"run": [255, 0]})
  assert rc == 0
  assert calls == ["create", "describe", "ship", "setup", "run"] + SETTLE + ["ship", "setup", "run"] + SETTLE + [
      "delete"]
  assert "restart 1 of 3 on the same slice" in out


def test_a_failing_command_on_a_healthy_slice_is_not_restarted(tmp_path):
  rc, calls, out = launch(tmp_path, ["ACTIVE", "ACTIVE", "ACTIVE"], {"run": [1]})
  assert rc == 1
  assert calls == ["create", "describe", "ship", "setup", "run"] + SETTLE + ["delete"]
  assert "failed (exit status 1) on a healthy slice" in out


def test_restarts_run_out(tmp_path):
  rc, calls, out = launch(tmp_path, ["ACTIVE", "SUSPENDED", "ACTIVE", "SUSPENDED"], {"run": [255, 255]},
                          max_restarts=1)
  assert rc == 1
  assert calls == ["create", "describe", "ship", "setup", "run", "describe", "delete",
                   "create", "describe", "ship", "setup", "run", "describe", "delete"]
  assert "no restarts are left (--max_restarts=1)" in out


def test_a_failed_create_deletes_nothing(tmp_path):
  # e.g. the name is taken by another queued resource: it must not be deleted.
  rc, calls, _ = launch(tmp_path, [], {"create": [1]})
  assert (rc, calls) == (1, ["create"])


def test_keep_leaves_the_slice_up(tmp_path):
  rc, calls, out = launch(tmp_path, ["ACTIVE", "ACTIVE", "ACTIVE"], keep=True)
  assert rc == 0 and "delete" not in calls
  assert "gcloud compute tpus queued-resources delete qr --zone=z --force --quiet" in out


def test_runner_streams_logs_and_returns_the_exit_status(tmp_path):
  out = io.StringIO()
  runner = common.Runner(False, tmp_path / "logs", out)
  assert runner.run(["bash", "-c", "echo one; echo two >&2; exit 3"], "step", stream=True) == 3
  assert out.getvalue() == "bash -c 'echo one; echo two >&2; exit 3'\none\ntwo\n"
  log = (tmp_path / "logs" / "step.log").read_text()
  assert log == "$ bash -c 'echo one; echo two >&2; exit 3'\none\ntwo\n[exit status 3]\n"
  assert runner.poll(["bash", "-c", "echo ACTIVE"], first=False) == (0, "ACTIVE")


def test_runner_stops_a_command_when_the_watcher_says_so(tmp_path):
  runner = common.Runner(False, tmp_path, io.StringIO())
  t0 = time.monotonic()
  assert runner.run(["sleep", "30"], "run", watch=lambda: True, watch_every=0.05) != 0
  assert time.monotonic() - t0 < 10


def test_pack_tree_ships_tracked_and_untracked_files_not_ignored_ones(tmp_path):
  git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
  subprocess.run(git + ["init", "-q"], check=True)
  for name, text in {".gitignore": "*.log\n", "a.py": "", "gone.py": "", "sub/b.py": "", "x.log": "",
                     "launch_logs/old/code.tar.gz": ""}.items():
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_text(text)
  subprocess.run(git + ["add", ".gitignore", "a.py", "gone.py"], check=True)
  subprocess.run(git + ["commit", "-q", "-m", "init"], check=True)
  (tmp_path / "gone.py").unlink()  # deleted in the working tree: not shipped
  dest = tmp_path / "launch_logs" / "new" / "code.tar.gz"
  common.pack_tree(tmp_path, dest, exclude=[tmp_path / "launch_logs"])
  with tarfile.open(dest) as tar:
    assert sorted(tar.getnames()) == [".gitignore", "a.py", "sub/b.py"]



def fake_cli(tmp_path, name, body):
  """An executable `name` first on PATH that appends its arguments to <tmp>/calls, then runs body."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir(exist_ok=True)
  (bin_dir / name).write_text(f'#!/bin/bash\necho "{name} $*" >> "{tmp_path}/calls"\n{body}\n')
  (bin_dir / name).chmod(0o755)
  return bin_dir


def test_tpu_launch_for_real_against_a_fake_gcloud(repo, tmp_path, monkeypatch):
  subprocess.run(["git", "-C", str(repo), "init", "-q"], check=True)  # the working tree is packed with git ls-files
  bin_dir = fake_cli(tmp_path, "gcloud", '[[ "$*" == *" describe "* ]] && echo ACTIVE\n'
                     '[[ "$*" == *"--command=echo"* ]] && echo "step 10: loss 3.21"\nexit 0')
  monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
  out = io.StringIO()
  argv = TPU_RUN_ARGS[:TPU_RUN_ARGS.index("--dry_run")] + ["--settle_s=0"] + TPU_RUN_ARGS[
      TPU_RUN_ARGS.index("--dry_run") + 1:]
  assert launch_tpu.main(argv, out) == 0
  lines = (tmp_path / "calls").read_text().splitlines()  # the --command scripts span several lines
  calls = [" ".join(c.split()[:6]) for c in lines if c.startswith("gcloud ")]
  assert calls == ["gcloud compute tpus queued-resources create lm-tiny", "gcloud compute tpus queued-resources "
                   "describe lm-tiny", "gcloud compute tpus tpu-vm scp launch_logs/lm-tiny/code.tar.gz",
                   "gcloud compute tpus tpu-vm ssh lm-tiny", "gcloud compute tpus tpu-vm ssh lm-tiny",
                   "gcloud compute tpus queued-resources describe lm-tiny",
                   "gcloud compute tpus queued-resources delete lm-tiny"]
  assert "step 10: loss 3.21" in out.getvalue()  # streamed here, and saved:
  assert "step 10: loss 3.21" in (tmp_path / "launch_logs/lm-tiny/run-0.log").read_text()
  with tarfile.open(tmp_path / "launch_logs/lm-tiny/code.tar.gz") as tar:
    assert sorted(tar.getnames()) == ["configs/tiny.py", "experiments/sweeps/isoflop.py"]


def test_slurm_launch_for_real_against_a_fake_sbatch(repo, tmp_path, monkeypatch):
  bin_dir = fake_cli(tmp_path, "sbatch", "echo '4242;cluster'")
  monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
  out = io.StringIO()
  argv = ["--nodes=2", "--gpus_per_node=8", "--skip_install", "--run=--config=configs/tiny.py --workdir=/s/x"]
  assert launch_slurm.main(argv, out) == 0
  script = repo / "slurm_logs" / "lm-x.sbatch"
  assert (tmp_path / "calls").read_text() == f"sbatch --parsable {script}\n"
  assert "#SBATCH --nodes=2" in script.read_text()
  assert f"job 4242; follow it with: squeue -j 4242; tail -f {repo}/slurm_logs/lm-x-4242.out" in out.getvalue()

FAKES = {
    # srun runs its command here; the fake lm checkpoints on SIGTERM (exit 0) or exits with $FAKE_EXIT.
    "srun": 'echo "srun $*" >> "$FAKE/calls"; while [[ "$1" == --* ]]; do shift; done; exec "$@"',
    "python": 'echo $$ > "$FAKE/lm.pid"\n[ -n "${FAKE_EXIT:-}" ] && exit "$FAKE_EXIT"\n'
              'trap \'echo "lm: SIGTERM, checkpoint saved"; exit 0\' TERM\nwhile true; do sleep 0.05; done',
    # scancel signals the job steps (not the batch shell): here, the fake lm.
    "scancel": 'echo "scancel $*" >> "$FAKE/calls"; kill -TERM "$(cat "$FAKE/lm.pid")"',
    "scontrol": 'echo "scontrol $*" >> "$FAKE/calls"',
}


def start_batch_script(repo, tmp_path, max_restarts=2, **env):
  fake = tmp_path / "fake"
  (fake / "bin").mkdir(parents=True)
  for name, body in FAKES.items():
    (fake / "bin" / name).write_text(f"#!/bin/bash\n{body}\n")
    (fake / "bin" / name).chmod(0o755)
  (fake / "venv" / "bin").mkdir(parents=True)
  (fake / "venv" / "bin" / "activate").write_text("")
  args = launch_slurm.parse_args(["--nodes=2", "--gpus_per_node=2", f"--max_restarts={max_restarts}",
                                  f"--venv={fake / 'venv'}", "--run=--config=configs/tiny.py --workdir=/s/x"])
  script = launch_slurm.plan(args)[4]
  (fake / "job.sbatch").write_text(script)
  env = {**os.environ, "PATH": f"{fake / 'bin'}:{os.environ['PATH']}", "FAKE": str(fake), "SLURM_JOB_ID": "42",
         "SLURM_JOB_NODELIST": "n[1-2]", **env}
  proc = subprocess.Popen(["bash", str(fake / "job.sbatch")], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  for _ in range(200):  # the fake lm is up once it wrote its pid (the traps are set before srun starts)
    if (fake / "lm.pid").exists() and (fake / "lm.pid").read_text().strip():
      break
    time.sleep(0.02)
  return proc, fake


def finish(proc, fake):
  out, _ = proc.communicate(timeout=20)
  calls = (fake / "calls").read_text().splitlines()
  return proc.returncode, calls, out


def test_batch_script_checkpoints_and_requeues_before_the_time_limit(repo, tmp_path):
  proc, fake = start_batch_script(repo, tmp_path)
  proc.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@300 sends
  rc, calls, out = finish(proc, fake)
  assert rc == 0
  assert calls == ["srun --kill-on-bad-exit=1 python -m lm.main --config=configs/tiny.py --workdir=/s/x",
                   "scancel --signal=TERM 42", "scontrol requeue 42"]
  assert "time limit in 300 s" in out and "lm: SIGTERM, checkpoint saved" in out


def test_batch_script_stops_requeueing_after_max_restarts(repo, tmp_path):
  proc, fake = start_batch_script(repo, tmp_path, max_restarts=2, SLURM_RESTART_COUNT="2")
  proc.send_signal(signal.SIGUSR1)
  rc, calls, out = finish(proc, fake)
  assert rc == 0 and calls[-1] == "scancel --signal=TERM 42"
  assert "not requeued: 2 restarts used" in out and "start 3" in out


def test_batch_script_waits_for_lm_on_preemption(repo, tmp_path):
  proc, fake = start_batch_script(repo, tmp_path)
  proc.send_signal(signal.SIGTERM)  # SLURM signals every process of a preempted job
  os.kill(int((fake / "lm.pid").read_text()), signal.SIGTERM)
  rc, calls, out = finish(proc, fake)
  assert rc == 0 and len(calls) == 1  # srun only: SLURM requeues a preempted job itself
  assert "waiting for lm to save a checkpoint" in out and "lm: SIGTERM, checkpoint saved" in out


def test_batch_script_exits_with_the_status_of_srun(repo, tmp_path):
  proc, fake = start_batch_script(repo, tmp_path, FAKE_EXIT="3")
  rc, calls, out = finish(proc, fake)
  assert rc == 3 and len(calls) == 1 and "srun exit status 3" in out


# Expected dry-run output: <REPO> is the repository the launcher ships (a temporary one here),
# <CWD> the directory it runs in.
TPU_RUN = """\
# run on Cloud TPU v5litepod-16 (spot) lm-tiny in us-west4-a, runtime v2-alpha-tpuv5-lite; logs in launch_logs/lm-tiny
# pack the working tree of <REPO> (tracked and untracked files, not ignored ones) into launch_logs/lm-tiny/code.tar.gz
# create the slice (v5litepod-16, spot) through a queued resource
gcloud compute tpus queued-resources create lm-tiny --node-id=lm-tiny --zone=us-west4-a --project=my-proj --accelerator-type=v5litepod-16 --runtime-version=v2-alpha-tpuv5-lite --spot
# wait until it is ACTIVE (polled every 30 s)
gcloud compute tpus queued-resources describe lm-tiny --zone=us-west4-a --project=my-proj '--format=value(state.state)'
# ship the code to every worker, install it, mount the shared storage
gcloud compute tpus tpu-vm scp launch_logs/lm-tiny/code.tar.gz lm-tiny:lm-code.tar.gz --worker=all --zone=us-west4-a --project=my-proj --quiet
gcloud compute tpus tpu-vm ssh lm-tiny --worker=all --zone=us-west4-a --project=my-proj --quiet '--command=set -e
if [ -f ~/lm-run.pid ] && kill -TERM "$(cat ~/lm-run.pid)" 2>/dev/null; then
  while kill -0 "$(cat ~/lm-run.pid)" 2>/dev/null; do sleep 5; done
fi
rm -rf ~/lm && mkdir -p ~/lm && tar -xzf ~/lm-code.tar.gz -C ~/lm
python3 -m venv ~/lm-venv 2>/dev/null || { sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv && python3 -m venv --clear ~/lm-venv; }
. ~/lm-venv/bin/activate && cd ~/lm
pip install -q -U pip && pip install -q -e .
pip install -U "jax[tpu]"
command -v gcsfuse >/dev/null || {
  echo "deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-$(lsb_release -c -s) main" | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null
  curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null
  sudo apt-get update -qq && sudo apt-get install -y -qq gcsfuse
}
sudo mkdir -p /mnt/my-bucket && sudo chown "$(id -u):$(id -g)" /mnt/my-bucket
mountpoint -q /mnt/my-bucket || gcsfuse --implicit-dirs --rename-dir-limit=200000 my-bucket /mnt/my-bucket'
# run on every worker (output here and in launch_logs/lm-tiny/run-0.log)
gcloud compute tpus tpu-vm ssh lm-tiny --worker=all --zone=us-west4-a --project=my-proj --quiet '--command=echo $$ > ~/lm-run.pid
. ~/lm-venv/bin/activate && cd ~/lm
exec python -m lm.main --config=configs/tiny.py --workdir=/mnt/my-bucket/runs/tiny --config.train.steps=20'
# if the slice is preempted, during the run or after it: delete it, create it again, ship, install and run
# the same command (it resumes from its checkpoints), at most 5 times (--max_restarts)
# finished or preempted? the queued resource must stay ACTIVE for 120 s
gcloud compute tpus queued-resources describe lm-tiny --zone=us-west4-a --project=my-proj '--format=value(state.state)'
# done
# delete the slice
gcloud compute tpus queued-resources delete lm-tiny --zone=us-west4-a --project=my-proj --force --quiet
"""

TPU_SWEEP = """\
# sweep on Cloud TPU v6e-16 (reserved) iso-v6e in europe-west4-a, runtime v2-alpha-tpuv6e; logs in logs/iso
git -C <REPO> archive --format=tar.gz --output=<CWD>/logs/iso/code.tar.gz v0.3
# create the slice (v6e-16, reserved) through a queued resource
gcloud compute tpus queued-resources create iso-v6e --node-id=iso-v6e --zone=europe-west4-a --accelerator-type=v6e-16 --runtime-version=v2-alpha-tpuv6e --reserved
# wait until it is ACTIVE (polled every 30 s)
gcloud compute tpus queued-resources describe iso-v6e --zone=europe-west4-a '--format=value(state.state)'
# ship the code to every worker, install it, mount the shared storage
gcloud compute tpus tpu-vm scp logs/iso/code.tar.gz iso-v6e:lm-code.tar.gz --worker=all --zone=europe-west4-a --quiet
gcloud compute tpus tpu-vm ssh iso-v6e --worker=all --zone=europe-west4-a --quiet '--command=set -e
if [ -f ~/lm-run.pid ] && kill -TERM "$(cat ~/lm-run.pid)" 2>/dev/null; then
  while kill -0 "$(cat ~/lm-run.pid)" 2>/dev/null; do sleep 5; done
fi
rm -rf ~/lm && mkdir -p ~/lm && tar -xzf ~/lm-code.tar.gz -C ~/lm
python3 -m venv ~/lm-venv 2>/dev/null || { sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv && python3 -m venv --clear ~/lm-venv; }
. ~/lm-venv/bin/activate && cd ~/lm
pip install -q -U pip && pip install -q -e .
pip install -U "jax[tpu]"
test -d /mnt/nfs || { printf '"'"'%s is not mounted on %s\\n'"'"' /mnt/nfs "$(hostname)" >&2; exit 1; }'
# run on every worker (output here and in logs/iso/run-0.log)
gcloud compute tpus tpu-vm ssh iso-v6e --worker=all --zone=europe-west4-a --quiet '--command=echo $$ > ~/lm-run.pid
. ~/lm-venv/bin/activate && cd ~/lm
export XLA_FLAGS='"'"'--xla_dump_to=/tmp/x y'"'"'
exec python -m experiments.sweep --config=experiments/sweeps/isoflop.py --sweep_dir=/mnt/nfs/sweeps/iso'
# if the slice is preempted, during the run or after it: delete it, create it again, ship, install and run
# the same command (it resumes from its checkpoints), at most 2 times (--max_restarts)
# finished or preempted? the queued resource must stay ACTIVE for 120 s
gcloud compute tpus queued-resources describe iso-v6e --zone=europe-west4-a '--format=value(state.state)'
# done
# --keep: the slice stays up, and is billed; delete it with:
# gcloud compute tpus queued-resources delete iso-v6e --zone=europe-west4-a --force --quiet
"""

SLURM_RUN = """\
# run on SLURM: 2 node(s) x 8 GPU(s), job lm-tiny; script and logs in <REPO>/slurm_logs
# install lm into the venv, here: compute nodes often have no internet
bash -c '[ -x <REPO>/.venv/bin/python ] || python3 -m venv <REPO>/.venv; . <REPO>/.venv/bin/activate && cd <REPO> && pip install -e . && pip install -U "jax[cuda12]"'
# write the batch script
mkdir -p <REPO>/slurm_logs
cat > <REPO>/slurm_logs/lm-tiny.sbatch <<'EOF'
#!/bin/bash
# A run of lm on SLURM, written by experiments/launch/slurm.py. Submit it again with: sbatch <REPO>/slurm_logs/lm-tiny.sbatch
#
# One task per node: each task is one JAX process that drives all of its node's GPUs; jax.distributed
# finds the others from what srun sets for each task (SLURM_JOB_ID, SLURM_NTASKS, SLURM_PROCID,
# SLURM_LOCALID, SLURM_STEP_NODELIST). The workdir must be on a filesystem that every node sees
# (orbax writes each host's shards into the same checkpoint directory; process 0 writes
# metrics.jsonl, summary.json and config.json), and so must this checkout and its venv.
#
# --requeue: a preempted job (or one whose node failed) goes back to the queue and resumes from its
# checkpoint. --open-mode=append: it keeps one log across restarts. --signal: see on_time_limit.
#SBATCH --job-name=lm-tiny
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --partition=gpu
#SBATCH --account=lm
#SBATCH --output=<REPO>/slurm_logs/%x-%j.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@300

cd <REPO>
source <REPO>/.venv/bin/activate
# jax.distributed gives each SLURM task one GPU (number SLURM_LOCALID) unless told which;
# this task drives all 8.
export JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7

echo "[launch_slurm] job $SLURM_JOB_ID, start $((${SLURM_RESTART_COUNT:-0} + 1)), nodes $SLURM_JOB_NODELIST, $(date)"

# 300 s before the time limit SLURM sends this script USR1 (--signal). SIGTERM goes to the job steps:
# lm saves a checkpoint at the next step and exits with status 'preempted'; then the job requeues
# itself and its next start resumes from that checkpoint (at most 5 times: --max_restarts).
requeue=0
on_time_limit() {
  echo "[launch_slurm] time limit in 300 s: SIGTERM to lm, then requeue"
  requeue=1
  scancel --signal=TERM "$SLURM_JOB_ID"
}
# Preemption or scancel: SLURM sends SIGTERM to every process of the job. Stay alive while lm saves its
# checkpoint; SLURM itself requeues a preempted job, and a cancelled one stays cancelled.
on_term() {
  echo "[launch_slurm] SIGTERM: waiting for lm to save a checkpoint"
}
trap on_time_limit USR1
trap on_term TERM

# In the background: bash runs a trap only between commands, so it waits with `wait`, which a signal
# interrupts; it keeps waiting until srun has exited, then takes srun's exit status.
srun --kill-on-bad-exit=1 python -m lm.main --config=configs/tiny.py --workdir=/shared/runs/tiny &
srun_pid=$!
while kill -0 "$srun_pid" 2>/dev/null; do wait "$srun_pid"; done
wait "$srun_pid"; status=$?
echo "[launch_slurm] srun exit status $status, $(date)"

if [ "$requeue" = 1 ]; then
  if [ "${SLURM_RESTART_COUNT:-0}" -lt 5 ]; then
    scontrol requeue "$SLURM_JOB_ID"
  else
    echo "[launch_slurm] not requeued: 5 restarts used; submit the script again to continue"
  fi
fi
exit "$status"
EOF
# submit it
sbatch --parsable <REPO>/slurm_logs/lm-tiny.sbatch
# job JOBID; follow it with: squeue -j JOBID; tail -f <REPO>/slurm_logs/lm-tiny-JOBID.out
"""

SLURM_SWEEP = """\
# sweep on SLURM: 4 node(s) x 4 GPU(s), job iso; script and logs in /shared/logs
# write the batch script
mkdir -p /shared/logs
cat > /shared/logs/iso.sbatch <<'EOF'
#!/bin/bash
# A sweep of lm on SLURM, written by experiments/launch/slurm.py. Submit it again with: sbatch /shared/logs/iso.sbatch
#
# One task per node: each task is one JAX process that drives all of its node's GPUs; jax.distributed
# finds the others from what srun sets for each task (SLURM_JOB_ID, SLURM_NTASKS, SLURM_PROCID,
# SLURM_LOCALID, SLURM_STEP_NODELIST). The workdir must be on a filesystem that every node sees
# (orbax writes each host's shards into the same checkpoint directory; process 0 writes
# metrics.jsonl, summary.json and config.json), and so must this checkout and its venv.
#
# --requeue: a preempted job (or one whose node failed) goes back to the queue and resumes from its
# checkpoint. --open-mode=append: it keeps one log across restarts. --signal: see on_time_limit.
#SBATCH --job-name=iso
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --output=/shared/logs/%x-%j.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@600
#SBATCH --constraint=h100

cd <REPO>
module load cuda/12.4
source /shared/venvs/lm/bin/activate
# jax.distributed gives each SLURM task one GPU (number SLURM_LOCALID) unless told which;
# this task drives all 4.
export JAX_LOCAL_DEVICE_IDS=0,1,2,3
export NCCL_DEBUG=WARN

echo "[launch_slurm] job $SLURM_JOB_ID, start $((${SLURM_RESTART_COUNT:-0} + 1)), nodes $SLURM_JOB_NODELIST, $(date)"

# 600 s before the time limit SLURM sends this script USR1 (--signal). SIGTERM goes to the job steps:
# lm saves a checkpoint at the next step and exits with status 'preempted'; then the job requeues
# itself and its next start resumes from that checkpoint (at most 3 times: --max_restarts).
requeue=0
on_time_limit() {
  echo "[launch_slurm] time limit in 600 s: SIGTERM to lm, then requeue"
  requeue=1
  scancel --signal=TERM "$SLURM_JOB_ID"
}
# Preemption or scancel: SLURM sends SIGTERM to every process of the job. Stay alive while lm saves its
# checkpoint; SLURM itself requeues a preempted job, and a cancelled one stays cancelled.
on_term() {
  echo "[launch_slurm] SIGTERM: waiting for lm to save a checkpoint"
}
trap on_time_limit USR1
trap on_term TERM

# In the background: bash runs a trap only between commands, so it waits with `wait`, which a signal
# interrupts; it keeps waiting until srun has exited, then takes srun's exit status.
srun --kill-on-bad-exit=1 python -m experiments.sweep --config=experiments/sweeps/isoflop.py --sweep_dir=/shared/sweeps/iso --parallel=1 &
srun_pid=$!
while kill -0 "$srun_pid" 2>/dev/null; do wait "$srun_pid"; done
wait "$srun_pid"; status=$?
echo "[launch_slurm] srun exit status $status, $(date)"

if [ "$requeue" = 1 ]; then
  if [ "${SLURM_RESTART_COUNT:-0}" -lt 3 ]; then
    scontrol requeue "$SLURM_JOB_ID"
  else
    echo "[launch_slurm] not requeued: 3 restarts used; submit the script again to continue"
  fi
fi
exit "$status"
EOF
# submit it
sbatch --parsable /shared/logs/iso.sbatch
# job JOBID; follow it with: squeue -j JOBID; tail -f /shared/logs/iso-JOBID.out
"""
