"""One Cloud TPU slice: its gcloud command lines, the scripts its workers run, its states.

  Tpu            the gcloud commands of one queued resource holding one TPU VM slice
  setup_script   on every worker: unpack the code, install it in a venv, mount the shared storage
  run_script     on every worker: the command, in that venv, with its pid saved (a rerun stops it first)
  wait_active    poll until the slice is ACTIVE, or lost
  still_active   whether it stays ACTIVE a while after its command ended (finished, or preempted?)

Used by experiments/launch/tpu.py (one run or sweep on one slice) and tpu_pool.py (a pool of
slices, one point at a time on each).
"""

from __future__ import annotations

import shlex

from experiments.launch import common

ACTIVE = "ACTIVE"
LOST = {"SUSPENDING", "SUSPENDED", "FAILED", "PREEMPTED", "DELETING"}  # the capacity is gone: re-create
# Still on its way: CREATING, ACCEPTED, WAITING_FOR_RESOURCES, PROVISIONING.
SSH_LOST = 255  # ssh's own exit status: the connection failed, not the command

REMOTE_TAR = "lm-code.tar.gz"  # in each worker's home directory


class Tpu:
  """The gcloud command lines for one queued resource holding one TPU VM slice (node id = name)."""

  def __init__(self, name, zone, project, accelerator_type, runtime_version, provisioning, create_args=()):
    self.name, self.zone, self.project = name, zone, project
    self.accelerator_type, self.runtime_version = accelerator_type, runtime_version
    self.provisioning, self.create_args = provisioning, list(create_args)

  def _where(self) -> list[str]:
    return [f"--zone={self.zone}"] + ([f"--project={self.project}"] if self.project else [])

  def create(self) -> list[str]:
    tier = {"spot": ["--spot"], "reserved": ["--reserved"], "on-demand": []}[self.provisioning]
    return ["gcloud", "compute", "tpus", "queued-resources", "create", self.name, f"--node-id={self.name}",
            *self._where(), f"--accelerator-type={self.accelerator_type}",
            f"--runtime-version={self.runtime_version}", *tier, *self.create_args]

  def describe(self) -> list[str]:
    return ["gcloud", "compute", "tpus", "queued-resources", "describe", self.name, *self._where(),
            "--format=value(state.state)"]

  def delete(self) -> list[str]:
    # --force deletes the TPU VMs first; without it an ACTIVE queued resource is not deleted.
    return ["gcloud", "compute", "tpus", "queued-resources", "delete", self.name, *self._where(), "--force", "--quiet"]

  def scp(self, local: str, remote: str) -> list[str]:
    return ["gcloud", "compute", "tpus", "tpu-vm", "scp", local, f"{self.name}:{remote}", "--worker=all",
            *self._where(), "--quiet"]

  def ssh(self, command: str) -> list[str]:
    return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", self.name, "--worker=all", *self._where(), "--quiet",
            f"--command={command}"]

  def state(self, runner: common.Runner, first: bool = False) -> str:
    rc, out = runner.poll(self.describe(), first, dry_reply=ACTIVE)
    return out if rc == 0 else ""  # "" = unknown (gcloud failed, or the queued resource is gone)


def gcsfuse_lines(bucket: str, mount_point: str) -> list[str]:
  name, mp = bucket[len("gs://"):], shlex.quote(mount_point)
  repo = 'gcsfuse-$(lsb_release -c -s)'
  return [
      "command -v gcsfuse >/dev/null || {",
      f'  echo "deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt {repo} main"'
      " | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null",
      "  curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg"
      " | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null",
      "  sudo apt-get update -qq && sudo apt-get install -y -qq gcsfuse",
      "}",
      f'sudo mkdir -p {mp} && sudo chown "$(id -u):$(id -g)" {mp}',
      # Orbax finishes a checkpoint by renaming its temporary directory: gcsfuse renames
      # directories only with --rename-dir-limit (atomic and fast on a hierarchical-namespace bucket).
      f"mountpoint -q {mp} || gcsfuse --implicit-dirs --rename-dir-limit=200000 {name} {mp}",
  ]


def setup_script(extra_install: str, bucket: str | None, mount_point: str | None, shared_dir: str | None) -> str:
  lines = [
      "set -e",
      # A rerun after a lost connection: stop the old command first (SIGTERM: lm checkpoints).
      'if [ -f ~/lm-run.pid ] && kill -TERM "$(cat ~/lm-run.pid)" 2>/dev/null; then',
      '  while kill -0 "$(cat ~/lm-run.pid)" 2>/dev/null; do sleep 5; done',
      "fi",
      f"rm -rf ~/lm && mkdir -p ~/lm && tar -xzf ~/{REMOTE_TAR} -C ~/lm",
      "python3 -m venv ~/lm-venv 2>/dev/null || { sudo apt-get update -qq && "
      "sudo apt-get install -y -qq python3-venv && python3 -m venv --clear ~/lm-venv; }",
      ". ~/lm-venv/bin/activate && cd ~/lm",
      "pip install -q -U pip && pip install -q -e .",
  ]
  if extra_install:
    lines.append(extra_install)
  if bucket:
    lines += gcsfuse_lines(bucket, mount_point)
  if shared_dir:
    d = shlex.quote(shared_dir)
    # The path is an argument of printf, never part of its format or of a double-quoted string.
    lines.append(f"test -d {d} || {{ printf '%s is not mounted on %s\\n' {d} \"$(hostname)\" >&2; exit 1; }}")
  return "\n".join(lines)


def run_script(job: common.Job, env: dict[str, str]) -> str:
  return "\n".join(["echo $$ > ~/lm-run.pid", ". ~/lm-venv/bin/activate && cd ~/lm", *common.export_lines(env),
                    f"exec {job.command}"])


def wait_active(tpu: Tpu, runner: common.Runner, poll_s: float) -> bool:
  """True once ACTIVE; False if the request failed or the capacity went away."""
  runner.say(f"wait until it is ACTIVE (polled every {poll_s:g} s)")
  last, unknown, first = None, 0, True
  while True:
    state = tpu.state(runner, first)
    first = False
    if state != last and not runner.dry_run:
      runner.say(f"{tpu.name}: {state or 'state unknown'}")
    last = state
    if state == ACTIVE:
      return True
    if state in LOST:
      return False
    unknown = unknown + 1 if not state else 0
    if unknown >= 10:  # gone (deleted by hand?) or gcloud keeps failing
      return False
    runner.sleep(poll_s)


def still_active(tpu: Tpu, runner: common.Runner, poll_s: float, settle_s: float) -> bool:
  """Whether the slice stays ACTIVE for settle_s: a preempted VM may end the command (lm checkpoints
  on SIGTERM and exits 0) a little before the queued resource leaves ACTIVE."""
  runner.say(f"finished or preempted? the queued resource must stay ACTIVE for {settle_s:g} s")
  checks = round(settle_s / poll_s)
  for i in range(checks + 1):
    if tpu.state(runner, first=(i == 0)) in LOST:
      return False
    if i < checks:
      runner.sleep(poll_s)
  return True


