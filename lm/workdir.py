"""A training workdir: one writer at a time, whole-file writes, and whether a relaunch may resume it.

    path = prepare(workdir)               # '~' expanded, created; a file in its place is refused
    with Lock(path): ...                  # exclusive; a second lm.main on the workdir is refused
    atomic_write(file, text)              # a temporary file beside it, fsync, then a rename
    changes = check_resume(cfg, path)     # the safe changes, or WorkdirError naming the others

Lock. fcntl.flock on WORKDIR/lock, taken by process 0 for the whole run (the other processes of
a multi-host run write nothing there). The kernel releases it when the process ends, however it
ends (SIGKILL included), so no stale lock outlives its run. The file names the holder (pid, host,
start time) for the message a second writer gets. On a filesystem without flock (some FUSE
mounts) the run goes on unlocked, with a warning.

Atomic writes. config.json, summary.json, samples.txt and the start-up rewrite of metrics.jsonl
are written whole to a temporary file and renamed over the old one, so a kill or a full disk
leaves the old file or the new one, never a torn one (rename is atomic on POSIX filesystems).
metrics.jsonl is otherwise append-only; its reader drops a torn line with a warning.

Resume compatibility. A relaunch of a workdir that holds checkpoints compares the saved
config.json with the new config field by field, both resolved over today's defaults
(lm/schema.py:resolve). The fields in SAFE_TO_CHANGE may differ, and each change is printed.
Any other difference is refused before anything in the workdir changes: the checkpoints were
computed under the saved config, and continuing them under another would mix two runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time

from absl import logging
import jax

from lm import schema
from lm.errors import WorkdirError

LOCK_FILE = "lock"

# Fields a relaunch may change without changing what the checkpoints mean (a trailing "." is a
# whole section). Everything else (the model's shape, the data, the tokenizer, the optimizer,
# the seed, ...) must match the saved config.json.
SAFE_TO_CHANGE = (
    "experiment",
    "train.steps",               # the run's length; the lr schedule is recomputed for it (lm/optim.py)
    "train.eval_every", "train.eval_steps", "train.checkpoint_every", "train.keep_checkpoints",
    "train.log_every", "train.samples",
    "train.init_from",           # read only when a run starts from step 0
    "train.branch_from",         # read only when a branch starts (lm/branching.py): where, not what
    "train.checkpoint_steps",    # which steps are kept, not what they hold
    "data.data_dir",             # where the same prepared data is found
    "data.sft_eval_examples", "data.sft_max_new_tokens",   # how much each SFT evaluation generates
    "model.attention", "model.remat",   # how the same function is computed
    "mesh.",                     # a checkpoint restores onto any mesh
    "logging.",
)


def prepare(workdir: str) -> str:
  """The workdir with '~' expanded, created if missing."""
  path = os.path.expanduser(workdir)
  if os.path.exists(path) and not os.path.isdir(path):
    raise WorkdirError(f"--workdir={workdir} is a file, not a directory; pass a directory (created if missing).")
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise WorkdirError(f"cannot create --workdir={workdir}: {e.strerror or e}.") from None
  return path


def atomic_write(path: str, data: str | bytes) -> None:
  """Writes `path` whole or not at all (a temporary file in the same directory, then a rename)."""
  tmp = f"{path}.tmp{os.getpid()}"
  try:
    with open(tmp, "wb" if isinstance(data, bytes) else "w") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise


class Lock:
  """Exclusive use of a workdir by this process (a context manager; see the module docstring)."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    self.workdir = workdir
    self._file = None

  def __enter__(self):
    if jax.process_index() != 0:
      return self
    f = open(self.path, "a+")
    try:
      fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      holder = f.read().strip() or "a process that left no name"
      f.close()
      raise WorkdirError(
          f"{self.workdir} is in use: another lm.main trains in it ({holder}). One process writes a "
          "workdir at a time; wait for it to end, stop it (SIGTERM saves a checkpoint), or use another "
          "--workdir.") from None
    except OSError as e:  # the filesystem has no flock: go on without the guarantee
      logging.warning("cannot lock %s (%s); two runs on this workdir would not be stopped", self.path, e)
      print(f"WARNING: cannot lock {self.path} ({e}); make sure no other run uses this workdir.", flush=True)
      f.close()
      return self
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    f.flush()
    self._file = f
    return self

  def __exit__(self, *exc):
    if self._file is not None:
      self._file.close()  # closing the file releases the lock
      self._file = None


def checkpoint_steps(workdir: str) -> list[int]:
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(s) for s in os.listdir(d) if s.isdigit()) if os.path.isdir(d) else []


def _flat(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def is_safe_to_change(field: str) -> bool:
  return any(field == s or (s.endswith(".") and field.startswith(s)) for s in SAFE_TO_CHANGE)


def config_changes(saved: dict, cfg) -> list[tuple[str, object, object]]:
  """(field, saved value, new value) for every field of today's schema whose values differ, both
  resolved over today's defaults (a field a run predates takes its default on both sides)."""
  old = _flat(schema.resolve({k: v for k, v in saved.items() if k != "derived"}).to_dict())
  new = _flat(schema.resolve(json.loads(cfg.to_json_best_effort())).to_dict())
  fields = _flat(schema.defaults().to_dict())
  return [(k, old.get(k), new.get(k)) for k in sorted(fields) if old.get(k) != new.get(k)]


def check_resume(cfg, workdir: str) -> list[tuple[str, object, object]]:
  """The changes a relaunch makes to a workdir that holds checkpoints (all of them safe), or
  WorkdirError naming the unsafe ones. A workdir without checkpoints starts over: no check."""
  steps = checkpoint_steps(workdir)
  path = os.path.join(workdir, "config.json")
  if not steps or not os.path.isfile(path):
    return []  # without config.json, restore compares the checkpoint's arrays (lm/checkpoint.py)
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    raise WorkdirError(f"{path} cannot be read ({e}), so a relaunch cannot check that this config matches the "
                       "checkpoints; restore the file or use a new --workdir.") from None
  changes = config_changes(saved, cfg)
  unsafe = [c for c in changes if not is_safe_to_change(c[0])]
  if unsafe:
    shown = "\n".join(f"  {k}: {old!r} -> {new!r}" for k, old, new in unsafe)
    raise WorkdirError(
        f"{workdir} holds a run (checkpoints up to step {steps[-1]}) whose config.json differs from this config "
        f"in {len(unsafe)} field(s) that change what it computes:\n{shown}\n"
        "Nothing in the workdir was changed. To train this config, use a new --workdir; to start it from this "
        f"run's parameters, add --config.train.init_from={workdir} with a new --workdir; to resume the run, "
        f"drop the override(s). Fields a relaunch may change: {', '.join(SAFE_TO_CHANGE)}.")
  return changes
