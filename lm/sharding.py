"""Device mesh, logical-axis rules, and placement of parameters and batches on the mesh.

Layers name logical axes; `rules(cfg.mesh)` maps them to the mesh axes `data`, `fsdp`,
`tensor`, in the order `mesh.rule_order` gives: flax gives each array dimension the mesh
axes of the first rule that names its logical axis and whose mesh axes no earlier rule has
taken in that array. So with the default order, activations (batch, length, embed) give
(data, fsdp) to `batch` and keep `embed` whole, while weights, which have no batch axis,
give fsdp to `embed`. tests/test_sharding.py pins both.

The batch: `check_batch` is the one place that says whether a global batch divides over
processes, gradient-accumulation micro-batches and the data-parallel shards.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from absl import logging

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn
from jax.sharding import NamedSharding, PartitionSpec as P

from lm.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")


def mesh_shape(mesh_cfg, n_devices: int) -> tuple[int, int, int]:
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
                        f"{n_devices} devices present; pick sizes whose product divides {n_devices}. (On a CPU, "
                        f"XLA_FLAGS=--xla_force_host_platform_device_count={fixed} simulates {fixed} devices.)")
    sizes[free[0]] = n_devices // fixed
  elif fixed != n_devices:
    raise ConfigError(f"{spec}: the mesh has {fixed} devices but {n_devices} are present; make the "
                      f"product equal {n_devices}, or set one axis to -1 to take the rest. (On a CPU, "
                      f"XLA_FLAGS=--xla_force_host_platform_device_count={fixed} simulates {fixed} devices.)")
  return tuple(sizes)


def make_mesh(mesh_cfg, devices=None) -> jax.sharding.Mesh:
  """A (data, fsdp, tensor) mesh over `devices` (default: all), -1 resolved, Auto axes."""
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(mesh_cfg, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def rules(mesh_cfg) -> tuple[tuple[str, Any], ...]:
  """The config's rule table as flax logical_axis_rules, in the order mesh.rule_order gives."""
  table = mesh_cfg.rules.to_dict() if hasattr(mesh_cfg.rules, "to_dict") else dict(mesh_cfg.rules)
  order = [n.strip() for n in str(mesh_cfg.rule_order).split(",") if n.strip()]
  if sorted(order) != sorted(table) or len(set(order)) != len(order):
    raise ConfigError(
        f"mesh.rule_order={mesh_cfg.rule_order!r} must name every rule of mesh.rules exactly once "
        f"({', '.join(sorted(table))}); add a rule's name to it when you add the rule.")
  out = []
  for name in order:
    axes = tuple(a.strip() for a in str(table[name] or "").split(",") if a.strip())
    for a in axes:
      if a not in MESH_AXES:
        raise ConfigError(
            f"mesh.rules.{name}={table[name]!r} names mesh axis {a!r}; the mesh axes are {MESH_AXES}.")
    out.append((name, axes if len(axes) > 1 else (axes[0] if axes else None)))
  return tuple(out)


def batch_shards(mesh_sizes, rule_table) -> int:
  """How many ways the `batch` rule splits a batch over a mesh of these axis sizes
  (a Mesh's .shape, or {"data": 2, "fsdp": 2, "tensor": 2})."""
  axes = dict(rule_table).get("batch")
  names = (axes,) if isinstance(axes, str) else tuple(axes or ())
  return math.prod(int(mesh_sizes[a]) for a in names)


def check_batch(batch_size: int, *, processes: int = 1, accum_steps: int = 1, shards: int = 1) -> None:
  """The one check that a global batch of `batch_size` rows splits evenly: over `processes`
  (each feeds its own rows), into `accum_steps` micro-batches, and each micro-batch over the
  `shards` data-parallel devices its `batch` rule names. ConfigError naming the fix if not."""
  unit = math.lcm(processes, accum_steps * shards)
  fix = f"use a multiple of {unit}"
  if batch_size < 1:
    raise ConfigError(f"train.batch_size={batch_size} must be a positive integer.")
  if accum_steps < 1:
    raise ConfigError(f"optim.grad_accum_steps={accum_steps} must be >= 1.")
  if batch_size % processes:
    raise ConfigError(f"train.batch_size={batch_size} does not divide over {processes} processes (each reads its "
                      f"own rows); {fix}.")
  if batch_size % accum_steps:
    raise ConfigError(f"train.batch_size={batch_size} is not a multiple of optim.grad_accum_steps={accum_steps}; "
                      f"{fix}, or change the accumulation steps.")
  if (batch_size // accum_steps) % shards:
    raise ConfigError(f"train.batch_size={batch_size} does not divide over the {shards} data-parallel devices of "
                      f"the `batch` rule: each of its {accum_steps} micro-batch(es) has {batch_size // accum_steps} "
                      f"rows; {fix}, or change the mesh or the accumulation steps.")


def logical_sharding(logical_axes: tuple, mesh, rule_table) -> NamedSharding:
  spec = nn.logical_to_mesh_axes(logical_axes, rule_table)
  return NamedSharding(mesh, spec)


def run_once(fn: Callable, *args, out_shardings=None):
  """jit-compile and run a function that runs once per process (initialisation).

  On CPU, LLVM's full optimisation of threefry's unrolled rounds dominates: a tiny model's
  init compiled in ~5 s at the default level and ~1 s at level 0, and it runs once, so it
  is compiled at level 0. (Random values agree with the default level to ~1 ulp.)
  """
  return compile_once(fn, *args, out_shardings=out_shardings)(*args)


def compile_once(fn: Callable, *args, out_shardings=None):
  """fn compiled for these arguments' shapes, at XLA's optimisation level 0 on CPU (run_once)."""
  jitted = jax.jit(fn, out_shardings=out_shardings)
  options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
  return jitted.lower(*args).compile(compiler_options=options)


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


def model_init(model) -> Callable:
  """rng -> the model's variables (boxed with their logical axes); parameter shapes do not
  depend on the input's length, so one token stands for any batch."""
  return lambda rng: model.init(rng, jnp.zeros((1, 1), jnp.int32))


def abstract_params(model, mesh, rule_table):
  """(abstract parameters, their shardings) of a flax model on the mesh, computing nothing."""
  abstract, shardings = abstract_shardings(model_init(model), mesh, rule_table, jax.random.key(0))
  return abstract["params"], shardings["params"]


def init_params(model, mesh, rule_table, seed: int):
  """The model's parameters from `seed`, each created directly in its shard."""
  variables, _ = sharded_init(model_init(model), mesh, rule_table, jax.random.key(seed))
  return variables["params"]


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
