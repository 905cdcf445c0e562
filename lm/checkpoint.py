"""orbax checkpoints of a run: train state + data iterator position + metadata, with checksums.

    WORKDIR/checkpoints/<step>/state   the train state (StandardSave: sharded arrays)
                              /data    the data iterator's JSON state
                              /meta    step, tokens, wall time, the train log's running totals,
                                       and the checksums of state and data

Saving is asynchronous (orbax writes into a temporary directory and renames it when
complete), so a run killed mid-save leaves the previous checkpoint as the latest.

Integrity. At save, every array of the state gets a 32-bit checksum (`checksums`: a
position-weighted sum of its bits, mixed, modulo 2^32, computed on the devices where the
array lives) and the data state a SHA-256; both go into meta. At restore they are computed
again and compared, and the parameters must be finite (lm never saves others). Modular sums
are exact in any order, so a checkpoint restored onto another mesh gives the same checksums.
Measured on the default model (2.6M parameters, a 31 MB state, 2 CPU cores): README.md.

Restore, newest first, sorts each checkpoint into one of three cases:
  intact      restored and verified: training resumes from it.
  damaged     unreadable, a checksum differs, or the parameters are not finite: it is moved
              aside to `checkpoints/unreadable-<step>` (nothing is deleted) once an older
              intact one is found, and that one is used, with a warning.
  not this run's  its arrays have other shapes than this config builds, or reading it is
              refused for permissions: WorkdirError, before anything is moved.
When every checkpoint is damaged, nothing is moved and the run is refused (WorkdirError says
how to start over on purpose): a silent restart from step 0 would discard the run.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp
from ml_collections import ConfigDict

from lm import schema
from lm import workdir as workdir_lib
from lm.errors import WorkdirError


def abstract_with_shardings(tree, shardings):
  """ShapeDtypeStruct leaves carrying the target shardings: restore places each shard."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


# ---- checksums ----

def _path_name(path) -> str:
  """A pytree path as 'params/layer_0/attn/q' (dict keys, sequence indices, attribute names)."""
  parts = [getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in path]
  return "/".join(str(p) for p in parts)


def _shard_checksum(x, offsets, strides):
  """sum_i mix(bits_i) * (2 i + 1) mod 2^32 over one shard, i being each element's flat index in
  the whole array (the shard starts at `offsets`; `strides` are the whole array's, mod 2^32).
  Any change of one element changes the sum (the mix is a bijection of uint32 and every weight
  is odd, hence invertible mod 2^32); position-weighted, so moved elements change it too."""
  if x.dtype == jnp.bool_:
    bits = x.astype(jnp.uint32)
  else:
    uint = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize]
    bits = jax.lax.bitcast_convert_type(x, uint).astype(jnp.uint32)
  index = jnp.zeros(x.shape, jnp.uint32)
  for d in range(x.ndim):
    index = index + (jax.lax.broadcasted_iota(jnp.uint32, x.shape, d) + offsets[d]) * strides[d]
  h = bits ^ (bits >> 16)
  h = h * jnp.uint32(0x45D9F3B)
  h = h ^ (h >> 16)
  return jnp.sum(h * (index * jnp.uint32(2) + jnp.uint32(1)), dtype=jnp.uint32)


# One small single-device program per shard shape (offsets and strides are arguments), run on
# the device that holds the shard: no collective, so no cross-device rendezvous. Summing a
# sharded array in one jitted program all-reduced over the 8 simulated CPU devices, and that
# rendezvous aborted the process under load (XLA's "Termination timeout", seen in CI).
_shard_checksum_jit = jax.jit(_shard_checksum)


def _partial_checksum(x) -> int:
  """This process's share of a leaf's checksum: the shards it holds with replica_id 0 (each
  part of the array is counted once, wherever and however often it is replicated)."""
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)  # elementwise: the key data keeps the keys' sharding
  shape = tuple(x.shape)
  strides, stride = [0] * len(shape), 1
  for d in reversed(range(len(shape))):
    strides[d], stride = stride % 2**32, stride * shape[d]
  strides = np.asarray(strides, np.uint32)
  shards = ([(s.data, s.index) for s in x.addressable_shards if s.replica_id == 0]
            if isinstance(x, jax.Array) else [(jnp.asarray(x), ())])
  sums = []
  with jax.set_mesh(None):  # a run's mesh context would make jit expect all its devices
    for data, index in shards:
      starts = [(sl.start or 0) if isinstance(sl, slice) else 0 for sl in index]
      offsets = np.asarray(starts + [0] * (len(shape) - len(starts)), np.uint32)
      sums.append(_shard_checksum_jit(data, offsets, strides))  # dispatched; read once all run
  return sum(int(v) for v in sums) % 2**32


