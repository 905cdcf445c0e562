"""optax chains from the `optim.` config: AdamW, Lion or Muon, schedules, clipping, decay mask,
and the per-tensor multipliers of µP.

Gradient accumulation lives in the train step (micro-batches under lax.scan), so one call
of the optimizer is one optimizer step and `train.steps` counts optimizer steps.

A relaunch that changes train.steps (lm/workdir.py allows it) keeps the optimizer state and
recomputes the schedule for the new length, and says so (`schedule_change`):
  cosine    the curve is stretched to the new end: at the resumed step the lr jumps to the
            longer curve's value (a finished run at lr * min_lr_ratio goes back up part way).
  wsd       the decay moves to the last decay_fraction of the new length: a run still in its
            stable phase stays at lr longer (what WSD is for); one already decaying jumps
            back towards lr and decays again at the new end.
  constant  nothing changes after warmup.

Under model.parameterization='sp' AdamW and Lion are optax.adamw / optax.lion as they were.
Under 'mup', and for Muon, the same chain is written out (scale_by_adam, decay, learning
rate) with each tensor's multipliers applied by name (lm/parameterization.py's table): one
optimizer whose steps differ per tensor only by constant factors, never a second copy:
  update = -lr_t * lr_mult * (adam(g; eps') + wd * wd_mult * w)
Muon (lm/muon.py) takes the hidden matrices at optim.muon_lr (x the depth multiplier) and
the chain above takes the rest, joined by optax.partition.
"""

from __future__ import annotations

import jax
import optax

from lm import muon as muon_lib
from lm import parameterization as param_lib
from lm.errors import ConfigError

OPTIMIZERS = ("adamw", "lion", "muon")
SCHEDULES = ("cosine", "constant", "wsd")
DECAY_SHAPES = ("linear", "1-sqrt")  # wsd's decay: Hu et al. 2024 / Hägele et al. 2024
# Never decayed: norms and biases are 1-D; embeddings are lookups, and decaying them
# shrinks rare tokens' rows for no benefit (GPT-3 / Chinchilla practice).
NO_DECAY_NAMES = ("embedding", "pos_embedding")


def validate(o, total_steps: int) -> None:
  if o.name not in OPTIMIZERS:
    raise ConfigError(f"optim.name={o.name!r} is not one of {OPTIMIZERS}; set --config.optim.name.")
  if o.schedule not in SCHEDULES:
    raise ConfigError(f"optim.schedule={o.schedule!r} is not one of {SCHEDULES}; set --config.optim.schedule.")
  if o.lr <= 0:
    raise ConfigError(f"optim.lr={o.lr} must be positive.")
  if not 0 <= o.warmup_steps <= total_steps:
    raise ConfigError(f"optim.warmup_steps={o.warmup_steps} must lie in [0, train.steps={total_steps}].")
  if not 0 <= o.min_lr_ratio <= 1:
    raise ConfigError(f"optim.min_lr_ratio={o.min_lr_ratio} must lie in [0, 1].")
  if o.schedule == "wsd" and not 0 < o.decay_fraction <= 1:
    raise ConfigError(f"optim.decay_fraction={o.decay_fraction} must lie in (0, 1] for the wsd schedule.")
  if o.decay_shape not in DECAY_SHAPES:
    raise ConfigError(f"optim.decay_shape={o.decay_shape!r} is not one of {DECAY_SHAPES}; set --config.optim.decay_shape.")
  if o.grad_accum_steps < 1:
    raise ConfigError(f"optim.grad_accum_steps={o.grad_accum_steps} must be >= 1.")
  for field in ("b1", "b2"):  # decay rates of the moment averages
    if not 0 <= o[field] < 1:
      raise ConfigError(f"optim.{field}={o[field]} must lie in [0, 1) (e.g. b1=0.9, b2=0.95).")
  if o.name in ("adamw", "muon") and not o.eps > 0:
    raise ConfigError(f"optim.eps={o.eps} must be positive (AdamW divides by sqrt(v) + eps; e.g. 1e-8).")
  if o.weight_decay < 0:
    raise ConfigError(f"optim.weight_decay={o.weight_decay} must be >= 0 (0 turns it off).")
  if o.clip_norm < 0:
    raise ConfigError(f"optim.clip_norm={o.clip_norm} must be >= 0 (0 turns clipping off).")
  if o.name == "muon" and not (o.muon_lr > 0 and 0 <= o.muon_beta < 1 and o.muon_ns_steps >= 1):
    raise ConfigError(f"optim.muon_lr={o.muon_lr}, muon_beta={o.muon_beta}, muon_ns_steps={o.muon_ns_steps}: "
                      "Muon needs a positive LR, a momentum in [0, 1) and at least one Newton-Schulz step.")


def schedule(o, total_steps: int, peak: float | None = None) -> optax.Schedule:
  """Learning rate per optimizer step.

  cosine:   linear warmup 0 -> lr, then cosine down to lr * min_lr_ratio at total_steps.
  constant: linear warmup, then lr.
  wsd:      warmup, stable at lr, then a decay to lr * min_lr_ratio over the last
            decay_fraction of the steps: decay_shape 'linear' (Hu et al. 2024, "MiniCPM") or
            '1-sqrt', final + (lr - final) x (1 - sqrt(x)) at the fraction x of the decay done
            (Hägele et al. 2024: it matched cosine at every length where linear fell short).
            Before its decay starts the curve is 'constant''s, step for step, which is what
            lets one stable run branch cooldowns at several lengths (train.branch_from).
  peak: the rate in place of optim.lr (Muon's optim.muon_lr), same shape.
  """
  lr = float(o.lr if peak is None else peak)
  warmup, final = int(o.warmup_steps), lr * float(o.min_lr_ratio)
  if o.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(total_steps, warmup + 1), final)
  warm = optax.linear_schedule(0.0, lr, max(warmup, 1))
  if o.schedule == "constant":
    return optax.join_schedules([warm, optax.constant_schedule(lr)], [warmup])
  decay_steps = max(1, int(round(total_steps * float(o.decay_fraction))))
  stable_end = wsd_decay_start(o, total_steps)
  if o.decay_shape == "1-sqrt":
    decay = lambda count: final + (lr - final) * (1.0 - jax.numpy.sqrt(  # noqa: E731
        jax.numpy.clip(count / decay_steps, 0.0, 1.0)))
  else:
    decay = optax.linear_schedule(lr, final, decay_steps)
  return optax.join_schedules([warm, optax.constant_schedule(lr), decay], [warmup, stable_end])


