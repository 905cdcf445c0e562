"""Device mesh, logical-axis rules, and placement of parameters and batches on the mesh.

Layers name logical axes; `rules(cfg.mesh)` maps them to the mesh axes `data`, `fsdp`,
`tensor`. A mesh axis already taken by an earlier logical axis of the same array is
skipped (flax resolves rules in order), so the order below is the priority order.
"""

from __future__ import annotations

from typing import Any, Callable

from absl import logging

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn
from jax.sharding import NamedSharding, PartitionSpec as P

from lm import config as config_lib

MESH_AXES = config_lib.MESH_AXES
# batch first: activations (batch, length, embed) shard batch over (data, fsdp), and embed
# then finds fsdp taken and stays whole; parameters have no batch axis, so embed gets fsdp.
RULE_PRIORITY = ("batch", "layers", "vocab", "heads", "kv_heads", "mlp", "embed", "length", "head_dim")


def make_mesh(mesh_cfg, devices=None) -> jax.sharding.Mesh:
  """A (data, fsdp, tensor) mesh over `devices` (default: all), -1 resolved, Auto axes."""
  devices = jax.devices() if devices is None else devices
  shape = config_lib.mesh_shape(mesh_cfg, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def rules(mesh_cfg) -> tuple[tuple[str, Any], ...]:
  """The config's rule table as flax logical_axis_rules, in priority order."""
  table = mesh_cfg.rules.to_dict() if hasattr(mesh_cfg.rules, "to_dict") else dict(mesh_cfg.rules)
  names = [n for n in RULE_PRIORITY if n in table] + sorted(n for n in table if n not in RULE_PRIORITY)
  out = []
  for name in names:
    axes = tuple(a.strip() for a in str(table[name] or "").split(",") if a.strip())
    for a in axes:
      if a not in MESH_AXES:
        raise config_lib.ConfigError(
            f"mesh.rules.{name}={table[name]!r} names mesh axis {a!r}; the mesh axes are {MESH_AXES}.")
    out.append((name, axes if len(axes) > 1 else (axes[0] if axes else None)))
  return tuple(out)


def logical_sharding(logical_axes: tuple, mesh, rule_table) -> NamedSharding:
  spec = nn.logical_to_mesh_axes(logical_axes, rule_table)
  return NamedSharding(mesh, spec)


def run_once(fn: Callable, *args, out_shardings=None):
  """jit-compile and run a function that runs once per process (initialisation).

  On CPU, LLVM's full optimisation of threefry's unrolled rounds dominates: a tiny model's
  init compiled in ~5 s at the default level and ~1 s at level 0, and it runs once, so it
  is compiled at level 0. (Random values agree with the default level to ~1 ulp.)
  """
  jitted = jax.jit(fn, out_shardings=out_shardings)
  options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
  return jitted.lower(*args).compile(compiler_options=options)(*args)


def _divisible_spec(path, leaf, sharding: NamedSharding) -> NamedSharding:
  """Drop the mesh axes of any dimension they do not divide (that dimension is replicated).

  jit cannot place a parameter whose dimension does not divide its shard count (GPT-2's
  vocabulary of 50257 over tensor=2). Rather than fail, that dimension stays whole and
  the log says how to shard it.
  """
  spec = list(sharding.spec) + [None] * (len(leaf.shape) - len(sharding.spec))
  for dim, axes in enumerate(spec):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    shards = int(np.prod([sharding.mesh.shape[a] for a in names]))
    if shards > 1 and leaf.shape[dim] % shards:
      logging.warning("%s: dimension %d (%d) does not divide over mesh axes %s (%d shards); it is "
                      "replicated. Make it a multiple of %d to shard it.",
                      jax.tree_util.keystr(path), dim, leaf.shape[dim], names, shards, shards)
      spec[dim] = None
  return NamedSharding(sharding.mesh, P(*spec))


def abstract_shardings(init_fn: Callable, mesh, rule_table, *args):
  """(abstract unboxed tree, shardings) of `init_fn(*args)` without computing anything."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rule_table):
    abstract = jax.eval_shape(init_fn, *args)
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, rule_table)
  abstract = nn.meta.unbox(abstract)
  shardings = jax.tree_util.tree_map_with_path(_divisible_spec, abstract, shardings)
  return abstract, shardings


def sharded_init(init_fn: Callable, mesh, rule_table, *args):
  """Run `init_fn(*args)` under jit with each parameter created directly in its shard.

  The boxed (LogicallyPartitioned) abstract tree gives every leaf's logical axes, which
  become out_shardings, so no device ever holds the full model. Returns the unboxed tree
  and its shardings.
  """
  _, shardings = abstract_shardings(init_fn, mesh, rule_table, *args)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rule_table):
    variables = run_once(lambda *a: nn.meta.unbox(init_fn(*a)), *args, out_shardings=shardings)
  return variables, shardings


def batch_sharding(mesh, rule_table, ndim: int = 2) -> NamedSharding:
  """Sharding of a [batch, length, ...] input: batch over its rule, the rest whole."""
  return logical_sharding((("batch", "length") + (None,) * ndim)[:ndim], mesh, rule_table)


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def shard_batch(batch: dict, mesh, rule_table) -> dict:
  """Host batch -> global arrays on the mesh.

  Each process passes only its own rows (its slice of the global batch); on one process
  that is the whole batch. Scalars (e.g. byte counts) are summed later, not sharded.
  """
  def put(x):
    x = np.asarray(x)
    if x.ndim == 0:
      return jnp.asarray(x)
    return jax.make_array_from_process_local_data(batch_sharding(mesh, rule_table, x.ndim), x)
  return {k: put(v) for k, v in batch.items()}


def describe(mesh) -> str:
  return " x ".join(f"{n}={s}" for n, s in mesh.shape.items())
