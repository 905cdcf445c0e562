"""Hugging Face config.json <-> lm's `model.` fields, for the two supported architectures.

    LlamaForCausalLM (model_type 'llama'): RoPE (rope_theta; rope types default, 'linear',
        'llama3'), RMSNorm (rms_norm_eps), SwiGLU (hidden_act 'silu'), no biases, grouped-
        query attention (num_key_value_heads), head_dim, tied or untied embeddings.
    GPT2LMHeadModel (model_type 'gpt2'): learned positions (n_positions), LayerNorm with bias
        (layer_norm_epsilon), GELU tanh approximation ('gelu_new'), biases everywhere,
        multi-head attention, tied head (untied if tie_word_embeddings is false).

Anything else that would change the function the checkpoint computes (another model type,
a bias Llama lacks, a rope type lm does not implement, a sliding window, GPT-2's per-layer
attention scaling) raises HFError naming the field and what is supported. Fields that only
matter for training in PyTorch (dropouts, initializer_range, use_cache) are ignored.

Both transformers 4 (rope_theta and rope_scaling at the top level) and 5 (rope_parameters)
layouts are read; export writes both, so either version loads it.
"""

from __future__ import annotations

import json
import os

from lm import schema
from lm.errors import HFError

DEFAULT_SEQ_LEN = 1024  # data.seq_len of an import unless given: min(context, this)
SUPPORTED = ("LlamaForCausalLM (model_type 'llama') and GPT2LMHeadModel (model_type 'gpt2')")
ROPE_TYPES = ("default", "linear", "llama3")
GPT2_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")  # all 0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3)))


def architecture(hf: dict, where: str = "config.json") -> str:
  """'llama' or 'gpt2', from model_type (or architectures), else HFError."""
  model_type = hf.get("model_type")
  archs = hf.get("architectures") or []
  if model_type == "llama" or (model_type is None and "LlamaForCausalLM" in archs):
    kind = "llama"
  elif model_type == "gpt2" or (model_type is None and "GPT2LMHeadModel" in archs):
    kind = "gpt2"
  else:
    raise HFError(f"{where}: model_type={model_type!r} (architectures {archs}) is not supported; lm imports "
                  f"{SUPPORTED}.")
  other = [a for a in archs if a not in ("LlamaForCausalLM", "GPT2LMHeadModel", "LlamaModel", "GPT2Model")]
  if other:
    raise HFError(f"{where}: architectures={archs} is not a causal LM lm can import; supported: {SUPPORTED}.")
  return kind


def _require(hf: dict, key: str, allowed, default, where: str, why: str):
  value = hf.get(key, default)
  if value not in allowed:
    raise HFError(f"{where}: {key}={value!r} is not supported ({why}); supported: {list(allowed)}.")
  return value


def _field(hf: dict, key: str, where: str, *alternatives):
  for k in (key,) + alternatives:
    if hf.get(k) is not None:
      return hf[k]
  raise HFError(f"{where}: the field {key!r} is missing; it is needed to size the model.")


def rope_fields(hf: dict, where: str) -> dict:
  """rope_theta and scaling from rope_parameters (transformers 5) or rope_theta + rope_scaling (4)."""
  params = dict(hf.get("rope_parameters") or {})
  scaling = dict(hf.get("rope_scaling") or {})
  theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
  spec = {**scaling, **params}
  rope_type = spec.get("rope_type", spec.get("type", "default")) or "default"
  if rope_type not in ROPE_TYPES:
    raise HFError(f"{where}: rope type {rope_type!r} is not supported; lm implements the rope types {ROPE_TYPES}.")
  if float(spec.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)) or 1.0) != 1.0:
    raise HFError(f"{where}: partial_rotary_factor != 1 is not supported (lm rotates every channel of a head).")
  out = dict(rope_theta=float(theta), rope_scaling="none")
  if rope_type == "linear":
    out.update(rope_scaling="linear", rope_scaling_factor=float(spec["factor"]))
  elif rope_type == "llama3":
    try:
      out.update(rope_scaling="llama3", rope_scaling_factor=float(spec["factor"]),
                 rope_low_freq_factor=float(spec["low_freq_factor"]),
                 rope_high_freq_factor=float(spec["high_freq_factor"]),
                 rope_original_max_len=int(spec["original_max_position_embeddings"]))
    except KeyError as e:
      raise HFError(f"{where}: llama3 rope scaling needs {e.args[0]!r} in rope_scaling / rope_parameters.") from None
  return out


