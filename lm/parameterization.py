"""How init scales, learning rates and forward multipliers change with width and depth
(`model.parameterization`): the one table of the rules, with their sources.

'sp' (standard): every tensor is initialised with model.init_std (the residual output
projections with init_std / sqrt(2 n_layers), GPT-2), one learning rate for all, attention
logits scaled by 1/sqrt(head_dim). The optimal learning rate then falls as the model widens.

'mup' (the Maximal Update Parameterization, Yang et al. 2022, "Tensor Programs V", Table 3
and its Adam column; the optimizer rows as in Dey et al. 2025's CompleteP reference code,
github.com/EleutherAI/nanoGPT-mup, branch completep). With width ratio m = d_model /
model.base_width and, when model.base_depth is set, depth ratio l = n_layers / base_depth
and exponent a = model.depth_alpha (else l = 1, a = 0):

  | kind         | tensors                    | init std        | Adam LR         | weight decay |
  |--------------|----------------------------|-----------------|-----------------|--------------|
  | embedding    | embedding, pos_embedding   | s               | lr              | wd           |
  | hidden       | q k v o wi wo (in blocks)  | s / sqrt(m)     | lr l^(a-1) / m  | wd m         |
  | output       | head (untied)              | s               | lr              | wd           |
  | block_vector | norm scales, biases in blocks | 1, 0         | lr l^(a-1)      | (none)       |
  | vector       | the final norm             | 1, 0            | lr              | (none)       |

  forward:  logits x 1/m (the output multiplier; a tied table is the embedding and the head,
            whose rows agree: init s, LR lr), attention logits x sqrt(K0)/K for head dim K
            (1/K as K grows, TP5 sec. 4; K0 = model.base_head_dim, so the base model keeps
            1/sqrt(K)), each residual branch x l^-a (x + l^-a f(x)).
  Adam eps: eps / (m l^a) for every tensor: under µP every gradient scales like 1/m (the
            backward signal enters through the 1/m output multiplier) and a residual branch's
            like l^-a, and Adam is scale-free only while eps stays below the gradients
            (Everett et al. 2024, "Scaling Exponents Across Parameterizations and Optimizers",
            sec. 4.3; CompleteP's code scales it so).
  decay:    optax's (and torch's) AdamW decays by lr_tensor * wd per step; x m for hidden
            matrices keeps lr * wd, the decay per step, the same at every width (CompleteP's
            code; the "independent" decay of Wortsman et al. 2023, "Small-scale proxies for
            large-scale Transformer training instabilities", sec. 3.2.3).
  init:     the output projections o and wo start at s / sqrt(2 L0 m), L0 = base_depth when
            depth scaling is on (the residual multiplier does the rest), else n_layers.

Depth: a = 1 is CompleteP (Dey et al. 2025, "Don't be lazy: CompleteP enables compute-
efficient deep transformers"), a = 0.5 depth-µP (Yang et al. 2023, "Tensor Programs VI";
Bordelon et al. 2023). Muon (optim.name='muon') orthogonalises each hidden matrix's update and
scales it by sqrt(max(1, fan_out / fan_in)) (Jordan 2024), which gives the update a spectral
norm independent of width: the spectral condition for feature learning (Yang, Simon and
Bernstein 2023), so its LR needs no width multiplier, only the depth one l^(a-1).

At the base shape (m = l = 1, K = K0) every multiplier is 1 and 'mup' computes what 'sp'
computes (tests/test_mup.py). The rules assume d_ff and n_heads * head_dim grow in proportion
to d_model (one m for every hidden matrix), as in configs/ladder.py.
"""

from __future__ import annotations

import dataclasses
import math

PARAMETERIZATIONS = ("sp", "mup")  # ModelConfig.parameterization
KINDS = ("embedding", "hidden", "output", "block_vector", "vector")
EMBEDDING_NAMES = ("embedding", "pos_embedding")
RESIDUAL_OUTPUTS = ("o", "wo", "o_bias", "wo_bias")  # a residual branch's last tensors


@dataclasses.dataclass(frozen=True)
class Rule:
  """Multipliers of one tensor kind: of model.init_std, of the Adam LR, of optim.weight_decay."""
  init: float
  adam_lr: float
  weight_decay: float


@dataclasses.dataclass(frozen=True)
class Ratios:
  """m = d_model / base_width; l = n_layers / base_depth and the exponent a (l = 1, a = 0
  without depth scaling); attention = sqrt(K0) / K, the logit scale (None while K = K0)."""
  width: float = 1.0
  depth: float = 1.0
  alpha: float = 0.0
  attention: float | None = None  # None: the default 1/sqrt(head_dim)


def ratios(cfg) -> Ratios:
  """The ratios of a ModelConfig (all 1 / default under 'sp')."""
  if cfg.parameterization == "sp":
    return Ratios()
  depth_on = cfg.base_depth is not None
  base_head_dim = cfg.base_head_dim or cfg.head_dim
  return Ratios(width=cfg.d_model / cfg.base_width, depth=cfg.n_layers / cfg.base_depth if depth_on else 1.0,
                alpha=float(cfg.depth_alpha) if depth_on else 0.0,
                attention=None if base_head_dim == cfg.head_dim else math.sqrt(base_head_dim) / cfg.head_dim)


