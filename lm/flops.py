"""Parameter and FLOP accounting (design.md section 5).

Counts are closed-form functions of a ModelConfig, checked in tests against the real
parameter pytree and against XLA's cost analysis of the compiled step.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ParamCounts:
  total: int
  embedding: int      # token embedding + learned position table
  nonembedding: int   # total - embedding (an untied output head counts here)


def layer_params(cfg) -> int:
  """One Transformer block: attention, MLP, two norms."""
  d, h, g, k, f = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff
  attn = d * h * k + 2 * d * g * k + h * k * d          # q, k, v, o
  mlp = (3 if cfg.mlp == "swiglu" else 2) * d * f       # (gate, up,) down
  if cfg.use_bias:
    attn += h * k + 2 * g * k + d
    mlp += (2 * f if cfg.mlp == "swiglu" else f) + d
  return attn + mlp + 2 * norm_params(cfg)


def norm_params(cfg) -> int:
  return cfg.d_model * (2 if cfg.norm == "layernorm" and cfg.use_bias else 1)


def param_counts(cfg) -> ParamCounts:
  embedding = cfg.vocab_size * cfg.d_model
  if cfg.positions == "learned":
    embedding += cfg.max_seq_len * cfg.d_model
  head = 0 if cfg.tie_embeddings else cfg.d_model * cfg.vocab_size
  nonembedding = cfg.n_layers * layer_params(cfg) + norm_params(cfg) + head
  return ParamCounts(total=embedding + nonembedding, embedding=embedding, nonembedding=nonembedding)
