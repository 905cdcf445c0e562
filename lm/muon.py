"""Muon for lm's hidden matrices (optim.name='muon'): optax.contrib's Newton-Schulz
orthogonalisation, told which axes of each weight are its fan-in and fan-out.

Muon (Jordan 2024, "Muon: An optimizer for hidden layers"; Liu et al. 2025, "Muon is Scalable
for LLM Training") replaces a matrix's update by the orthogonalised (Nesterov) momentum,
UV^T of its SVD approximated by 5 quintic Newton-Schulz steps, scaled by
sqrt(max(1, fan_out / fan_in)). It is defined for matrices acting as x W = y; embeddings (a
lookup), the head (the output layer), norm scales and biases keep AdamW, as in Jordan's
recipe (lm/optim.py builds the two as one optax.partition).

lm's weights are einsum operands of rank 2 or 3, so each hidden tensor is read as the
matrix of its contraction, by name (optax.contrib.MuonDimensionNumbers: the reduction axes
are flattened into the rows, the output axes into the columns, every other axis is a batch
of separate matrices, vmapped):

  | weight  | shape     | matrix (fan_in x fan_out)  | why                                    |
  |---------|-----------|----------------------------|----------------------------------------|
  | q k v   | (D, H, K) | D x (H K)                  | "BLD,DHK->BLHK": all heads one map of x |
  | o       | (H, K, D) | (H K) x D                  | "BLHK,HKD->BLD"                         |
  | wi      | (D, 2, F) | D x F, gate and up apart   | two maps stored together (lm/model.py)  |
  | wi, wo  | (D, F), (F, D) | as stored             |                                         |

Under scan_layers every tensor has a leading `layers` axis: one more batch axis, so each
layer's matrix is orthogonalised on its own, exactly as unrolled.

Sharding: nothing here names a mesh. The reshape to (batch, fan_in, fan_out) keeps the
sharded axes outermost in their group (D over fsdp leads the rows of q; H over tensor leads
the columns), and the Newton-Schulz products X X^T and (X X^T) X are plain matmuls of the
sharded arrays, which GSPMD partitions like any other (a reduce over the contracted sharded
axis); tests/test_muon.py checks a step on every mesh equals the step on one device.
"""

from __future__ import annotations

import math

import jax
import optax
from optax import contrib

from lm import parameterization as param_lib

DimNums = contrib.MuonDimensionNumbers
_MATRICES = {  # name -> (reduction axes, output axes) of the unscanned tensor
    "q": ((0,), (1, 2)), "k": ((0,), (1, 2)), "v": ((0,), (1, 2)),
    "o": ((0, 1), (2,)),
    "wo": ((0,), (1,)),
}


def dimension_numbers(names, ndim: int) -> DimNums:
  """The fan-in and fan-out axes of the hidden tensor at path `names` with `ndim` axes."""
  name, offset = names[-1], 1 if names[0] == "layers" else 0
  if name == "wi":
    reduction, output = ((0,), (2,)) if ndim - offset == 3 else ((0,), (1,))
  elif name in _MATRICES:
    reduction, output = _MATRICES[name]
  else:
    raise ValueError(f"Muon has no matrix layout for the hidden tensor {'/'.join(names)}; add it to "
                     "lm/muon.py:_MATRICES (its fan-in and fan-out axes).")
  return DimNums(tuple(a + offset for a in reduction), tuple(a + offset for a in output))


def uses_muon(names) -> bool:
  """True for the hidden matrices (lm/parameterization.py's kind 'hidden'); the rest take AdamW."""
  return param_lib.kind(names) == "hidden"


def _dimension_numbers_tree(updates):
  # Called by optax on the Muon side of the partition: the other leaves are MaskedNodes,
  # empty subtrees that tree_map passes through.
  return jax.tree_util.tree_map_with_path(
      lambda path, u: dimension_numbers(param_lib.path_names(path), u.ndim), updates)


def shape_scale(shape, dims: DimNums) -> float:
  """sqrt(max(1, fan_out / fan_in)) of one matrix (Jordan 2024's width scaling)."""
  fan_in = math.prod(shape[a] for a in dims.reduction_axis)
  fan_out = math.prod(shape[a] for a in dims.output_axis)
  return math.sqrt(max(1.0, fan_out / fan_in))


def scale_by_muon(beta: float, ns_steps: int) -> optax.GradientTransformation:
  """Orthogonalised Nesterov momentum (optax.contrib.scale_by_muon), each matrix then scaled
  by shape_scale (optax's own scale_by_shape is not exported by optax 0.2.8's contrib)."""
  def scale_by_shape(updates, state, params=None):
    del params
    return jax.tree_util.tree_map_with_path(
        lambda path, u: u * shape_scale(u.shape, dimension_numbers(param_lib.path_names(path), u.ndim)),
        updates), state
  return optax.chain(
      contrib.scale_by_muon(beta=beta, ns_steps=ns_steps, nesterov=True,
                            weight_dimension_numbers=_dimension_numbers_tree),
      optax.GradientTransformation(lambda _: optax.EmptyState(), scale_by_shape))