def rules(cfg) -> dict[str, Rule]:
  """The table of the module docstring for this config, one Rule per tensor kind."""
  r = ratios(cfg)
  m, depth_lr = r.width, r.depth ** (r.alpha - 1)
  return {
      "embedding":    Rule(init=1.0,         adam_lr=1.0,          weight_decay=1.0),
      "hidden":       Rule(init=m ** -0.5,   adam_lr=depth_lr / m, weight_decay=m),
      "output":       Rule(init=1.0,         adam_lr=1.0,          weight_decay=1.0),
      "block_vector": Rule(init=1.0,         adam_lr=depth_lr,     weight_decay=1.0),
      "vector":       Rule(init=1.0,         adam_lr=1.0,          weight_decay=1.0),
  }


def muon_lr_multiplier(cfg) -> float:
  """l^(a-1): Muon's LR multiplier for the hidden matrices (its shape scaling does the width)."""
  r = ratios(cfg)
  return r.depth ** (r.alpha - 1)


def residual_multiplier(cfg) -> float:
  """l^-a: each residual branch's output is scaled by it (1 without depth scaling)."""
  r = ratios(cfg)
  return r.depth ** -r.alpha


def output_multiplier(cfg) -> float:
  """1/m: the logits are scaled by it (1 under 'sp')."""
  return 1.0 / ratios(cfg).width


def attention_scale(cfg) -> float | None:
  """The attention logit scale, or None for the default 1/sqrt(head_dim) ('sp')."""
  return ratios(cfg).attention


def adam_eps(cfg, eps: float) -> float:
  """eps / (m l^a): Adam's epsilon at this width and depth (eps itself under 'sp')."""
  r = ratios(cfg)
  return eps / (r.width * r.depth ** r.alpha)


def init_std(cfg, residual_output: bool = False) -> float:
  """The init std of a hidden matrix (q k v wi, or with residual_output o and wo)."""
  if cfg.parameterization == "sp":
    return cfg.init_std / (2 * cfg.n_layers) ** 0.5 if residual_output else cfg.init_std
  std = cfg.init_std * rules(cfg)["hidden"].init
  init_depth = cfg.base_depth if cfg.base_depth is not None else cfg.n_layers
  return std / (2 * init_depth) ** 0.5 if residual_output else std


def path_names(path) -> list[str]:
  """A jax key path as its names: ('layer_0', 'attn', 'q')."""
  return [str(getattr(k, "key", getattr(k, "name", k))) for k in path]


def kind(names) -> str:
  """The tensor kind of a parameter path (names as path_names gives them)."""
  last = names[-1]
  if last in EMBEDDING_NAMES:
    return "embedding"
  if last == "head":
    return "output"
  vector = last in ("scale", "bias") or last.endswith("_bias")
  in_block = names[0].startswith("layer")  # layer_3 (unrolled) or layers (scanned)
  if vector:
    return "block_vector" if in_block else "vector"
  return "hidden"


def check(m) -> str | None:
  """What is wrong with the parameterization fields of a `model.` dict, or None."""
  if m["parameterization"] == "sp":
    given = [f for f in ("base_width", "base_depth", "base_head_dim") if m[f] is not None]
    if given:
      return (f"model.{given[0]}={m[given[0]]} is only read under model.parameterization='mup'; set "
              f"--config.model.parameterization=mup, or leave model.{given[0]} unset.")
    return None
  if m["base_width"] is None or int(m["base_width"]) < 1:
    return ("model.parameterization='mup' needs model.base_width, the d_model the hyperparameters were tuned at "
            f"(e.g. --config.model.base_width={m['d_model']} makes this model the base).")
  for f in ("base_depth", "base_head_dim"):
    if m[f] is not None and int(m[f]) < 1:
      return f"model.{f}={m[f]} must be a positive integer (or unset)."
  if m["base_depth"] is not None and not 0.5 <= float(m["depth_alpha"]) <= 1.0:
    return (f"model.depth_alpha={m['depth_alpha']} must lie in [0.5, 1]: 1 is CompleteP, 0.5 depth-µP "
            "(Dey et al. 2025, Yang et al. 2023).")
  return None


def fold_into_sp(cfg, params: dict):
  """(an 'sp' config, parameters) computing the same logits as a 'mup' model's `params`.

  Every µP multiplier is linear in a weight it follows: the residual multiplier goes into o
  and wo (and their biases), the attention scale into q (RoPE is linear), the output
  multiplier 1/m into the head, which a tied model gains as embedding.T / m (untied). The
  init-only rules leave nothing to fold. For export to formats that know only SP (HF).
  """
  if cfg.parameterization == "sp":
    return cfg, params
  residual, output = residual_multiplier(cfg), output_multiplier(cfg)
  scale = attention_scale(cfg)
  query = 1.0 if scale is None else scale * math.sqrt(cfg.head_dim)  # x the default 1/sqrt(K) = the µP scale

  def fold_block(block: dict) -> dict:
    block = {k: dict(v) if isinstance(v, dict) else v for k, v in block.items()}
    for name in ("o", "o_bias"):
      if name in block["attn"]:
        block["attn"][name] = block["attn"][name] * residual
    for name in ("q", "q_bias"):
      if name in block["attn"]:
        block["attn"][name] = block["attn"][name] * query
    for name in ("wo", "wo_bias"):
      if name in block["mlp"]:
        block["mlp"][name] = block["mlp"][name] * residual
    return block

  out = {k: (fold_block(v) if k.startswith("layer") else v) for k, v in params.items()}
  out["head"] = (params["embedding"].T if cfg.tie_embeddings else params["head"]) * output
  sp = dataclasses.replace(cfg, parameterization="sp", base_width=None, base_depth=None, base_head_dim=None,
                           tie_embeddings=False)
  return sp, out
