"""orbax checkpoints of a run: train state + data iterator position + metadata.

    WORKDIR/checkpoints/<step>/state   the train state (StandardSave: sharded arrays)
                              /data    the data iterator's JSON state
                              /meta    step, tokens, wall time, resolved config

Saving is asynchronous (orbax writes into a temporary directory and renames it when
complete), so a run killed mid-save leaves the previous checkpoint as the latest. A
checkpoint that was finalised but cannot be read (a damaged disk, a half-copied
directory) is moved aside to `checkpoints/unreadable-<step>` and the next older one is
used, with a warning; nothing is deleted.
"""

from __future__ import annotations

import json
import os
from typing import Any

from absl import logging
import jax
import orbax.checkpoint as ocp
from ml_collections import ConfigDict

from lm import schema


def abstract_with_shardings(tree, shardings):
  """ShapeDtypeStruct leaves carrying the target shardings: restore places each shard."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


class Checkpointer:
  def __init__(self, workdir: str, keep: int):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.keep = keep
    self._open()

  def _open(self):
    options = ocp.CheckpointManagerOptions(max_to_keep=self.keep, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_state: dict, meta: dict, wait: bool = False) -> None:
    """Save (asynchronously unless `wait`); a step already saved is left as it is."""
    self.manager.wait_until_finished()
    if step in self.manager.all_steps():
      return
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_state),
        meta=ocp.args.JsonSave(meta)), force=True)
    if wait:
      self.manager.wait_until_finished()

  def restore_latest(self, abstract_state) -> tuple[int, Any, dict, dict] | None:
    """(step, state, data_state, meta) of the newest readable checkpoint, or None."""
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=ocp.args.JsonRestore(),
            meta=ocp.args.JsonRestore()))
        return step, restored["state"], restored["data"], restored["meta"]
      except Exception as e:  # noqa: BLE001 - any failure to read means "try the previous one"
        self._set_aside(step, e)
    return None

  def _set_aside(self, step: int, error: Exception) -> None:
    older = [s for s in self.manager.all_steps() if s < step]
    msg = (f"checkpoint at step {step} is unreadable ({type(error).__name__}: {str(error)[:200]}); "
           f"{'falling back to step %d' % max(older) if older else 'no older checkpoint, starting fresh'}. "
           f"It is kept as {self.directory}/unreadable-{step}.")
    logging.warning(msg)
    print(f"WARNING: {msg}", flush=True)
    if jax.process_index() == 0:
      os.replace(os.path.join(self.directory, str(step)), os.path.join(self.directory, f"unreadable-{step}"))
    self.manager.close()
    self._open()

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def latest_step_directory(path: str) -> str:
  """A workdir, its checkpoints/ directory, or one step's directory -> a step's directory."""
  path = os.path.abspath(path)
  for candidate in (os.path.join(path, "checkpoints"), path):
    if os.path.isdir(candidate):
      steps = [int(d) for d in os.listdir(candidate) if d.isdigit()]
      if steps:
        return os.path.join(candidate, str(max(steps)))
  if os.path.isdir(os.path.join(path, "state")):
    return path
  raise FileNotFoundError(
      f"No checkpoint under {path}: expected a workdir with checkpoints/<step>/, or a step directory. "
      f"Train one first with `python -m lm.main --config=... --workdir={path}`.")


def load_params(path: str, abstract_params) -> tuple[Any, int]:
  """Only the parameters of another run's latest checkpoint (for fine-tuning), placed by the
  shardings in `abstract_params`; the optimizer state is not read."""
  step_dir = latest_step_directory(path)
  target = {"params": abstract_params}
  restored = ocp.PyTreeCheckpointer().restore(
      os.path.join(step_dir, "state"),
      args=ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                  partial_restore=True))
  return restored["params"], int(os.path.basename(step_dir))


def read_meta(path: str) -> dict:
  step_dir = latest_step_directory(path)
  meta_dir = os.path.join(step_dir, "meta")
  for name in ("metadata", "meta"):
    if os.path.isfile(os.path.join(meta_dir, name)):
      with open(os.path.join(meta_dir, name)) as f:
        return json.load(f)
  return {}


def write_config(cfg: ConfigDict, workdir: str, **derived) -> None:
  """WORKDIR/config.json: the resolved config, and the sizes derived from it under "derived"."""
  resolved = json.loads(cfg.to_json_best_effort())
  resolved["derived"] = derived
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(resolved, f, indent=2)


def load_config(workdir: str) -> ConfigDict:
  """The resolved config a run saved in WORKDIR/config.json, over today's defaults (fields
  added since the run was made take their defaults: lm/schema.py:resolve)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: {workdir} is not an lm workdir (train into it with "
                            f"`python -m lm.main --config=configs/default.py --workdir={workdir}`).")
  with open(path) as f:
    return schema.resolve(json.load(f))
