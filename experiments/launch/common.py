"""Shared by the launchers (experiments/launch/tpu.py, experiments/launch/slurm.py).

  Job          what runs on every host: one lm.main run or one experiments.sweep, as argv
  Runner       runs each command (output saved under a local log dir), or with --dry_run
               prints it and runs nothing; one seam, so tests can script the replies
  pack_tree    the code to ship: the working tree (tracked + untracked, not ignored files)

The launchers are thin: every step is a real command (gcloud, sbatch, pip) that a dry run
prints exactly as it would execute it, so a user can read, copy or run it by hand.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # experiments/launch/common.py -> the checkout


class LaunchError(Exception):
  """A problem with the launcher's flags, reported as one line before anything runs."""


@dataclasses.dataclass(frozen=True)
class Job:
  kind: str                 # "run" (lm.main) or "sweep" (experiments.sweep)
  argv: tuple[str, ...]     # python -m ... and its arguments
  output_dir: str           # --workdir of a run, --sweep_dir of a sweep: must be shared by all hosts

  @property
  def command(self) -> str:
    return shlex.join(self.argv)


def add_job_flags(parser: argparse.ArgumentParser):
  what = parser.add_argument_group("what to run on every host (one of)")
  what.add_argument("--run", metavar="ARGS", help='lm.main arguments, e.g. --run="--config=configs/ladder.py:p50m '
                    '--workdir=DIR --config.train.steps=2000". Arguments after a bare -- mean the same.')
  what.add_argument("--sweep", metavar="ARGS", help='experiments.sweep arguments, e.g. '
                    '--sweep="--config=experiments/sweeps/isoflop.py --sweep_dir=DIR".')
  parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                      help="Environment variable for the command on every host (repeatable).")


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
  """Launcher flags before a bare '--', lm.main arguments after it."""
  if "--" in argv:
    i = argv.index("--")
    return argv[:i], argv[i + 1:]
  return argv, []


def flag_value(args: list[str], name: str) -> str | None:
  """The value of --name=V or --name V in an argument list (the last one wins, as in absl)."""
  value = None
  for i, a in enumerate(args):
    if a.startswith(f"--{name}="):
      value = a.split("=", 1)[1]
    elif a == f"--{name}" and i + 1 < len(args):
      value = args[i + 1]
  return value


def parse_job(run: str | None, sweep: str | None, rest: list[str], repo: Path | None = None) -> Job:
  """The command for every host; its config must be a file of the repository that gets shipped."""
  repo = repo or REPO
  given = [x for x in (run, sweep, rest or None) if x is not None]
  if len(given) != 1:
    raise LaunchError("Say what to run, once: --run='<lm.main args>', or -- <lm.main args>, or --sweep='<sweep args>'.")
  if sweep is not None:
    kind, module, out_flag, args = "sweep", "experiments.sweep", "sweep_dir", shlex.split(sweep)
  else:
    kind, module, out_flag, args = "run", "lm.main", "workdir", shlex.split(run) if run is not None else list(rest)
  config = flag_value(args, "config")
  if not config:
    raise LaunchError(f"The {kind} needs --config=... ({module} arguments: {shlex.join(args) or 'none'}).")
  config_file = config.split(":", 1)[0]
  if not os.path.isabs(config_file) and not (repo / config_file).is_file():
    raise LaunchError(f"--config={config}: no file {config_file} in {repo}, the code that runs on the hosts.")
  output_dir = flag_value(args, out_flag)
  if not output_dir:
    raise LaunchError(f"The {kind} needs --{out_flag}=DIR, on storage that every host sees.")
  return Job(kind, ("python", "-m", module, *args), output_dir)


def parse_env(pairs: list[str]) -> dict[str, str]:
  env = {}
  for p in pairs:
    key, sep, value = p.partition("=")
    if not sep or not key.isidentifier():
      raise LaunchError(f"--env={p}: expected KEY=VALUE.")
    env[key] = value
  return env


def export_lines(env: dict[str, str]) -> list[str]:
  return [f"export {k}={shlex.quote(v)}" for k, v in env.items()]


def is_under(path: str, root: str) -> bool:
  path, root = os.path.normpath(path), os.path.normpath(root)
  return path == root or path.startswith(root.rstrip("/") + "/")


