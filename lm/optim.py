"""optax chains from the `optim.` config: AdamW (or Lion), schedules, clipping, decay mask.

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
"""

from __future__ import annotations

import jax
import optax

from lm.errors import ConfigError

OPTIMIZERS = ("adamw", "lion")
SCHEDULES = ("cosine", "constant", "wsd")
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
  if o.grad_accum_steps < 1:
    raise ConfigError(f"optim.grad_accum_steps={o.grad_accum_steps} must be >= 1.")
  for field in ("b1", "b2"):  # decay rates of the moment averages
    if not 0 <= o[field] < 1:
      raise ConfigError(f"optim.{field}={o[field]} must lie in [0, 1) (e.g. b1=0.9, b2=0.95).")
  if o.name == "adamw" and not o.eps > 0:
    raise ConfigError(f"optim.eps={o.eps} must be positive (AdamW divides by sqrt(v) + eps; e.g. 1e-8).")
  if o.weight_decay < 0:
    raise ConfigError(f"optim.weight_decay={o.weight_decay} must be >= 0 (0 turns it off).")
  if o.clip_norm < 0:
    raise ConfigError(f"optim.clip_norm={o.clip_norm} must be >= 0 (0 turns clipping off).")


def schedule(o, total_steps: int) -> optax.Schedule:
  """Learning rate per optimizer step.

  cosine:   linear warmup 0 -> lr, then cosine down to lr * min_lr_ratio at total_steps.
  constant: linear warmup, then lr.
  wsd:      warmup, stable at lr, then a linear decay to lr * min_lr_ratio over the last
            decay_fraction of the steps (Hu et al. 2024, "MiniCPM").
  """
  lr, warmup, final = float(o.lr), int(o.warmup_steps), float(o.lr) * float(o.min_lr_ratio)
  if o.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(total_steps, warmup + 1), final)
  warm = optax.linear_schedule(0.0, lr, max(warmup, 1))
  if o.schedule == "constant":
    return optax.join_schedules([warm, optax.constant_schedule(lr)], [warmup])
  decay_steps = max(1, int(round(total_steps * float(o.decay_fraction))))
  stable_end = wsd_decay_start(o, total_steps)
  return optax.join_schedules(
      [warm, optax.constant_schedule(lr), optax.linear_schedule(lr, final, decay_steps)], [warmup, stable_end])


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
  def decayed(path, leaf):
    names = [str(getattr(k, "key", getattr(k, "name", ""))) for k in path]
    last = names[-1] if names else ""
    no_decay = last in ("scale", "bias") or last.endswith("_bias") or any(n in NO_DECAY_NAMES for n in names)
    return not no_decay
  return jax.tree_util.tree_map_with_path(decayed, params)


def make_optimizer(o, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  validate(o, total_steps)
  lr = schedule(o, total_steps)
  if o.name == "adamw":
    opt = optax.adamw(lr, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay, mask=decay_mask)
  else:
    opt = optax.lion(lr, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay, mask=decay_mask)
  if o.clip_norm and o.clip_norm > 0:
    opt = optax.chain(optax.clip_by_global_norm(o.clip_norm), opt)
  return opt, lr