def checksums(tree) -> dict[str, int]:
  """{path: 32-bit checksum} of every array of a pytree (see `_shard_checksum`). Modular sums
  add up in any order, so the result does not depend on the mesh; on several processes every
  one calls this (as orbax's save and restore), and the shares are summed across them."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  shares = np.asarray([_partial_checksum(x) for _, x in flat], np.uint64)
  if jax.process_count() > 1:
    shares = np.asarray(multihost_utils.process_allgather(shares.astype(np.uint32))).astype(np.uint64).sum(0)
  return {_path_name(p): int(v % 2**32) for (p, _), v in zip(flat, shares)}


def data_checksum(data_state) -> str:
  return hashlib.sha256(json.dumps(data_state, sort_keys=True).encode()).hexdigest()


_shard_finite_jit = jax.jit(lambda x: jnp.all(jnp.isfinite(x)))


def all_finite(tree) -> bool:
  """Every element finite, checked shard by shard on the devices that hold them (no collective,
  for the same reason as the checksums); on several processes every one calls this."""
  with jax.set_mesh(None):
    flags = [_shard_finite_jit(s.data) for x in jax.tree.leaves(tree)
             for s in (x.addressable_shards if isinstance(x, jax.Array) else [])]
    local = all(bool(f) for f in flags) and all(
        bool(np.all(np.isfinite(x))) for x in jax.tree.leaves(tree) if not isinstance(x, jax.Array))
  if jax.process_count() > 1:
    return bool(np.asarray(multihost_utils.process_allgather(np.asarray(local))).all())
  return local


def verify(state, data_state, meta: dict, only: str = "") -> str | None:
  """Why a restored checkpoint is damaged, or None if it matches the checksums saved with it.
  `only`: check the arrays under this path prefix alone (a parameters-only restore)."""
  recorded = (meta or {}).get("checksums")
  if recorded is not None:
    saved = {k: v for k, v in recorded["state"].items() if k.startswith(only)}
    got = checksums(state if not only else {only.rstrip("/"): state})
    bad = sorted(k for k in saved if got.get(k) != saved[k])
    if bad or set(got) != set(saved):
      return (f"damaged: {len(bad)} of its {len(saved)} arrays differ from the checksums recorded when it was saved "
              f"({', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''})")
    if data_state is not None and data_checksum(data_state) != recorded["data"]:
      return "damaged: its data-iterator state differs from the one recorded when it was saved"
  params = state.get("params", state) if not only else state
  if not all_finite(params):
    return "damaged: its parameters are not finite (lm never saves such a checkpoint)"
  return None


# ---- why a checkpoint cannot be used ----

def _permission_denied(e: BaseException) -> bool:
  while e is not None:
    if isinstance(e, PermissionError) or "PERMISSION_DENIED" in str(e) or "Permission denied" in str(e):
      return True
    e = e.__cause__ or e.__context__
  return False


def _refuse_permissions(step_dir: str, e: BaseException):
  raise WorkdirError(f"cannot read the checkpoint {step_dir}: permission denied ({str(e)[:200]}). That is not a damaged "
                     "checkpoint; nothing was changed. Fix the permissions (or run as the user who wrote it) and "
                     "rerun.") from None


def shape_mismatch(step_dir: str, abstract) -> str | None:
  """The arrays whose saved shapes (or presence) differ from `abstract`'s, as text; None when
  they agree or the checkpoint's metadata cannot be read (the restore then tells)."""
  try:
    saved_tree = ocp.StandardCheckpointer().metadata(os.path.join(step_dir, "state")).item_metadata
  except Exception as e:  # noqa: BLE001 - unreadable metadata: let the restore classify it
    if _permission_denied(e):
      _refuse_permissions(step_dir, e)
    return None
  saved = {_path_name(p): tuple(getattr(v, "shape", ()) or ())
           for p, v in jax.tree_util.tree_flatten_with_path(saved_tree)[0]}
  if not saved:  # orbax gives an empty tree for metadata it could not read
    return None
  want = {_path_name(p): tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(abstract)[0]}
  diffs = [f"{k} {saved[k]} saved vs {want[k]} here" for k in sorted(set(saved) & set(want)) if saved[k] != want[k]]
  diffs += [f"{k} missing from the checkpoint" for k in sorted(set(want) - set(saved))]
  diffs += [f"{k} in the checkpoint only" for k in sorted(set(saved) - set(want))]
  return "; ".join(diffs[:4]) + (f" (and {len(diffs) - 4} more)" if len(diffs) > 4 else "") if diffs else None


