"""Hugging Face state dicts <-> lm parameters (unrolled layers, numpy), Llama and GPT-2.

Layouts. torch Linear stores [out, in] and computes x @ W.T; GPT-2's Conv1D stores
[in, out] and computes x @ W. lm keeps the heads as their own axis:

    lm                        Llama (Linear)                    GPT-2 (Conv1D)
    embedding [V, D]          model.embed_tokens [V, D]         wte [V, D]
    pos_embedding [P, D]      -                                 wpe [P, D]
    attn/q [D, H, K]          q_proj [H*K, D]: W.T.reshape      c_attn [D, 3D][:, :D].reshape
    attn/k, v [D, G, K]       k_proj, v_proj [G*K, D]           c_attn [:, D:2D], [:, 2D:]
    attn/o [H, K, D]          o_proj [D, H*K]: W.T.reshape      c_proj [D, D].reshape
    mlp/wi [D, 2, F]          gate_proj, up_proj [F, D]         c_fc [D, F] (mlp/wi [D, F])
    mlp/wo [F, D]             down_proj [D, F]                  c_proj [F, D]
    *_norm/scale, bias [D]    input_layernorm, post_attention_  ln_1, ln_2, ln_f (+ bias)
                              layernorm, model.norm
    head [D, V] (untied)      lm_head [V, D]                    lm_head [V, D] (if untied)

Every transform is a transpose or a reshape, so export then import is exact. Reading checks
every tensor: a missing one, an unexpected one, one whose shape disagrees with config.json, or
one not stored as floating point (int8, int4-packed, bool: a quantised checkpoint, which a cast
would turn into nonsense weights) raises HFError naming it. Buffers transformers does not load (rotary inv_freq, GPT-2's causal
mask attn.bias / attn.masked_bias) are skipped; a stored lm_head.weight of a tied model must
equal the embedding.
"""

from __future__ import annotations

import re

import numpy as np

from lm.errors import HFError

_SKIP = re.compile(r"(rotary_emb\.inv_freq|(^|\.)h\.\d+\.attn\.(masked_)?bias)$")
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")  # what the reader casts to the model's dtype


def _float(name: str, t):
  dtype = np.dtype(t.dtype).name
  if dtype not in FLOAT_DTYPES:
    raise HFError(f"tensor {name!r} is stored as {dtype}; lm imports floating-point weights only ({', '.join(FLOAT_DTYPES)}). "
                  "A quantised checkpoint must be dequantised first (load it in float with its own library and "
                  "save_pretrained it); a cast would silently give wrong weights.")
  return np.asarray(t)


class _Reader:
  """Takes tensors by name with shape checks, and reports what is missing or left over."""

  def __init__(self, tensors: dict, dtype):
    self.tensors, self.dtype, self.used, self.missing = tensors, dtype, set(), []

  def __call__(self, name: str, shape: tuple, why: str):
    if name not in self.tensors:
      self.missing.append(name)
      return np.zeros(shape, self.dtype)  # keeps going, so every missing name is reported at once
    self.used.add(name)
    t = self.tensors[name]
    if tuple(t.shape) != tuple(shape):
      raise HFError(f"tensor {name!r} has shape {tuple(t.shape)} in the checkpoint, but config.json implies "
                    f"{tuple(shape)} ({why}).")
    return _float(name, t).astype(self.dtype)

  def finish(self, tied_head: str | None, embedding: np.ndarray | None):
    if tied_head and tied_head in self.tensors:  # some tied checkpoints store the head anyway
      self.used.add(tied_head)
      head = _float(tied_head, self.tensors[tied_head]).astype(self.dtype)
      if head.shape != embedding.shape or not np.array_equal(head, embedding):
        raise HFError(f"config.json ties the embeddings (tie_word_embeddings) but the checkpoint's {tied_head!r} "
                      "differs from the token embedding; set tie_word_embeddings=false in config.json to import "
                      "it as an untied head.")
    if self.missing:
      raise HFError(f"{len(self.missing)} tensor(s) missing from the checkpoint: {self.missing[:6]}"
                    f"{' ...' if len(self.missing) > 6 else ''}.")
    extra = sorted(n for n in self.tensors if n not in self.used and not _SKIP.search(n))
    if extra:
      raise HFError(f"{len(extra)} unexpected tensor(s) in the checkpoint that this architecture does not use: "
                    f"{extra[:6]}{' ...' if len(extra) > 6 else ''}; is config.json (model_type, num_hidden_layers, "
                    "tie_word_embeddings) the one these weights were saved with?")


