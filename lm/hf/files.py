"""The files of a Hugging Face checkpoint directory: config.json and safetensors, sharded or not.

    DIR/config.json
    DIR/model.safetensors                                     one file, or
    DIR/model.safetensors.index.json  {"weight_map": {tensor name: shard file}}
    DIR/model-00001-of-00002.safetensors ...                  shards

Read with `safetensors.numpy` (no torch): bfloat16 tensors come back as ml_dtypes.bfloat16
arrays. Written with the metadata {"format": "pt"} that transformers checks for.
"""

from __future__ import annotations

import json
import os

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from lm.errors import HFError
from lm.hf.architectures import read_config  # noqa: F401 (re-exported)

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"


def is_hf_dir(path: str) -> bool:
  """A directory with a config.json naming a model type and safetensors weights (not an lm workdir)."""
  path = os.path.expanduser(path)
  if not os.path.isfile(os.path.join(path, "config.json")) or os.path.isdir(os.path.join(path, "checkpoints")):
    return False
  try:
    with open(os.path.join(path, "config.json")) as f:
      cfg = json.load(f)
  except (OSError, ValueError):
    return False
  return isinstance(cfg, dict) and ("model_type" in cfg or "architectures" in cfg)


def shard_files(path: str) -> list[str]:
  """The safetensors files of a checkpoint, in the index's order, checked to exist."""
  path = os.path.expanduser(path)
  index = os.path.join(path, INDEX)
  if os.path.isfile(index):
    with open(index) as f:
      weight_map = json.load(f).get("weight_map")
    if not weight_map:
      raise HFError(f"{index} has no weight_map.")
    files = list(dict.fromkeys(weight_map.values()))
    missing = [f for f in files if not os.path.isfile(os.path.join(path, f))]
    if missing:
      raise HFError(f"{index} names shard(s) {missing} that are not in {path}; copy every shard the index lists.")
    return [os.path.join(path, f) for f in files]
  if os.path.isfile(os.path.join(path, SINGLE)):
    return [os.path.join(path, SINGLE)]
  found = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
  if found:
    return [os.path.join(path, f) for f in found]
  other = sorted(f for f in os.listdir(path) if f.endswith((".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack")))
  raise HFError(f"no safetensors weights in {path}" + (f" (found {other}: lm reads only safetensors; re-save with "
                "model.save_pretrained(DIR, safe_serialization=True))" if other else "") + ".")


def read_tensors(path: str) -> dict[str, np.ndarray]:
  """Every tensor of the checkpoint by name (a name in two shards is an error)."""
  tensors: dict[str, np.ndarray] = {}
  for file in shard_files(path):
    try:
      with safe_open(file, framework="numpy") as f:
        for name in f.keys():
          if name in tensors:
            raise HFError(f"tensor {name!r} appears in more than one shard (again in {os.path.basename(file)}).")
          tensors[name] = f.get_tensor(name)
    except HFError:
      raise
    except Exception as e:  # noqa: BLE001 - safetensors raises its own SafetensorError (and OSError, ValueError)
      raise HFError(f"{file} is not a readable safetensors file ({type(e).__name__}: {str(e)[:200]}); copy it again "
                    "from the checkpoint it came with.") from None
  index = os.path.join(os.path.expanduser(path), INDEX)
  if os.path.isfile(index):
    with open(index) as f:
      listed = set(json.load(f)["weight_map"])
    if listed - set(tensors):
      raise HFError(f"{index} lists tensor(s) {sorted(listed - set(tensors))[:5]} that no shard holds.")
  return tensors


def write_tensors(path: str, tensors: dict[str, np.ndarray], max_shard_bytes: int | None = None) -> list[str]:
  """model.safetensors, or shards of at most max_shard_bytes (a bigger tensor gets a shard of its
  own) plus model.safetensors.index.json. Returns the files written."""
  os.makedirs(path, exist_ok=True)
  names = list(tensors)
  shards, size = [[]], 0
  for name in names:
    nbytes = tensors[name].nbytes
    if max_shard_bytes and shards[-1] and size + nbytes > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(name)
    size += nbytes
  contiguous = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
  if len(shards) == 1:
    save_file(contiguous, os.path.join(path, SINGLE), metadata={"format": "pt"})
    return [SINGLE]
  files, weight_map = [], {}
  for i, shard in enumerate(shards):
    file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    save_file({k: contiguous[k] for k in shard}, os.path.join(path, file), metadata={"format": "pt"})
    files.append(file)
    weight_map.update({k: file for k in shard})
  total = int(sum(v.nbytes for v in tensors.values()))
  with open(os.path.join(path, INDEX), "w") as f:
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
  return files + [INDEX]
