"""Validation and derived quantities of a config.

`validate(cfg)` runs before anything is compiled or written, and every error names the
field and the fix. Later stages (data, optimizer) add their own checks here.
"""

from __future__ import annotations

import math

from ml_collections import ConfigDict

POSITIONS = ("learned", "rope")
ROPE_SCALINGS = ("none", "linear", "llama3")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "swiglu")
ATTENTIONS = ("reference", "xla", "cudnn")
REMATS = ("none", "full", "dots")
DTYPES = ("float32", "bfloat16", "float16")
MESH_AXES = ("data", "fsdp", "tensor")


class ConfigError(ValueError):
  """A config that cannot run. The message names the field and the fix."""


def _choice(value, allowed, field):
  if value not in allowed:
    raise ConfigError(f"{field}={value!r} is not one of {allowed}; set --config.{field} to one of them.")


def head_dim(model_cfg) -> int:
  return model_cfg.head_dim or model_cfg.d_model // model_cfg.n_heads


def validate_model(m: ConfigDict) -> None:
  for field in ("n_layers", "d_model", "n_heads", "n_kv_heads", "d_ff", "max_seq_len"):
    if int(m[field]) < 1:
      raise ConfigError(f"model.{field}={m[field]} must be a positive integer.")
  if m.head_dim is None and m.d_model % m.n_heads:
    raise ConfigError(
        f"model.n_heads={m.n_heads} does not divide model.d_model={m.d_model}; choose n_heads "
        f"among the divisors of d_model (e.g. {_divisors_near(m.d_model, m.n_heads)}) or set model.head_dim.")
  if m.n_heads % m.n_kv_heads:
    raise ConfigError(
        f"model.n_kv_heads={m.n_kv_heads} does not divide model.n_heads={m.n_heads}; grouped-query "
        f"attention needs n_heads to be a multiple of n_kv_heads (1 = multi-query, n_heads = multi-head).")
  _choice(m.positions, POSITIONS, "model.positions")
  _choice(m.norm, NORMS, "model.norm")
  _choice(m.mlp, MLPS, "model.mlp")
  _choice(m.attention, ATTENTIONS, "model.attention")
  from lm.ops import MATMULS  # local: lm.ops imports jax; lm.config stays jax-free (lm.main, configs/ladder.py)
  _choice(m.get("matmul", "auto"), MATMULS, "model.matmul")
  _choice(m.remat, REMATS, "model.remat")
  _choice(m.dtype, DTYPES, "model.dtype")
  _choice(m.param_dtype, DTYPES, "model.param_dtype")
  _choice(m.get("rope_scaling", "none"), ROPE_SCALINGS, "model.rope_scaling")
  if m.positions == "rope" and head_dim(m) % 2:
    raise ConfigError(f"RoPE rotates pairs of channels, so the head dim ({head_dim(m)}) must be even; "
                      "change model.d_model / model.n_heads or set model.head_dim.")


def _divisors_near(n, k):
  divs = [d for d in range(1, n + 1) if n % d == 0]
  return sorted(divs, key=lambda d: abs(d - k))[:3]


def validate_seq_len(m: ConfigDict, seq_len: int) -> None:
  if seq_len > m.max_seq_len:
    what = "the learned position table" if m.positions == "learned" else "model.max_seq_len"
    raise ConfigError(
        f"data.seq_len={seq_len} is longer than {what} (model.max_seq_len={m.max_seq_len}); "
        f"raise model.max_seq_len to at least {seq_len} or shorten data.seq_len.")