def llama_to_lm(tensors: dict, m, dtype=np.float32) -> dict:
  """m: the ModelConfig (sizes). Returns lm parameters with layer_0 ... layer_{n-1}."""
  take = _Reader(tensors, dtype)
  d, h, g, k, f, v = m.d_model, m.n_heads, m.n_kv_heads, m.head_dim, m.d_ff, m.vocab_size
  why = f"hidden_size={d}, num_attention_heads={h}, num_key_value_heads={g}, head_dim={k}, intermediate_size={f}"
  params = {"embedding": take("model.embed_tokens.weight", (v, d), f"vocab_size={v}, hidden_size={d}"),
            "final_norm": {"scale": take("model.norm.weight", (d,), f"hidden_size={d}")}}
  for i in range(m.n_layers):
    p = f"model.layers.{i}."
    gate = take(p + "mlp.gate_proj.weight", (f, d), why)
    up = take(p + "mlp.up_proj.weight", (f, d), why)
    params[f"layer_{i}"] = {
        "attn": {"q": take(p + "self_attn.q_proj.weight", (h * k, d), why).T.reshape(d, h, k),
                 "k": take(p + "self_attn.k_proj.weight", (g * k, d), why).T.reshape(d, g, k),
                 "v": take(p + "self_attn.v_proj.weight", (g * k, d), why).T.reshape(d, g, k),
                 "o": take(p + "self_attn.o_proj.weight", (d, h * k), why).T.reshape(h, k, d)},
        "mlp": {"wi": np.stack([gate.T, up.T], axis=1), "wo": take(p + "mlp.down_proj.weight", (d, f), why).T},
        "attn_norm": {"scale": take(p + "input_layernorm.weight", (d,), why)},
        "mlp_norm": {"scale": take(p + "post_attention_layernorm.weight", (d,), why)}}
  if not m.tie_embeddings:
    params["head"] = take("lm_head.weight", (v, d), f"tie_word_embeddings=false, vocab_size={v}").T
  take.finish("lm_head.weight" if m.tie_embeddings else None, params["embedding"])
  return params


def llama_to_hf(params: dict, m, dtype=np.float32) -> dict:
  d, h, g, k = m.d_model, m.n_heads, m.n_kv_heads, m.head_dim
  c = lambda x: np.ascontiguousarray(np.asarray(x).astype(dtype))
  out = {"model.embed_tokens.weight": c(params["embedding"]), "model.norm.weight": c(params["final_norm"]["scale"])}
  for i in range(m.n_layers):
    lp, p = params[f"layer_{i}"], f"model.layers.{i}."
    a, mlp = lp["attn"], lp["mlp"]
    wi = np.asarray(mlp["wi"])
    out.update({
        p + "self_attn.q_proj.weight": c(np.asarray(a["q"]).reshape(d, h * k).T),
        p + "self_attn.k_proj.weight": c(np.asarray(a["k"]).reshape(d, g * k).T),
        p + "self_attn.v_proj.weight": c(np.asarray(a["v"]).reshape(d, g * k).T),
        p + "self_attn.o_proj.weight": c(np.asarray(a["o"]).reshape(h * k, d).T),
        p + "mlp.gate_proj.weight": c(wi[:, 0].T), p + "mlp.up_proj.weight": c(wi[:, 1].T),
        p + "mlp.down_proj.weight": c(np.asarray(mlp["wo"]).T),
        p + "input_layernorm.weight": c(lp["attn_norm"]["scale"]),
        p + "post_attention_layernorm.weight": c(lp["mlp_norm"]["scale"])})
  if not m.tie_embeddings:
    out["lm_head.weight"] = c(np.asarray(params["head"]).T)
  return out


