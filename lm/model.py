"""Decoder-only Transformer in flax.linen, sized entirely by config.

Every parameter is declared with logical axis names (embed, heads, mlp, vocab, ...) and
key activations carry logical sharding constraints; lm/sharding.py maps those names onto
mesh axes. Nothing here names a mesh axis.

Shapes in names: B batch, L length, D d_model, F d_ff, V vocab.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn

from lm import parameterization as param_lib
from lm.attention import ATTENTIONS, ROPE_SCALINGS, Attention
from lm.errors import ConfigError
from lm.ops import MATMULS, add_rows, dense, dots_saveable, scale_rows
from lm.parameterization import PARAMETERIZATIONS

# The choices of each option live beside the code that dispatches on them.
POSITIONS = ("learned", "rope")          # Transformer (the learned table) and Attention (rope)
NORMS = ("layernorm", "rmsnorm")         # Norm
MLPS = ("gelu", "swiglu")                # Mlp
DTYPES = ("float32", "bfloat16", "float16")
REMATS = ("none", "full", "dots")        # remat_policy


def _option(default, choices=None):
  """A ModelConfig field; `choices` (a tuple) are checked by validate()."""
  return dataclasses.field(default=default, metadata={"choices": choices} if choices else {})


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The `model.` section of a config, resolved, plus the vocabulary size the tokenizer gives.

  This is the one place the model's fields and their defaults are written down: the config
  schema (lm/schema.py) builds the `model.` section from these fields, so a new option is a
  field here and the code that reads it. Every instance is validated (ConfigError).
  """
  vocab_size: int
  n_layers: int = 4
  d_model: int = 256
  n_heads: int = 4
  n_kv_heads: int = 4                  # divides n_heads; 1 = multi-query, n_heads = multi-head
  head_dim: int | None = None          # None -> d_model // n_heads
  d_ff: int = 1024
  max_seq_len: int = 256               # size of the learned position table / RoPE limit
  positions: str = _option("rope", POSITIONS)
  rope_theta: float = 10000.0
  rope_scaling: str = _option("none", ROPE_SCALINGS)  # as Hugging Face's rope types (attention.rope_inv_freq)
  rope_scaling_factor: float = 1.0     # linear, llama3: rates divided by this (context stretched by it)
  rope_low_freq_factor: float = 1.0    # llama3: wavelengths > original_max_len / this are fully scaled
  rope_high_freq_factor: float = 4.0   # llama3: wavelengths < original_max_len / this are unchanged
  rope_original_max_len: int = 8192    # llama3: the context the model was first trained at
  norm: str = _option("rmsnorm", NORMS)
  norm_eps: float = 1e-6
  mlp: str = _option("swiglu", MLPS)
  use_bias: bool = False
  tie_embeddings: bool = True
  init_std: float = 0.02
  dtype: Any = _option("float32", DTYPES)        # compute dtype (a name or a numpy / jax dtype)
  param_dtype: Any = _option("float32", DTYPES)
  attention: str = _option("xla", ATTENTIONS)    # 'cudnn': GPU only
  matmul: str = _option("auto", MATMULS)         # weight matmuls' VJP (lm/ops.py); auto: blas on CPU
  remat: str = _option("none", REMATS)
  scan_layers: bool = False
  # Hyperparameter transfer (lm/parameterization.py holds the rules and their sources).
  parameterization: str = _option("sp", PARAMETERIZATIONS)  # 'mup': µP in width, + depth with base_depth
  base_width: int | None = None        # mup: the d_model the hyperparameters were tuned at (required)
  base_head_dim: int | None = None     # mup: head_dim at the base width; None -> head_dim (heads grow instead)
  base_depth: int | None = None        # mup: n_layers tuned at; None -> no depth scaling
  depth_alpha: float = 1.0             # mup + base_depth: residual branches x (base_depth/n_layers)^alpha

  def __post_init__(self):
    validate(dataclasses.asdict(self))
    set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
    if self.head_dim is None:
      set_("head_dim", self.d_model // self.n_heads)
    set_("dtype", jnp.dtype(self.dtype))
    set_("param_dtype", jnp.dtype(self.param_dtype))

  @classmethod
  def from_config(cls, model_cfg, vocab_size: int) -> "ModelConfig":
    """From a `model.` ConfigDict (or dict); fields it lacks take the defaults above."""
    kw = {k: v for k, v in dict(model_cfg).items() if k in FIELDS}
    return cls(vocab_size=int(vocab_size), **kw)


FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig) if f.name != "vocab_size")
POSITIVE_FIELDS = ("n_layers", "d_model", "n_heads", "n_kv_heads", "d_ff", "max_seq_len")


