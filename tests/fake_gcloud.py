"""A fake `gcloud` for the pool-of-slices tests: queued resources and TPU VMs on this machine.

  queued-resources create NAME   WAITING_FOR_RESOURCES, ACTIVE from its second describe on
  queued-resources describe NAME the state (exit 1, NOT_FOUND, once deleted)
  queued-resources delete NAME   stops the commands running on it (SIGTERM, then SIGKILL after
                                 5 s: a VM's shutdown), then forgets it
  tpu-vm scp ... NAME:...        nothing to copy (the code is this checkout)
  tpu-vm ssh NAME --command=C    exit 255 unless ACTIVE. A setup command (it installs with pip)
                                 makes the slice's home, $FAKE_GCLOUD/homes/NAME, with ~/lm this
                                 checkout and ~/lm-venv/bin/activate sourcing $FAKE_GCLOUD_VENV's;
                                 any other command runs there in bash, in a session of its own
                                 (another machine). SIGTERM to this gcloud passes to the command
                                 and ends with 255, as a dropped connection does.
Preemption: $FAKE_GCLOUD_PREEMPT, JSON [{"point": P, "when": PATH}]: the slice whose command runs
point P is preempted once PATH exists (PREEMPTED from then on; SIGTERM to its command, then exit 255).
Every call is appended to $FAKE_GCLOUD/calls as 'VERB NAME'; state in $FAKE_GCLOUD/state.json.
"""

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def home() -> str:
  return os.environ["FAKE_GCLOUD"]


@contextlib.contextmanager
def state():
  path = os.path.join(home(), "state.json")
  with open(os.path.join(home(), "state.lock"), "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    s = json.load(open(path)) if os.path.exists(path) else {"resources": {}, "preempted": [], "history": []}
    yield s
    with open(f"{path}.tmp", "w") as f:
      json.dump(s, f, indent=1)
    os.replace(f"{path}.tmp", path)


def log(verb: str, name: str):
  with open(os.path.join(home(), "calls"), "a") as f:
    f.write(f"{verb} {name}\n")


def queued(verb: str, name: str, args: list[str]) -> int:
  log(verb, name)
  with state() as s:
    r = s["resources"].get(name)
    if verb == "create":
      if r:
        print(f"ERROR: queued resource {name} already exists", file=sys.stderr)
        return 1
      kind = next(a.split("=", 1)[1] for a in args if a.startswith("--accelerator-type="))
      s["resources"][name] = {"state": "WAITING_FOR_RESOURCES", "type": kind, "describes": 0, "pgids": []}
      s["history"].append({"name": name, "type": kind, "created": time.time()})
      return 0
    if r is None:
      print(f"ERROR: NOT_FOUND: {name}", file=sys.stderr)
      return 1
    if verb == "describe":
      r["describes"] += 1
      if r["state"] == "WAITING_FOR_RESOURCES" and r["describes"] > 1:
        r["state"] = "ACTIVE"
      print(r["state"])
      return 0
    pgids = r["pgids"]  # delete
  for sig in (signal.SIGTERM, signal.SIGKILL):
    for pgid in pgids:
      with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)
    deadline = time.time() + 5
    while time.time() < deadline and any(_alive(p) for p in pgids):
      time.sleep(0.05)
  with state() as s:
    s["resources"].pop(name, None)
    for h in s["history"]:
      if h["name"] == name and "deleted" not in h:
        h["deleted"] = time.time()
  return 0


def _alive(pgid: int) -> bool:
  try:
    os.killpg(pgid, 0)
    return True
  except ProcessLookupError:
    return False


def ssh(name: str, command: str) -> int:
  with state() as s:
    r = s["resources"].get(name)
    if not r or r["state"] != "ACTIVE":
      log("ssh-refused", name)
      return 255
  vm_home = os.path.join(home(), "homes", name)
  if "pip install" in command:  # the setup script: this machine has lm already
    log("setup", name)
    os.makedirs(os.path.join(vm_home, "lm-venv", "bin"), exist_ok=True)
    if not os.path.exists(os.path.join(vm_home, "lm")):
      os.symlink(REPO, os.path.join(vm_home, "lm"))
    with open(os.path.join(vm_home, "lm-venv", "bin", "activate"), "w") as f:
      f.write(f'source {os.environ["FAKE_GCLOUD_VENV"]}/bin/activate\n')
    return 0
  point = next((w.split("=", 1)[1] for w in command.split() if w.startswith("--point=")), None)
  log(f"run {point}", name)
  proc = subprocess.Popen(["bash", "-c", command], env={**os.environ, "HOME": vm_home}, start_new_session=True)
  with state() as s:
    s["resources"][name]["pgids"].append(proc.pid)
    s.setdefault("pgids", []).append(proc.pid)
  rules = json.loads(os.environ.get("FAKE_GCLOUD_PREEMPT", "[]"))
  while proc.poll() is None:
    if STOPPED:
      with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
      proc.wait()
      return 255
    for i, rule in enumerate(rules):
      if rule["point"] == point and os.path.exists(rule["when"]):
        with state() as s:
          if i in s["preempted"]:
            continue
          s["preempted"].append(i)
          s["resources"][name]["state"] = "PREEMPTED"
        log("preempt", name)
        os.killpg(proc.pid, signal.SIGTERM)  # the VM shuts down: its processes get SIGTERM
        proc.wait()
        return 255
    time.sleep(0.05)
  with state() as s:
    gone = s["resources"].get(name, {}).get("state") != "ACTIVE"
  return 255 if gone else proc.returncode  # a deleted or preempted VM drops the connection


STOPPED = []  # SIGTERM to this gcloud (the launcher stopping an ssh): set from the first instruction on


def main(argv: list[str]) -> int:
  assert argv[:2] == ["compute", "tpus"], argv
  group, verb = argv[2], argv[3]
  if group == "queued-resources":
    return queued(verb, argv[4], argv[5:])
  if verb == "scp":
    name = argv[5].split(":", 1)[0]
    log("scp", name)
    with state() as s:
      return 0 if s["resources"].get(name, {}).get("state") == "ACTIVE" else 1
  command = next(a.split("=", 1)[1] for a in argv if a.startswith("--command="))
  return ssh(argv[4], command)


def install(bin_dir, fake_home, venv) -> dict[str, str]:
  """`gcloud` in bin_dir running this file; the environment a test puts it in."""
  os.makedirs(bin_dir, exist_ok=True)
  os.makedirs(fake_home, exist_ok=True)
  path = os.path.join(bin_dir, "gcloud")
  with open(path, "w") as f:
    f.write(f'#!/bin/bash\nexec {sys.executable} {os.path.abspath(__file__)} "$@"\n')
  os.chmod(path, 0o755)
  return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_GCLOUD": str(fake_home), "FAKE_GCLOUD_VENV": str(venv)}


def cleanup() -> None:
  """A test's teardown: the commands still running on any slice, by their process groups."""
  with contextlib.suppress(FileNotFoundError), state() as s:
    for pgid in s.get("pgids", []):  # every command ever run, on slices deleted or not
      with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


if __name__ == "__main__":
  signal.signal(signal.SIGTERM, lambda *_: STOPPED.append(1))
  sys.exit(main(sys.argv[1:]))