def gpt2_to_lm(tensors: dict, m, dtype=np.float32) -> dict:
  take = _Reader(tensors, dtype)
  pre = "transformer." if "transformer.wte.weight" in tensors else ""  # the original OpenAI files have no prefix
  d, h, k, f, v = m.d_model, m.n_heads, m.head_dim, m.d_ff, m.vocab_size
  why = f"n_embd={d}, n_head={h}, n_inner={f}"
  params = {"embedding": take(pre + "wte.weight", (v, d), f"vocab_size={v}, n_embd={d}"),
            "pos_embedding": take(pre + "wpe.weight", (m.max_seq_len, d), f"n_positions={m.max_seq_len}, n_embd={d}"),
            "final_norm": {"scale": take(pre + "ln_f.weight", (d,), why), "bias": take(pre + "ln_f.bias", (d,), why)}}
  for i in range(m.n_layers):
    p = f"{pre}h.{i}."
    qkv = take(p + "attn.c_attn.weight", (d, 3 * d), why)
    qkv_b = take(p + "attn.c_attn.bias", (3 * d,), why)
    q, kk, vv = np.split(qkv, 3, axis=1)
    qb, kb, vb = np.split(qkv_b, 3)
    params[f"layer_{i}"] = {
        "attn": {"q": q.reshape(d, h, k), "k": kk.reshape(d, h, k), "v": vv.reshape(d, h, k),
                 "o": take(p + "attn.c_proj.weight", (d, d), why).reshape(h, k, d),
                 "q_bias": qb.reshape(h, k), "k_bias": kb.reshape(h, k), "v_bias": vb.reshape(h, k),
                 "o_bias": take(p + "attn.c_proj.bias", (d,), why)},
        "mlp": {"wi": take(p + "mlp.c_fc.weight", (d, f), why), "wi_bias": take(p + "mlp.c_fc.bias", (f,), why),
                "wo": take(p + "mlp.c_proj.weight", (f, d), why), "wo_bias": take(p + "mlp.c_proj.bias", (d,), why)},
        "attn_norm": {"scale": take(p + "ln_1.weight", (d,), why), "bias": take(p + "ln_1.bias", (d,), why)},
        "mlp_norm": {"scale": take(p + "ln_2.weight", (d,), why), "bias": take(p + "ln_2.bias", (d,), why)}}
  if not m.tie_embeddings:
    params["head"] = take("lm_head.weight", (v, d), f"tie_word_embeddings=false, vocab_size={v}").T
  take.finish("lm_head.weight" if m.tie_embeddings else None, params["embedding"])
  return params


def gpt2_to_hf(params: dict, m, dtype=np.float32) -> dict:
  d = m.d_model
  c = lambda x: np.ascontiguousarray(np.asarray(x).astype(dtype))
  out = {"transformer.wte.weight": c(params["embedding"]), "transformer.wpe.weight": c(params["pos_embedding"]),
         "transformer.ln_f.weight": c(params["final_norm"]["scale"]),
         "transformer.ln_f.bias": c(params["final_norm"]["bias"])}
  for i in range(m.n_layers):
    lp, p = params[f"layer_{i}"], f"transformer.h.{i}."
    a, mlp = lp["attn"], lp["mlp"]
    flat = lambda x: np.asarray(x).reshape(d, d)
    out.update({
        p + "attn.c_attn.weight": c(np.concatenate([flat(a["q"]), flat(a["k"]), flat(a["v"])], axis=1)),
        p + "attn.c_attn.bias": c(np.concatenate([np.asarray(a[n]).reshape(d) for n in ("q_bias", "k_bias", "v_bias")])),
        p + "attn.c_proj.weight": c(np.asarray(a["o"]).reshape(d, d)), p + "attn.c_proj.bias": c(a["o_bias"]),
        p + "mlp.c_fc.weight": c(mlp["wi"]), p + "mlp.c_fc.bias": c(mlp["wi_bias"]),
        p + "mlp.c_proj.weight": c(mlp["wo"]), p + "mlp.c_proj.bias": c(mlp["wo_bias"]),
        p + "ln_1.weight": c(lp["attn_norm"]["scale"]), p + "ln_1.bias": c(lp["attn_norm"]["bias"]),
        p + "ln_2.weight": c(lp["mlp_norm"]["scale"]), p + "ln_2.bias": c(lp["mlp_norm"]["bias"])})
  if not m.tie_embeddings:
    out["lm_head.weight"] = c(np.asarray(params["head"]).T)
  return out


TO_LM = {"llama": llama_to_lm, "gpt2": gpt2_to_lm}
TO_HF = {"llama": llama_to_hf, "gpt2": gpt2_to_hf}