def llama_fields(hf: dict, where: str) -> dict:
  _require(hf, "hidden_act", ("silu",), "silu", where, "Llama's MLP is SwiGLU: silu(gate) * up")
  _require(hf, "attention_bias", (False,), False, where, "lm's Llama has no q/k/v/o biases")
  _require(hf, "mlp_bias", (False,), False, where, "lm's Llama has no MLP biases")
  if hf.get("sliding_window") is not None:
    raise HFError(f"{where}: sliding_window={hf['sliding_window']} is not supported (lm attends over the "
                  "whole causal context).")
  d, h = int(_field(hf, "hidden_size", where)), int(_field(hf, "num_attention_heads", where))
  return dict(
      n_layers=int(_field(hf, "num_hidden_layers", where)), d_model=d, n_heads=h,
      n_kv_heads=int(hf.get("num_key_value_heads") or h), head_dim=int(hf.get("head_dim") or d // h),
      d_ff=int(_field(hf, "intermediate_size", where)),
      max_seq_len=int(_field(hf, "max_position_embeddings", where)),
      positions="rope", norm="rmsnorm", norm_eps=float(hf.get("rms_norm_eps", 1e-6)), mlp="swiglu",
      use_bias=False, tie_embeddings=bool(hf.get("tie_word_embeddings", False)), **rope_fields(hf, where))


def gpt2_fields(hf: dict, where: str) -> dict:
  _require(hf, "activation_function", GPT2_ACTIVATIONS, "gelu_new", where,
           "lm's GELU is the tanh approximation; the exact-erf 'gelu' differs")
  _require(hf, "scale_attn_weights", (True,), True, where, "lm divides attention logits by sqrt(head_dim)")
  _require(hf, "scale_attn_by_inverse_layer_idx", (False,), False, where,
           "lm does not divide layer i's attention logits by i + 1")
  _require(hf, "add_cross_attention", (False,), False, where, "lm is decoder-only")
  # reorder_and_upcast_attn only changes how PyTorch rounds in half precision; lm computes
  # attention logits and softmax in float32 anyway, so it is accepted.
  d, h = int(_field(hf, "n_embd", where, "hidden_size")), int(_field(hf, "n_head", where, "num_attention_heads"))
  if d % h:
    raise HFError(f"{where}: n_head={h} does not divide n_embd={d}.")
  return dict(
      n_layers=int(_field(hf, "n_layer", where, "num_hidden_layers")), d_model=d, n_heads=h, n_kv_heads=h,
      head_dim=d // h, d_ff=int(hf.get("n_inner") or 4 * d),
      max_seq_len=int(_field(hf, "n_positions", where, "n_ctx", "max_position_embeddings")),
      positions="learned", norm="layernorm", norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)), mlp="gelu",
      use_bias=True, tie_embeddings=bool(hf.get("tie_word_embeddings", True)), rope_scaling="none")


def model_fields(hf: dict, where: str = "config.json") -> tuple[str, dict]:
  """(architecture, lm `model.` fields) of a Hugging Face config.json dict."""
  kind = architecture(hf, where)
  return kind, (llama_fields if kind == "llama" else gpt2_fields)(hf, where)


def read_config(path: str) -> dict:
  file = os.path.join(os.path.expanduser(path), "config.json")
  if not os.path.isfile(file):
    raise FileNotFoundError(f"{file} not found: a Hugging Face checkpoint directory holds config.json and "
                            "*.safetensors (save one with model.save_pretrained(DIR)).")
  with open(file) as f:
    return json.load(f)