def defaults() -> dict:
  """The `model.` fields and their defaults (dtypes as names), for the config schema."""
  return {f.name: f.default for f in dataclasses.fields(ModelConfig) if f.name != "vocab_size"}


def validate(m) -> None:
  """Checks of the `model.` fields (a ConfigDict or dict), each naming the field and the fix."""
  m = {**defaults(), **{k: v for k, v in dict(m).items() if k in FIELDS}}
  for field in POSITIVE_FIELDS:
    if int(m[field]) < 1:
      raise ConfigError(f"model.{field}={m[field]} must be a positive integer.")
  if m["head_dim"] is None and m["d_model"] % m["n_heads"]:
    raise ConfigError(
        f"model.n_heads={m['n_heads']} does not divide model.d_model={m['d_model']}; choose n_heads "
        f"among the divisors of d_model (e.g. {_divisors_near(m['d_model'], m['n_heads'])}) or set model.head_dim.")
  if m["n_heads"] % m["n_kv_heads"]:
    raise ConfigError(
        f"model.n_kv_heads={m['n_kv_heads']} does not divide model.n_heads={m['n_heads']}; grouped-query "
        f"attention needs n_heads to be a multiple of n_kv_heads (1 = multi-query, n_heads = multi-head).")
  for f in dataclasses.fields(ModelConfig):
    choices = f.metadata.get("choices")
    value = m.get(f.name)
    if choices and f.name in ("dtype", "param_dtype"):
      value = jnp.dtype(value).name
    if choices and value not in choices:
      raise ConfigError(f"model.{f.name}={value!r} is not one of {choices}; set --config.model.{f.name} to one of them.")
  problem = param_lib.check(m)
  if problem:
    raise ConfigError(problem)
  head_dim = m["head_dim"] or m["d_model"] // m["n_heads"]
  if m["positions"] == "rope" and head_dim % 2:
    raise ConfigError(f"RoPE rotates pairs of channels, so the head dim ({head_dim}) must be even; "
                      "change model.d_model / model.n_heads or set model.head_dim.")


def _divisors_near(n, k):
  divs = [d for d in range(1, n + 1) if n % d == 0]
  return sorted(divs, key=lambda d: abs(d - k))[:3]


class Norm(nn.Module):
  """LayerNorm or RMSNorm over the last axis, computed in float32."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BLD):
    cfg = self.cfg
    d = x_BLD.shape[-1]
    x = x_BLD.astype(jnp.float32)
    if cfg.norm == "layernorm":
      x = x - jnp.mean(x, axis=-1, keepdims=True)
    x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + cfg.norm_eps)
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                       (d,), cfg.param_dtype)
    x = scale_rows(x, scale.astype(jnp.float32), cfg.matmul)  # x * scale (its gradient a product on the CPU)
    if cfg.norm == "layernorm" and cfg.use_bias:
      bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)), (d,), cfg.param_dtype)
      x = add_rows(x, bias.astype(jnp.float32), cfg.matmul)
    return x.astype(cfg.dtype)


class Mlp(nn.Module):
  """GELU (tanh approximation, as GPT-2) or gated SiLU (SwiGLU, as Llama)."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BLD):
    cfg = self.cfg
    d, f = cfg.d_model, cfg.d_ff
    std, out_std = param_lib.init_std(cfg), param_lib.init_std(cfg, residual_output=True)

    def weight(name, shape, axes, s):
      return self.param(name, nn.with_logical_partitioning(nn.initializers.normal(s), axes),
                        shape, cfg.param_dtype).astype(cfg.dtype)

    def add_bias(y, name, shape, axes):  # y + the bias (ops.add_rows: its gradient a product on the CPU)
      if not cfg.use_bias:
        return y
      b = self.param(name, nn.with_logical_partitioning(nn.initializers.zeros, axes), shape, cfg.param_dtype)
      return add_rows(y, b.astype(cfg.dtype), cfg.matmul)

    if cfg.mlp == "swiglu":
      # gate and up projections as one (D, 2, F) weight: one matmul instead of two (the
      # 4x512 benchmark MLP: 567 ms fwd+bwd against 834 ms for two separate weights).
      # The pair axis is never sharded, so each tensor shard keeps its gates and ups.
      wi_D2F = weight("wi", (d, 2, f), ("embed", None, "mlp"), std)
      gate_up_BL2F = dense("BLD,DCF->BLCF", x_BLD, wi_D2F, matmul=cfg.matmul)
      gate_up_BL2F = add_bias(gate_up_BL2F, "wi_bias", (2, f), (None, "mlp"))
      h_BLF = nn.silu(gate_up_BL2F[:, :, 0]) * gate_up_BL2F[:, :, 1]
    else:
      h_BLF = dense("BLD,DF->BLF", x_BLD, weight("wi", (d, f), ("embed", "mlp"), std), matmul=cfg.matmul)
      h_BLF = nn.gelu(add_bias(h_BLF, "wi_bias", (f,), ("mlp",)), approximate=True)
    h_BLF = nn.with_logical_constraint(h_BLF, ("batch", "length", "mlp"))
    y_BLD = dense("BLF,FD->BLD", h_BLF, weight("wo", (f, d), ("mlp", "embed"), out_std), matmul=cfg.matmul)
    return add_bias(y_BLD, "wo_bias", (d,), ("embed",))