def schedule_change(o, old_steps: int, new_steps: int, step: int) -> str:
  """What recomputing the schedule for new_steps does at the resumed `step`, as one line."""
  before, after = float(schedule(o, old_steps)(step)), float(schedule(o, new_steps)(step))
  line = (f"train.steps {old_steps} -> {new_steps}: the {o.schedule} learning-rate schedule is recomputed for "
          f"{new_steps} steps; at the resumed step {step} the lr goes from {before:.4g} to {after:.4g}")
  if o.schedule == "wsd":
    line += f" (the decay now starts at step {wsd_decay_start(o, new_steps)}, was {wsd_decay_start(o, old_steps)})"
  return line + "."


def wsd_decay_start(o, total_steps: int) -> int:
  """The step where wsd's linear decay begins: the last decay_fraction of the steps."""
  return max(int(o.warmup_steps), total_steps - max(1, int(round(total_steps * float(o.decay_fraction)))))


def decay_mask(params):
  """True for weight matrices; False for norm scales, biases and embeddings.

  Decided by name, not rank: under scan_layers a norm scale is 2-D (layers, embed) and
  a q bias is 2-D (heads, head_dim) anyway.
  """
  return jax.tree_util.tree_map_with_path(lambda path, _: decayed(param_lib.path_names(path)), params)


def decayed(names) -> bool:
  last = names[-1] if names else ""
  no_decay = last in ("scale", "bias") or last.endswith("_bias") or any(n in NO_DECAY_NAMES for n in names)
  return not no_decay


def make_optimizer(o, total_steps: int, model_cfg=None) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """(optimizer, the LR schedule it logs). model_cfg (a ModelConfig) carries µP's rules;
  without it, or under 'sp', every tensor gets the same rates."""
  validate(o, total_steps)
  lr = schedule(o, total_steps)
  mup = model_cfg is not None and model_cfg.parameterization != "sp"
  if o.name == "adamw" and not mup:
    opt = optax.adamw(lr, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay, mask=decay_mask)
  elif o.name == "lion" and not mup:
    opt = optax.lion(lr, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay, mask=decay_mask)
  else:
    rules = param_lib.rules(model_cfg) if mup else None
    opt = per_tensor_chain(o, lr, rules, param_lib.adam_eps(model_cfg, o.eps) if mup else o.eps)
    if o.name == "muon":
      depth_lr = param_lib.muon_lr_multiplier(model_cfg) if mup else 1.0
      muon = optax.chain(muon_lib.scale_by_muon(o.muon_beta, o.muon_ns_steps),
                         optax.add_decayed_weights(o.weight_decay),  # every Muon tensor is a decayed matrix
                         optax.scale_by_learning_rate(schedule(o, total_steps, peak=o.muon_lr)),
                         scale_per_tensor(lambda names: depth_lr))
      labels = lambda params: jax.tree_util.tree_map_with_path(  # noqa: E731
          lambda path, _: "muon" if muon_lib.uses_muon(param_lib.path_names(path)) else "adam", params)
      opt = optax.partition({"muon": muon, "adam": opt}, labels)
  if o.clip_norm and o.clip_norm > 0:
    opt = optax.chain(optax.clip_by_global_norm(o.clip_norm), opt)
  return opt, lr


def per_tensor_chain(o, lr: optax.Schedule, rules: dict | None, eps: float) -> optax.GradientTransformation:
  """AdamW (Lion for optim.name='lion') written out, each tensor's LR and decay multiplied by
  its kind's Rule (None: all 1): optax.adamw's three steps with per-tensor factors."""
  rule = (lambda names: rules[param_lib.kind(names)]) if rules else (lambda names: param_lib.Rule(1.0, 1.0, 1.0))
  base = (optax.scale_by_lion(b1=o.b1, b2=o.b2) if o.name == "lion"
          else optax.scale_by_adam(b1=o.b1, b2=o.b2, eps=eps))
  return optax.chain(
      base,
      add_decayed_weights_per_tensor(lambda names: o.weight_decay * rule(names).weight_decay if decayed(names) else 0.0),
      optax.scale_by_learning_rate(lr),
      scale_per_tensor(lambda names: rule(names).adam_lr))


def scale_per_tensor(factor) -> optax.GradientTransformation:
  """updates * factor(names) for each tensor, a constant per tensor (1: left untouched)."""
  def update(updates, state, params=None):
    del params
    def scale(path, u):
      f = factor(param_lib.path_names(path))
      return u if f == 1.0 else u * jax.numpy.asarray(f, u.dtype)
    return jax.tree_util.tree_map_with_path(scale, updates), state
  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def add_decayed_weights_per_tensor(rate) -> optax.GradientTransformation:
  """updates + rate(names) * params for each tensor (0: not decayed), as optax.add_decayed_weights."""
  def update(updates, state, params):
    def add(path, u, w):
      r = rate(param_lib.path_names(path))
      return u if r == 0.0 else u + r * w
    return jax.tree_util.tree_map_with_path(add, updates, params), state
  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)
