"""The training loop: set-up, then one loop body (step, log, evaluate, checkpoint, stop), then
one teardown that writes the summary.

    train(cfg, workdir) -> TrainResult(summary, state, model, tokenizer)
    (the summary is one row of the results schema, also written to WORKDIR/summary.json)

Statuses: finished; diverged (a non-finite loss or gradient: the run stops, the last
checkpoint, written only after its parameters were checked finite, is kept); preempted
(SIGTERM: a checkpoint at the step reached, then a clean exit; the same command resumes);
failed (an exception: recorded, then re-raised).
"""

from __future__ import annotations

import os
import signal
import time
from typing import NamedTuple

from absl import logging
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import numpy as np

from lm import checkpoint as checkpoint_lib
from lm import data as data_lib
from lm import evaluation
from lm import loading
from lm import metrics as metrics_lib
from lm import optim
from lm import schema
from lm import sharding
from lm import steps as steps_lib
from lm.model import ModelConfig, Transformer


class TrainResult(NamedTuple):
  summary: dict
  state: dict
  model: Transformer
  tokenizer: data_lib.Tokenizer


def train(cfg, workdir: str) -> TrainResult:
  # ---- set-up: every check first, then the model, data, state and compiled steps ----
  schema.validate(cfg, n_devices=jax.device_count(), processes=jax.process_count())
  os.makedirs(workdir, exist_ok=True)
  t = cfg.train
  mesh, rules = sharding.make_mesh(cfg.mesh), sharding.rules(cfg.mesh)
  tokenizer = data_lib.build_tokenizer(cfg.data)
  model = Transformer(ModelConfig.from_config(cfg.model, tokenizer.vocab_size))
  optimizer, lr_schedule = optim.make_optimizer(cfg.optim, t.steps, model.cfg)
  spec = steps_lib.StateSpec(model, optimizer, mesh, rules)
  facts = metrics_lib.RunFacts.of(cfg, workdir, model.cfg)
  if jax.process_index() == 0:
    checkpoint_lib.write_config(cfg, workdir, **facts.derived())
  logging.info("model: %s parameters (%s non-embedding); mesh %s", f"{facts.counts.total:,}",
               f"{facts.counts.nonembedding:,}", sharding.describe(mesh))

  ckpt = checkpoint_lib.Checkpointer(workdir, t.keep_checkpoints)
  train_it = data_lib.train_iterator(cfg.data, tokenizer, t.batch_size, t.seed)
  start, state, wall_before = restore_or_init(cfg, spec, ckpt, train_it, workdir)
  evaluate = evaluation.Evaluation(cfg, spec, tokenizer)  # held-out text, or SFT pairs (data.format)
  batch_keys = steps_lib.TRAIN_KEYS + (steps_lib.OPTIONAL_KEYS if cfg.data.format == "sft" else ())
  train_step = spec.jit_train_step(
      steps_lib.make_train_step(model, optimizer, lr_schedule, t.z_loss, cfg.optim.grad_accum_steps),
      steps_lib.batch_shardings(mesh, rules, batch_keys))
  log = metrics_lib.TrainLog(workdir, cfg, start, facts)
  t0 = time.perf_counter()
  wall_s = lambda: wall_before + time.perf_counter() - t0  # noqa: E731 (this run's time plus earlier runs')

  # ---- the loop: step, log, evaluate, checkpoint, stop ----
  status, error, step = "finished", None, start
  try:
    with _Preemption() as preemption, steps_lib.in_context(mesh, rules):
      while step < t.steps:
        if preemption.stop():
          status = "preempted"
          break
        batch = sharding.shard_batch({k: v for k, v in next(train_it).items() if k in batch_keys}, mesh, rules)
        state, device_metrics = train_step(state, batch)
        step += 1
        evaluating = step % t.eval_every == 0 or step == t.steps
        saving = step % t.checkpoint_every == 0 or step == t.steps
        if not log.step(step, device_metrics, settle=evaluating or saving):  # read one step late
          status = "diverged"
          break
        with log.paused():
          if evaluating:
            log.eval(step, evaluate(state["params"]))
          if saving:
            save(ckpt, step, state, train_it, facts, wall_s())
      if status != "diverged" and not log.settle():
        status = "diverged"
      if status == "preempted":
        save(ckpt, step, state, train_it, facts, wall_s(), wait=True)
        log.write(f"SIGTERM: saved a checkpoint at step {step}; rerun the same command to resume.")
  except BaseException as e:  # recorded in summary.json below, then re-raised
    status, error = "failed", e

  # ---- teardown: one path for every status ----
  ckpt.close()
  log.close()
  last_eval, baseline = log.last_eval, None
  if status == "finished":
    if not last_eval:
      last_eval = evaluate(state["params"])
    if cfg.data.format == "text":
      baseline = data_lib.unigram_baseline(cfg.data, tokenizer)
  row = metrics_lib.summary_row(facts, status, step, log.train_loss(), last_eval,
                                wall_s(), log.meter.run_rate(),
                                error=repr(error) if error else None, baseline=baseline)
  summary = metrics_lib.write_summary(workdir, row)
  if error is not None:
    raise error
  return TrainResult(summary, state, model, tokenizer)


def restore_or_init(cfg, spec: steps_lib.StateSpec, ckpt, train_it, workdir: str):
  """(start step, state, wall seconds already spent): the newest readable checkpoint of the
  workdir, or a fresh state (with train.init_from's parameters, if set)."""
  t = cfg.train
  restored = ckpt.restore_latest(checkpoint_lib.abstract_with_shardings(spec.abstract, spec.shardings))
  if restored is not None:
    start, state, data_state, meta = restored
    train_it.set_state(data_state)
    logging.info("resumed from step %d", start)
    print(f"Resumed from the checkpoint at step {start} in {workdir}.", flush=True)
    return start, state, float(meta.get("wall_s", 0.0))
  params = None
  if t.init_from:
    abstract = checkpoint_lib.abstract_with_shardings(spec.abstract["params"], spec.shardings["params"])
    params, from_step = loading.init_params_from(t.init_from, abstract)  # lm workdir or HF directory
    print(f"Initialised parameters from {t.init_from} (step {from_step}).", flush=True)
  return 0, spec.init(t.seed, params), 0.0


def save(ckpt, step: int, state, train_it, facts, wall_s: float, wait: bool = False) -> None:
  """A checkpoint of the state and the data position, unless a parameter is not finite."""
  if not _all_finite(state["params"]):
    logging.warning("not saving step %d: non-finite parameters", step)
    return
  meta = {"step": step, "wall_s": wall_s, "tokens": step * facts.tokens_per_step}
  ckpt.save(step, state, train_it.get_state(), meta, wait=wait)


class _Preemption:
  """SIGTERM sets a flag; the loop checkpoints at the next step boundary and exits.

  With several processes, the signal reaches each at its own moment, so `stop()` agrees
  across processes (an allgather of the flags at every step): all stop at the same step,
  or one would enter the checkpoint's collectives while the others train on.
  """

  def __init__(self):
    self.requested = False
    self._previous = None

  def stop(self) -> bool:
    if jax.process_count() == 1:
      return self.requested
    flags = multihost_utils.process_allgather(np.array([self.requested], np.int32))
    return bool(np.any(flags))

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: leave signals alone
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _all_finite(tree) -> bool:
  return bool(jax.jit(lambda t: jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(t)])))(tree))