class Block(nn.Module):
  """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""
  cfg: ModelConfig
  decode: bool = False
  fresh_cache: bool = False

  @nn.compact
  def __call__(self, x_BLD, segment_ids_BL, positions_BL):
    branch = _residual_branch(self.cfg)
    attn = Attention(self.cfg, self.decode, self.fresh_cache, name="attn")
    x_BLD = x_BLD + branch(attn(Norm(self.cfg, name="attn_norm")(x_BLD), segment_ids_BL, positions_BL))
    x_BLD = x_BLD + branch(Mlp(self.cfg, name="mlp")(Norm(self.cfg, name="mlp_norm")(x_BLD)))
    x_BLD = nn.with_logical_constraint(x_BLD, ("batch", "length", "embed"))
    return x_BLD, None  # (carry, per-layer output) so the block can run under nn.scan


def _residual_branch(cfg: ModelConfig):
  """A branch output's residual multiplier (depth scaling, lm/parameterization.py); none at 1."""
  multiplier = param_lib.residual_multiplier(cfg)
  if multiplier == 1.0:
    return lambda y: y
  return lambda y: y * jnp.asarray(multiplier, y.dtype)


def _output_multiplier(cfg: ModelConfig, x_BLD):
  """The final hidden state times µP's 1/m output multiplier (identity at 1): scaling x, not
  the [B, L, V] logits, is the same product, V/D times cheaper."""
  multiplier = param_lib.output_multiplier(cfg)
  return x_BLD if multiplier == 1.0 else x_BLD * jnp.asarray(multiplier, x_BLD.dtype)


def remat_policy(cfg: ModelConfig):
  """The jax.checkpoint policy of model.remat ('full' or 'dots')."""
  if cfg.remat == "full":
    return None  # save nothing: recompute the whole block in the backward pass
  return dots_saveable(cfg.matmul)  # keep the weight matmuls' outputs, recompute the rest


def _block_class(cfg: ModelConfig, decode: bool):
  block = Block
  if cfg.remat != "none" and not decode:  # nothing to recompute without a backward pass
    # prevent_cse is only needed outside scan (scan already stops CSE across iterations).
    block = nn.remat(block, policy=remat_policy(cfg), prevent_cse=not cfg.scan_layers)
  return block