def mesh_shape(mesh_cfg: ConfigDict, n_devices: int) -> tuple[int, int, int]:
  """(data, fsdp, tensor) with a -1 entry resolved to the devices the others leave."""
  sizes = [int(mesh_cfg[a]) for a in MESH_AXES]
  spec = ", ".join(f"mesh.{a}={s}" for a, s in zip(MESH_AXES, sizes))
  free = [i for i, s in enumerate(sizes) if s == -1]
  if len(free) > 1:
    raise ConfigError(f"{spec}: at most one mesh axis may be -1 (it takes the remaining devices).")
  if any(s == 0 or s < -1 for s in sizes):
    raise ConfigError(f"{spec}: mesh axis sizes are positive integers or -1.")
  fixed = math.prod(s for s in sizes if s != -1)
  if free:
    if n_devices % fixed:
      raise ConfigError(f"{spec}: the fixed axes use {fixed} devices, which does not divide the "
                        f"{n_devices} devices present; pick sizes whose product divides {n_devices}.")
    sizes[free[0]] = n_devices // fixed
  elif fixed != n_devices:
    raise ConfigError(f"{spec}: the mesh has {fixed} devices but {n_devices} are present; make the "
                      f"product equal {n_devices}, or set one axis to -1 to take the rest.")
  return tuple(sizes)


def validate_mesh(cfg: ConfigDict, n_devices: int) -> tuple[int, int, int]:
  data, fsdp, tensor = shape = mesh_shape(cfg.mesh, n_devices)
  m = cfg.model
  batch_shards = data * fsdp  # the default rule shards `batch` over data and fsdp
  if cfg.train.batch_size % batch_shards:
    raise ConfigError(
        f"train.batch_size={cfg.train.batch_size} does not divide over the {batch_shards} data-parallel "
        f"devices (mesh.data={data} x mesh.fsdp={fsdp}); use a multiple of {batch_shards}.")
  if tensor > 1 and m.n_kv_heads % tensor and cfg.mesh.rules.kv_heads:
    raise ConfigError(
        f"mesh.tensor={tensor} does not divide model.n_kv_heads={m.n_kv_heads}; use a tensor size that "
        f"divides the kv heads, or set --config.mesh.rules.kv_heads='' to replicate them.")
  return shape


def validate(cfg: ConfigDict, n_devices: int | None = None) -> None:
  """Checks that need no data and no compilation. Raises ConfigError naming the fix."""
  validate_model(cfg.model)
  validate_seq_len(cfg.model, cfg.data.seq_len)
  if n_devices is not None:
    validate_mesh(cfg, n_devices)


TOKENIZERS = ("sentencepiece", "bytes", "hf")
SP_MODEL_TYPES = ("bpe", "unigram")
SP_MIN_VOCAB = 261  # 256 byte-fallback pieces + pad, bos, eos, unk + at least one more


def validate_data(d: ConfigDict) -> None:
  """Cheap checks of the `data.` section; the data code checks the dataset itself."""
  for field in ("dataset", "text_key", "train_split", "eval_split"):
    if not isinstance(d[field], str) or not d[field]:
      raise ConfigError(f"data.{field}={d[field]!r} must be a non-empty string.")
  _choice(d.tokenizer, TOKENIZERS, "data.tokenizer")
  if d.tokenizer == "hf" and not d.get("hf_tokenizer"):
    raise ConfigError("data.tokenizer='hf' needs data.hf_tokenizer: a folder holding a Hugging Face "
                      "tokenizer.json (an imported checkpoint's folder, or WORKDIR/tokenizer of `lm.convert`).")
  if d.tokenizer == "sentencepiece":
    _choice(d.sp_model_type, SP_MODEL_TYPES, "data.sp_model_type")
    if int(d.vocab_size) < SP_MIN_VOCAB:
      raise ConfigError(
          f"data.vocab_size={d.vocab_size} is too small for SentencePiece with byte fallback (256 byte "
          f"pieces + 4 specials + the corpus's characters); use at least a few hundred (e.g. 4096), "
          f"or --config.data.tokenizer=bytes (vocabulary 259, data.vocab_size ignored).")
  if int(d.seq_len) < 1:
    raise ConfigError(f"data.seq_len={d.seq_len} must be a positive integer.")