class Runner:
  """Runs commands and saves each one's output in log_dir/<step>.log; with dry_run, prints
  every command exactly as it would run it and runs nothing (polls get `dry_reply`)."""

  def __init__(self, dry_run: bool, log_dir: str | Path, out=None):
    self.dry_run = dry_run
    self.log_dir = Path(log_dir)
    self.out = out or sys.stdout
    self._running: set[subprocess.Popen] = set()  # commands of every thread (a pool of slices), for stop_all
    self._lock = threading.Lock()

  def stop_all(self, which=lambda argv: True):
    """SIGTERM to every command running now, in any thread, whose argv `which` accepts (Ctrl-C of a pool)."""
    with self._lock:
      for proc in list(self._running):
        if which(proc.args):
          _stop(proc)

  def say(self, text: str):
    """A comment: what happens next, or why."""
    for line in text.splitlines():
      print(f"# {line}" if line else "#", file=self.out, flush=True)

  def show(self, argv: list[str]):
    print(shlex.join(argv), file=self.out, flush=True)

  def run(self, argv: list[str], step: str, stream: bool = False, watch=None, watch_every: float = 60) -> int:
    """Exit status of argv; its output goes to log_dir/<step>.log (and to stdout if stream).
    watch: a function called every watch_every seconds while it runs; True stops the command."""
    self.show(argv)
    if self.dry_run:
      return 0
    self.log_dir.mkdir(parents=True, exist_ok=True)
    rc = self._execute(argv, self.log_dir / f"{step}.log", stream, watch, watch_every)
    if rc and not stream:
      tail = (self.log_dir / f"{step}.log").read_text(errors="replace").splitlines()[-15:]
      self.say(f"exit status {rc}; the end of {self.log_dir / f'{step}.log'}:")
      print("\n".join(tail), file=self.out, flush=True)
    return rc

  def poll(self, argv: list[str], first: bool, dry_reply: str = "") -> tuple[int, str]:
    """(exit status, stripped stdout) of a query; printed only the first time of a poll loop."""
    if first:
      self.show(argv)
    if self.dry_run:
      return 0, dry_reply
    return self._capture(argv)

  def read(self, argv: list[str], cwd: str | None = None) -> tuple[int, str]:
    """(exit status, stdout) of a command that only reads (a sweep's plan): run in a dry run too."""
    print((f"cd {shlex.quote(cwd)} && " if cwd else "") + shlex.join(argv), file=self.out, flush=True)
    return self._read(argv, cwd)

  def write(self, path: Path, text: str):
    """Write a file; a dry run prints the shell that would write it."""
    print(f"cat > {shlex.quote(str(path))} <<'EOF'\n{text}EOF", file=self.out, flush=True)
    if not self.dry_run:
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_text(text)

  def sleep(self, seconds: float):
    if not self.dry_run:
      time.sleep(seconds)

  # The places that touch the system: a test's fake runner replaces these.
  def _execute(self, argv, log_path: Path, stream: bool, watch, watch_every: float) -> int:
    with open(log_path, "a") as log:
      log.write(f"$ {shlex.join(argv)}\n")
      # A session of its own: stopping it stops its children too (gcloud's ssh processes, which
      # would otherwise hold the output pipe open until their connections time out).
      proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                              start_new_session=True)
      with self._lock:
        self._running.add(proc)
      stop = threading.Event()
      if watch is not None:
        def watcher():
          while not stop.wait(watch_every):
            if watch():
              self.say("stopping the command: its machines are gone")
              _stop(proc)
              return
        threading.Thread(target=watcher, daemon=True).start()
      try:
        for line in proc.stdout:  # line by line, so a long run's log can be followed as it grows
          log.write(line)
          log.flush()
          if stream:
            self.out.write(line)
            self.out.flush()
        rc = proc.wait()
      except BaseException:  # Ctrl-C: its own session does not get the SIGINT, so pass it on
        _stop(proc)
        raise
      finally:
        stop.set()
        with self._lock:
          self._running.discard(proc)
      log.write(f"[exit status {rc}]\n")
      return rc

  def _read(self, argv, cwd) -> tuple[int, str]:
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=cwd)
    return proc.returncode, proc.stdout if proc.returncode == 0 else proc.stdout + proc.stderr

  def _capture(self, argv) -> tuple[int, str]:
    proc = subprocess.run(argv, capture_output=True, text=True)
    return proc.returncode, (proc.stdout if proc.returncode == 0 else proc.stdout + proc.stderr).strip()


def _stop(proc: subprocess.Popen):
  try:
    os.killpg(proc.pid, signal.SIGTERM)
  except ProcessLookupError:
    pass


def tree_files(repo: Path, exclude: list[Path]) -> list[str]:
  """The working tree as git sees it: tracked and untracked files, ignored ones left out."""
  listed = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                          capture_output=True, text=True, check=True).stdout.split("\0")
  skip = [str(p.resolve()) for p in exclude]
  files = []
  for name in sorted(set(filter(None, listed))):
    path = repo / name
    if path.is_file() and not any(is_under(str(path.resolve()), s) for s in skip):  # deleted files stay listed
      files.append(name)
  return files


def pack_tree(repo: Path, dest: Path, exclude: list[Path]) -> int:
  dest.parent.mkdir(parents=True, exist_ok=True)
  with tarfile.open(dest, "w:gz") as tar:
    for name in tree_files(repo, exclude + [dest]):
      tar.add(repo / name, arcname=name)
  return 0