class Transformer(nn.Module):
  """tokens [B, L] (+ segment ids, positions) -> float32 logits [B, L, V].

  decode=True: every attention layer reads and extends a KV cache in the `cache`
  collection (apply with mutable=["cache"]); lm/decode.py drives it. last_only=True
  returns only the last position's logits [B, 1, V] (all a left-padded prefill needs).
  fresh_cache=True (with decode): the call starts the cache again: its tokens attend only to each
  other and fill slots 0 ... L - 1 (lm/decode.py's prefill; lm/kv_cache.py). Only that call:
  decoding steps use decode=True alone.
  """
  cfg: ModelConfig
  decode: bool = False
  fresh_cache: bool = False

  @nn.compact
  def __call__(self, tokens_BL, segment_ids_BL=None, positions_BL=None, last_only=False):
    cfg = self.cfg
    if segment_ids_BL is None:
      segment_ids_BL = jnp.ones_like(tokens_BL)
    if positions_BL is None:
      positions_BL = jnp.broadcast_to(jnp.arange(tokens_BL.shape[1]), tokens_BL.shape)

    embedding_VD = self.param(
        "embedding", nn.with_logical_partitioning(nn.initializers.normal(cfg.init_std), ("vocab", "embed")),
        (cfg.vocab_size, cfg.d_model), cfg.param_dtype)
    x_BLD = jnp.take(embedding_VD, tokens_BL, axis=0).astype(cfg.dtype)
    if cfg.positions == "learned":
      pos_table_LD = self.param(
          "pos_embedding", nn.with_logical_partitioning(nn.initializers.normal(cfg.init_std), ("length", "embed")),
          (cfg.max_seq_len, cfg.d_model), cfg.param_dtype)
      x_BLD = x_BLD + jnp.take(pos_table_LD, positions_BL, axis=0).astype(cfg.dtype)
    x_BLD = nn.with_logical_constraint(x_BLD, ("batch", "length", "embed"))

    block = _block_class(cfg, self.decode)
    if cfg.scan_layers:
      # One block's parameters stacked along a leading `layers` axis; compile time stays
      # flat in depth.
      x_BLD, _ = nn.scan(block, variable_axes={"params": 0, "cache": 0}, split_rngs={"params": True},
                         in_axes=(nn.broadcast, nn.broadcast), length=cfg.n_layers,
                         metadata_params={nn.PARTITION_NAME: "layers"})(cfg, self.decode, self.fresh_cache,
                                                                        name="layers")(
                             x_BLD, segment_ids_BL, positions_BL)
    else:
      for i in range(cfg.n_layers):
        x_BLD, _ = block(cfg, self.decode, self.fresh_cache, name=f"layer_{i}")(x_BLD, segment_ids_BL, positions_BL)

    if last_only:
      x_BLD = x_BLD[:, -1:]  # a 128-token prefill at V 32k, d 768: saves 127 * 2 * 768 * 32k = 6.2 GFLOP
    x_BLD = _output_multiplier(cfg, Norm(cfg, name="final_norm")(x_BLD))
    if cfg.tie_embeddings and self.decode:
      # Contract the table's own D axis: with embedding_VD.T, XLA:CPU copied the whole
      # transposed table on every decode step (V x D x 4 bytes read and written per token).
      logits_BLV = dense("BLD,VD->BLV", x_BLD, embedding_VD.astype(cfg.dtype), jnp.float32, matmul=cfg.matmul)
      return nn.with_logical_constraint(logits_BLV, ("batch", "length", "vocab"))
    if cfg.tie_embeddings:
      head_DV = embedding_VD.T
    else:
      head_DV = self.param("head", nn.with_logical_partitioning(nn.initializers.normal(cfg.init_std), ("embed", "vocab")),
                           (cfg.d_model, cfg.vocab_size), cfg.param_dtype)
    logits_BLV = dense("BLD,DV->BLV", x_BLD, head_DV.astype(cfg.dtype), jnp.float32, matmul=cfg.matmul)
    return nn.with_logical_constraint(logits_BLV, ("batch", "length", "vocab"))


def init_params(model: Transformer, rng, batch_shape=(1, 8)) -> dict:
  """Unsharded, unboxed parameters (tests, notebooks). Training uses sharding.sharded_init."""
  from lm.sharding import run_once  # local: sharding imports config, not the model
  tokens = jnp.zeros(batch_shape, jnp.int32)
  return nn.meta.unbox(run_once(lambda r: model.init(r, tokens), rng))["params"]


def stack_layers(params: dict, n_layers: int) -> dict:
  """Parameters of an unrolled model (layer_0 ... layer_{n-1}) -> the scanned layout."""
  params = dict(params)
  layers = [params.pop(f"layer_{i}") for i in range(n_layers)]
  params["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
  return params


def unstack_layers(params: dict, n_layers: int) -> dict:
  """The scanned layout -> one entry per layer (layer_0 ... layer_{n-1})."""
  params = dict(params)
  stacked = params.pop("layers")
  for i in range(n_layers):
    params[f"layer_{i}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
  return params
