"""Log-likelihood of token sequences under a model, batched on the mesh: what multiple-choice
tasks (lm/tasks.py) and the lm-evaluation-harness adapter (lm/harness.py) are built on.

    scorer = Scorer(model, mesh, rules, batch_size=64)
    scorer(params, [Row(inputs, targets, first=k), ...]) -> [(sum log p, greedy), ...]

A Row is one causal window: inputs [t0 .. tn-1], targets [t1 .. tn], and the targets from
index `first` on are scored (sum of log p(target | inputs up to it)); `greedy` says whether
each scored target is also the model's argmax. Positions start at 0 in every row, as in a
packed training row.

Two ways to cut rows:
  continuation_row(context_ids, continuation_ids, L)  log p(continuation | context): the
      last L+1 tokens of context + continuation (the context is cut from the left, as the
      harness's own HF model does), the continuation's targets scored.
  document_rows(ids, L, bos)  log p(document) in the windows lm.evaluate packs a document
      into (lm/data/pipeline.py): [BOS] t1 .. t(L-1) predicting t1 .. tL, then t(L) ..
      predicting t(L+1) .., each window's positions from 0, every target once. The end of
      the document (EOS) is not scored: a string's log-likelihood, as the harness defines
      loglikelihood_rolling. (HF's harness model extends the last window to a full L tokens
      of context; lm keeps its training windows so the number equals lm.evaluate's.)

Rows are sorted by length and padded to the next multiple of `bucket` (at most L), so a
batch of short rows costs short rows and the number of compiled shapes stays small; the
batch is padded with empty rows to a multiple of the mesh's batch shards. Sums are taken
in float32 on the device per row and accumulated on the host in float64.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lm import sharding
from lm import steps


class Row(NamedTuple):
  inputs: Sequence[int]
  targets: Sequence[int]
  first: int  # targets[first:] are scored


def continuation_row(context: Sequence[int], continuation: Sequence[int], max_len: int) -> Row:
  """The window scoring `continuation` after `context` (which should start with BOS)."""
  if not continuation:
    raise ValueError("an empty continuation has no tokens to score.")
  if not context:
    raise ValueError("the context is empty; start it with the tokenizer's BOS id.")
  whole = (list(context) + list(continuation))[-(max_len + 1):]
  n_scored = min(len(continuation), max_len)
  return Row(whole[:-1], whole[1:], len(whole) - 1 - n_scored)


def document_rows(ids: Sequence[int], max_len: int, bos: int) -> list[Row]:
  """lm.evaluate's windows over one document (see the module docstring), EOS left out."""
  inputs = [bos] + list(ids[:-1])  # [BOS] t1 .. t(n-1) predicting t1 .. tn
  targets = list(ids)
  return [Row(inputs[s:s + max_len], targets[s:s + max_len], 0) for s in range(0, len(targets), max_len)]


def _row_scores(model, params, batch):
  """Per row: sum of log p over the scored targets, and whether all of them are the argmax."""
  logits_BLV = model.apply({"params": params}, batch["inputs"], batch["segment_ids"], batch["positions"])
  logits_BLV = logits_BLV.astype(jnp.float32)
  logp_BLV = jax.nn.log_softmax(logits_BLV, axis=-1)
  target_logp_BL = jnp.take_along_axis(logp_BLV, batch["targets"][..., None], axis=-1)[..., 0]
  scored_BL = batch["scored"] > 0
  greedy_BL = jnp.argmax(logits_BLV, axis=-1) == batch["targets"]
  return {"logprob": jnp.sum(jnp.where(scored_BL, target_logp_BL, 0.0), axis=1),
          "greedy": jnp.all(greedy_BL | ~scored_BL, axis=1)}


class Scorer:
  """Sums of log-probabilities of many rows, batch_size rows at a time, on the mesh."""

  def __init__(self, model, mesh, rules, batch_size: int = 64, bucket: int = 32):
    shards = sharding.batch_shards(mesh.shape, rules)
    self.model, self.mesh, self.rules = model, mesh, rules
    self.batch_size = -(-max(batch_size, 1) // shards) * shards  # a multiple of the batch shards
    self.bucket, self.max_len = bucket, model.cfg.max_seq_len
    self._fn = jax.jit(lambda params, batch: _row_scores(model, params, batch),
                       out_shardings=sharding.replicated(mesh))

  def __call__(self, params, rows: Sequence[Row]) -> list[tuple[float, bool]]:
    for r in rows:
      if not 0 < len(r.inputs) == len(r.targets) <= self.max_len or not 0 <= r.first < len(r.targets):
        raise ValueError(f"a row of {len(r.inputs)} inputs / {len(r.targets)} targets scored from {r.first} "
                         f"does not fit the model's {self.max_len} positions.")
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i].inputs))  # longest first
    out: list[tuple[float, bool] | None] = [None] * len(rows)
    with steps.in_context(self.mesh, self.rules):
      for start in range(0, len(order), self.batch_size):
        chunk = order[start:start + self.batch_size]
        batch = self._batch([rows[i] for i in chunk])
        scores = jax.device_get(self._fn(params, batch))
        for j, i in enumerate(chunk):
          out[i] = (float(scores["logprob"][j]), bool(scores["greedy"][j]))
    return out

  def _batch(self, rows: Sequence[Row]) -> dict:
    width = min(self.max_len, -(-max(len(r.inputs) for r in rows) // self.bucket) * self.bucket)
    shape = (self.batch_size, width)
    host = {k: np.zeros(shape, np.int32) for k in ("inputs", "targets", "segment_ids", "positions", "scored")}
    for b, r in enumerate(rows):
      n = len(r.inputs)
      host["inputs"][b, :n], host["targets"][b, :n] = r.inputs, r.targets
      host["segment_ids"][b, :n], host["positions"][b, :n] = 1, np.arange(n)
      host["scored"][b, r.first:n] = 1
    # Every process holds all rows: each device takes its slice of the global array.
    return {k: jax.make_array_from_callback(shape, sharding.batch_sharding(self.mesh, self.rules, 2),
                                            lambda idx, x=x: x[idx]) for k, x in host.items()}