def import_config(hf_dir: str, seq_len: int | None = None, param_dtype: str = "float32"):
  """(lm ConfigDict, architecture) for the checkpoint in hf_dir, from its config.json alone:
  the default config (lm/schema.py) with the model fields, data.tokenizer='hf' reading hf_dir's tokenizer.json,
  data.vocab_size = config.json's vocab_size (the embedding's rows), data.seq_len =
  min(context, 1024) unless given."""
  hf = read_config(hf_dir)
  where = os.path.join(hf_dir, "config.json")
  kind, fields = model_fields(hf, where)
  if hf.get("vocab_size") is None:
    raise HFError(f"{where}: the field 'vocab_size' is missing; it is needed to size the embedding.")
  cfg = schema.defaults()
  cfg.experiment = f"hf_{kind}"
  cfg.model.update(fields)
  cfg.model.param_dtype = param_dtype
  d = cfg.data
  d.tokenizer, d.hf_tokenizer, d.vocab_size = "hf", os.path.abspath(os.path.expanduser(hf_dir)), int(hf["vocab_size"])
  d.seq_len = int(seq_len or min(fields["max_seq_len"], DEFAULT_SEQ_LEN))
  if d.seq_len > fields["max_seq_len"]:
    raise HFError(f"seq_len={d.seq_len} is longer than the checkpoint's context ({fields['max_seq_len']}).")
  return cfg, kind


# ---- export ----

def export_architecture(m) -> str:
  """The supported HF architecture an lm ModelConfig matches exactly, else HFError."""
  head_dim = m.head_dim
  llama = dict(positions="rope", norm="rmsnorm", mlp="swiglu", use_bias=False)
  gpt2 = dict(positions="learned", norm="layernorm", mlp="gelu", use_bias=True)
  if all(getattr(m, k) == v for k, v in llama.items()):
    return "llama"
  if all(getattr(m, k) == v for k, v in gpt2.items()):
    if m.n_kv_heads != m.n_heads or head_dim * m.n_heads != m.d_model:
      raise HFError(f"model.n_kv_heads={m.n_kv_heads}, head_dim={head_dim}: GPT-2 has multi-head attention with "
                    f"head_dim * n_heads = d_model; this model cannot be written as GPT2LMHeadModel.")
    return "gpt2"
  have = {k: getattr(m, k) for k in ("positions", "norm", "mlp", "use_bias", "tie_embeddings")}
  raise HFError(f"this model ({have}) has no Hugging Face equivalent lm can write: LlamaForCausalLM needs {llama} "
                f"(each tied or untied), GPT2LMHeadModel needs {gpt2}.")


def hf_config(m, special: dict, dtype: str = "float32") -> dict:
  """config.json for an lm ModelConfig `m`; `special` holds bos/eos/pad token ids (or None)."""
  kind = export_architecture(m)
  head_dim, vocab_size = m.head_dim, m.vocab_size
  ids = {f"{k}_token_id": special.get(k) for k in ("bos", "eos", "pad")}
  if kind == "gpt2":
    return dict(architectures=["GPT2LMHeadModel"], model_type="gpt2", vocab_size=vocab_size, n_embd=m.d_model,
                n_layer=m.n_layers, n_head=m.n_heads, n_inner=m.d_ff, n_positions=m.max_seq_len,
                n_ctx=m.max_seq_len, layer_norm_epsilon=m.norm_eps, activation_function="gelu_new",
                scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False, reorder_and_upcast_attn=False,
                tie_word_embeddings=bool(m.tie_embeddings), resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                initializer_range=m.init_std, torch_dtype=dtype, dtype=dtype, **ids)
  rope_scaling = None
  if m.rope_scaling == "linear":
    rope_scaling = dict(rope_type="linear", factor=m.rope_scaling_factor)
  elif m.rope_scaling == "llama3":
    rope_scaling = dict(rope_type="llama3", factor=m.rope_scaling_factor, low_freq_factor=m.rope_low_freq_factor,
                        high_freq_factor=m.rope_high_freq_factor,
                        original_max_position_embeddings=m.rope_original_max_len)
  rope_parameters = {**(rope_scaling or {"rope_type": "default"}), "rope_theta": m.rope_theta}
  return dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=vocab_size, hidden_size=m.d_model,
              num_hidden_layers=m.n_layers, num_attention_heads=m.n_heads, num_key_value_heads=m.n_kv_heads,
              head_dim=head_dim, intermediate_size=m.d_ff, max_position_embeddings=m.max_seq_len,
              rms_norm_eps=m.norm_eps, hidden_act="silu", attention_bias=False, mlp_bias=False,
              rope_theta=m.rope_theta, rope_scaling=rope_scaling, rope_parameters=rope_parameters,
              tie_word_embeddings=bool(m.tie_embeddings), attention_dropout=0.0, initializer_range=m.init_std,
              torch_dtype=dtype, dtype=dtype, **ids)