def _refuse_mismatch(workdir: str, step: int, what: str):
  raise WorkdirError(
      f"the checkpoint at step {step} in {workdir} holds another model or optimizer than this config builds: {what}. "
      f"Nothing was changed. Resume it with the config it was trained with, train this config in a new --workdir, "
      f"or start from its parameters with --config.train.init_from={workdir} (and a new --workdir).")


class Checkpointer:
  """The workdir's checkpoints: the newest `keep`, and every step of `preserve` (a stable run's
  branch points, lm/branching.py) however old."""

  def __init__(self, workdir: str, keep: int, preserve=(), read_only: bool = False):
    self.workdir = workdir
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.keep, self.preserve, self.read_only = keep, tuple(int(s) for s in preserve), read_only
    self._open()

  def _open(self):
    if self.read_only:  # another run's checkpoints (a branch reading its stable run): never written or pruned
      options = ocp.CheckpointManagerOptions(read_only=True, create=False)
    elif self.preserve:
      policy = ocp.checkpoint_managers
      options = ocp.CheckpointManagerOptions(create=True, preservation_policy=policy.AnyPreservationPolicy(
          [policy.LatestN(self.keep), policy.CustomSteps(list(self.preserve))]))
    else:
      options = ocp.CheckpointManagerOptions(max_to_keep=self.keep, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_state: dict, meta: dict, wait: bool = False) -> None:
    """Save (asynchronously unless `wait`) with the checksums in meta; a step already saved is left as it is."""
    self.manager.wait_until_finished()
    if step in self.manager.all_steps():
      return
    meta = {**meta, "checksums": {"state": checksums(state), "data": data_checksum(data_state)}}
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_state),
        meta=ocp.args.JsonSave(meta)), force=True)
    if wait:
      self.manager.wait_until_finished()

  def restore_latest(self, abstract_state) -> tuple[int, Any, dict, dict] | None:
    """(step, state, data_state, meta) of the newest intact checkpoint, or None when there is
    none at all; damaged newer ones are set aside. Raises WorkdirError (see the module docstring)."""
    damaged: list[tuple[int, str]] = []
    for step in sorted(self.manager.all_steps(), reverse=True):
      restored, problem = self.restore(step, abstract_state)
      if problem:
        damaged.append((step, problem))
        continue
      self._set_aside(damaged, step)
      return step, restored["state"], restored["data"], restored["meta"]
    if damaged:
      listed = "; ".join(f"step {s}: {why}" for s, why in damaged)
      raise WorkdirError(
          f"none of the {len(damaged)} checkpoint(s) in {self.directory} can be used ({listed}). Nothing was moved "
          "or deleted, and the run does not start over from step 0 on its own. To start over on purpose, move "
          f"{self.directory} away (or delete it) and rerun, or use a new --workdir.")
    return None

  def restore(self, step: int, abstract_state) -> tuple[dict | None, str | None]:
    """({'state', 'data', 'meta'}, None) of the checkpoint at `step`, verified, or (None, why it
    is damaged). Another model's arrays, or no permission to read: WorkdirError."""
    step_dir = os.path.join(self.directory, str(step))
    what = shape_mismatch(step_dir, abstract_state)
    if what:
      _refuse_mismatch(self.workdir, step, what)
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state),
          data=ocp.args.JsonRestore(),
          meta=ocp.args.JsonRestore()))
    except Exception as e:  # noqa: BLE001 - any other failure to read means "damaged"
      if _permission_denied(e):
        _refuse_permissions(step_dir, e)
      return None, f"unreadable ({type(e).__name__}: {str(e)[:200]})"
    problem = verify(restored["state"], restored["data"], restored["meta"])
    return (None, problem) if problem else (restored, None)

  def _set_aside(self, damaged: list[tuple[int, str]], fallback: int) -> None:
    """Moves each damaged checkpoint to checkpoints/unreadable-<step> (-2, -3, ... if taken)."""
    if not damaged:
      return
    for step, why in damaged:
      name = f"unreadable-{step}"
      n = 1
      while os.path.exists(os.path.join(self.directory, name)):
        n += 1
        name = f"unreadable-{step}-{n}"
      msg = f"checkpoint at step {step} is {why}; falling back to step {fallback}. It is kept as {self.directory}/{name}."
      logging.warning(msg)
      print(f"WARNING: {msg}", flush=True)
      if jax.process_index() == 0:
        os.replace(os.path.join(self.directory, str(step)), os.path.join(self.directory, name))
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("lm: damaged checkpoints set aside")
    self.manager.close()
    self._open()

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def step_directories(path: str) -> list[str]:
  """A workdir, its checkpoints/ directory, or one step's directory -> step directories, newest first."""
  path = os.path.abspath(os.path.expanduser(path))
  for candidate in (os.path.join(path, "checkpoints"), path):
    if os.path.isdir(candidate):
      steps = sorted((int(d) for d in os.listdir(candidate) if d.isdigit()), reverse=True)
      if steps:
        return [os.path.join(candidate, str(s)) for s in steps]
  if os.path.isdir(os.path.join(path, "state")):
    return [path]
  raise FileNotFoundError(
      f"No checkpoint under {path}: expected a workdir with checkpoints/<step>/, or a step directory. "
      f"Train one first with `python -m lm.main --config=... --workdir={path}`.")


