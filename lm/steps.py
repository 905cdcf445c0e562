"""The train state and the pure step functions: (state, batch) -> (state, metrics).

A batch holds this process's rows: inputs, targets, segment_ids, positions [b, L] (and
target_bytes [b] for evaluation); a target counts where segment_ids > 0 and, when the
batch has one (supervised fine-tuning: completion tokens only), where loss_mask > 0.
Under jit the rows of all processes form one global batch sharded along `batch`.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import flax.linen as nn
import optax

from lm import sharding
from lm.model import Transformer

TRAIN_KEYS = ("inputs", "targets", "segment_ids", "positions")
EVAL_KEYS = TRAIN_KEYS + ("target_bytes",)
OPTIONAL_KEYS = ("loss_mask",)  # [b, L]: 1 where the target counts (lm/data/sft.py)


def token_losses(model: Transformer, params, batch) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(nll [b, L], log-partition [b, L], mask [b, L]) in float32."""
  logits_BLV = model.apply({"params": params}, batch["inputs"], batch["segment_ids"], batch["positions"])
  logz_BL = jax.nn.logsumexp(logits_BLV, axis=-1)
  target_logit_BL = jnp.take_along_axis(logits_BLV, batch["targets"][..., None], axis=-1)[..., 0]
  mask_BL = batch["segment_ids"] > 0
  if "loss_mask" in batch:
    mask_BL = mask_BL & (batch["loss_mask"] > 0)
  return logz_BL - target_logit_BL, logz_BL, mask_BL


def summed_loss(model, z_loss: float, params, batch):
  """Sum over valid targets of nll (+ z_loss * logz^2); divided by the token count later,
  so that accumulated micro-batches weigh every token equally."""
  nll_BL, logz_BL, mask_BL = token_losses(model, params, batch)
  sum_nll = jnp.sum(jnp.where(mask_BL, nll_BL, 0.0))
  total = sum_nll
  if z_loss:
    total = total + z_loss * jnp.sum(jnp.where(mask_BL, jnp.square(logz_BL), 0.0))
  return total, {"sum_nll": sum_nll, "tokens": jnp.sum(mask_BL)}


def micro_batches(batch, k: int):
  """[b, ...] -> [k, b/k, ...] taking every k-th row, so each device's rows feed every
  micro-batch and no data moves between devices."""
  return jax.tree.map(lambda x: jnp.swapaxes(x.reshape((x.shape[0] // k, k) + x.shape[1:]), 0, 1), batch)


def make_train_step(model: Transformer, optimizer: optax.GradientTransformation, lr_schedule: Callable,
                    z_loss: float = 0.0, grad_accum_steps: int = 1):
  grad_fn = jax.value_and_grad(lambda p, b: summed_loss(model, z_loss, p, b), has_aux=True)

  def train_step(state, batch):
    params = state["params"]
    batch = {k: batch[k] for k in TRAIN_KEYS + OPTIONAL_KEYS if k in batch}
    if grad_accum_steps == 1:
      (_, aux), grads = grad_fn(params, batch)
    else:
      def accumulate(carry, micro):
        (_, aux_i), grads_i = grad_fn(params, micro)
        return jax.tree.map(jnp.add, carry, (grads_i, aux_i)), None
      zeros = (jax.tree.map(jnp.zeros_like, params), {"sum_nll": jnp.float32(0), "tokens": jnp.int32(0)})
      (grads, aux), _ = jax.lax.scan(accumulate, zeros, micro_batches(batch, grad_accum_steps))
    n = jnp.maximum(aux["tokens"], 1).astype(jnp.float32)
    grads = jax.tree.map(lambda g: g / n, grads)
    updates, opt_state = optimizer.update(grads, state["opt_state"], params)
    new_state = {"step": state["step"] + 1, "params": optax.apply_updates(params, updates), "opt_state": opt_state}
    metrics = {"train_loss": aux["sum_nll"] / n, "grad_norm": optax.tree.norm(grads),
               "lr": lr_schedule(state["step"])}
    return new_state, metrics

  return train_step


def make_eval_step(model: Transformer):
  def eval_step(params, batch):
    nll_BL, _, mask_BL = token_losses(model, params, batch)
    return {"sum_nll": jnp.sum(jnp.where(mask_BL, nll_BL, 0.0)), "tokens": jnp.sum(mask_BL),
            "bytes": jnp.sum(batch["target_bytes"])}
  return eval_step


class StateSpec:
  """Abstract train state, its shardings, and how to create it, for a model + optimizer."""

  def __init__(self, model: Transformer, optimizer, mesh, rules):
    self.model, self.optimizer, self.mesh, self.rules = model, optimizer, mesh, rules
    abstract_params, param_shardings = sharding.abstract_params(model, mesh, rules)
    abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
    rep = sharding.replicated(mesh)
    # optax.partition (Muon + AdamW) keeps each side's state as a params-shaped tree with
    # MaskedNode where the other side's tensors are: those stay MaskedNode (no array).
    masked = lambda v: isinstance(v, optax.MaskedNode)  # noqa: E731
    opt_shardings = optax.tree_map_params(optimizer, lambda v, s: v if masked(v) else s, abstract_opt,
                                          param_shardings, transform_non_params=lambda _: rep, is_leaf=masked)
    self.abstract = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": abstract_params,
                     "opt_state": abstract_opt}
    self.shardings = {"step": rep, "params": param_shardings, "opt_state": opt_shardings}

  def init(self, seed: int, params=None) -> dict[str, Any]:
    """A fresh state; `params` (e.g. from another run) replace the random ones."""
    if params is None:
      params = sharding.init_params(self.model, self.mesh, self.rules, seed)
    with jax.set_mesh(self.mesh):
      opt_state = jax.jit(self.optimizer.init, out_shardings=self.shardings["opt_state"])(params)
    step = jax.device_put(jnp.int32(0), self.shardings["step"])
    return {"step": step, "params": params, "opt_state": opt_state}

  def jit_train_step(self, train_step, batch_shardings):
    return jax.jit(train_step, in_shardings=(self.shardings, batch_shardings),
                   out_shardings=(self.shardings, sharding.replicated(self.mesh)), donate_argnums=0)

  def jit_eval_step(self, eval_step, batch_shardings):
    return jax.jit(eval_step, in_shardings=(self.shardings["params"], batch_shardings),
                   out_shardings=sharding.replicated(self.mesh))


def batch_shardings(mesh, rules, keys) -> dict:
  return {k: sharding.batch_sharding(mesh, rules, 1 if k == "target_bytes" else 2) for k in keys}


def in_context(mesh, rules):
  """The context every traced step runs in: the mesh, and the logical-axis rules."""
  stack = contextlib.ExitStack()
  stack.enter_context(jax.set_mesh(mesh))
  stack.enter_context(nn.logical_axis_rules(rules))
  return stack