def latest_step_directory(path: str) -> str:
  return step_directories(path)[0]


def restore_step(workdir: str, step: int, abstract_state) -> tuple[Any, dict, dict]:
  """(state, data_state, meta) of another run's checkpoint at `step`, verified, read only
  (a cooldown branch's start, lm/branching.py); a damaged one is refused, never set aside."""
  reader = Checkpointer(workdir, keep=1, read_only=True)
  try:
    restored, problem = reader.restore(step, abstract_state)
  finally:
    reader.close()
  if problem:
    raise WorkdirError(f"the checkpoint at step {step} of {workdir} is {problem}; rerun that run from before "
                       f"step {step} (or delete its checkpoint) to write it again.")
  return restored["state"], restored["data"], restored["meta"]


def load_params(path: str, abstract_params) -> tuple[Any, int]:
  """Only the parameters of a run's newest intact checkpoint (for fine-tuning, evaluation and
  generation), placed by the shardings in `abstract_params`; the optimizer state is not read.
  A damaged checkpoint is skipped with a warning (on stderr) and left where it is: a reader
  does not move a running training's files."""
  target = {"params": abstract_params}
  problems = []
  for step_dir in step_directories(path):
    try:
      restored = ocp.PyTreeCheckpointer().restore(
          os.path.join(step_dir, "state"),
          args=ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                      partial_restore=True))
      problem = verify(restored["params"], None, _read_meta_dir(step_dir), only="params/")
    except Exception as e:  # noqa: BLE001 - unreadable: try the previous one
      if _permission_denied(e):
        _refuse_permissions(step_dir, e)
      problem = f"unreadable ({type(e).__name__}: {str(e)[:200]})"
    if problem is None:
      if problems:
        print(f"WARNING: using the checkpoint {step_dir}; newer ones are damaged ({'; '.join(problems)}).",
              file=sys.stderr, flush=True)
      return restored["params"], int(os.path.basename(step_dir))
    problems.append(f"{step_dir}: {problem}")
  raise WorkdirError(f"no usable checkpoint under {path}: {'; '.join(problems)}.")


def _read_meta_dir(step_dir: str) -> dict:
  meta_dir = os.path.join(step_dir, "meta")
  for name in ("metadata", "meta"):
    if os.path.isfile(os.path.join(meta_dir, name)):
      with open(os.path.join(meta_dir, name)) as f:
        return json.load(f)
  return {}


def read_meta(path: str) -> dict:
  return _read_meta_dir(latest_step_directory(path))


def write_config(cfg: ConfigDict, workdir: str, **derived) -> None:
  """WORKDIR/config.json, written whole: the resolved config, and the sizes derived from it under "derived"."""
  resolved = json.loads(cfg.to_json_best_effort())
  resolved["derived"] = derived
  workdir_lib.atomic_write(os.path.join(workdir, "config.json"), json.dumps(resolved, indent=2))


def load_config(workdir: str) -> ConfigDict:
  """The resolved config a run saved in WORKDIR/config.json, over today's defaults (fields
  added since the run was made take their defaults: lm/schema.py:resolve)."""
  path = os.path.join(os.path.expanduser(workdir), "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: {workdir} is not an lm workdir (train into it with "
                            f"`python -m lm.main --config=configs/default.py --workdir={workdir}`).")
  with open(path) as f:
    return schema.resolve(json.load(f))
