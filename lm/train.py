"""The training loop: set-up, then one loop body (step, log, evaluate, checkpoint, stop), then
one teardown that writes the summary.

    train(cfg, workdir) -> TrainResult(summary, state, model, tokenizer)
    (the summary is one row of the results schema, also written to WORKDIR/summary.json)

Statuses: finished; diverged (a non-finite loss or gradient, or a loss above
train.divergence_factor x ln(vocab_size): the run stops, the last checkpoint, written only
after its parameters were checked finite, is kept); preempted (SIGTERM, or a first Ctrl-C: a
checkpoint at the step reached, then a clean exit; the same command resumes; a second Ctrl-C
stops at once); failed (an exception: recorded, then re-raised). lm/main.py gives each its
exit status.

A workdir has one writer (lm/workdir.py: a second lm.main is refused). A relaunch resumes
from the newest intact checkpoint (lm/checkpoint.py) after checking that the config matches
the saved one; config.json is written only once the resume is accepted. A relaunch of a
finished run changes nothing and says so.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import time
from typing import NamedTuple

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

from lm import branching
from lm import checkpoint as checkpoint_lib
from lm import data as data_lib
from lm import evaluation
from lm import loading
from lm import metrics as metrics_lib
from lm import optim
from lm import schema
from lm import sharding
from lm import steps as steps_lib
from lm import tasks
from lm import workdir as workdir_lib
from lm.errors import WorkdirError
from lm.model import ModelConfig, Transformer


class TrainResult(NamedTuple):
  summary: dict
  state: dict
  model: Transformer
  tokenizer: data_lib.Tokenizer
  already_finished: bool = False  # a relaunch of a finished run: nothing was trained or written


def train(cfg, workdir: str) -> TrainResult:
  schema.validate(cfg, n_devices=jax.device_count(), processes=jax.process_count())
  workdir = workdir_lib.prepare(workdir)
  with workdir_lib.Lock(workdir):  # one writer per workdir: a second lm.main is refused here
    return _train(cfg, workdir)


def _train(cfg, workdir: str) -> TrainResult:
  # ---- set-up: every check first, then the model, data, state and compiled steps ----
  t = cfg.train
  changes = workdir_lib.check_resume(cfg, workdir)  # refuses a config that does not match the run
  if t.branch_from and not workdir_lib.checkpoint_steps(workdir):  # a branch's first start (lm/branching.py)
    branching.check(cfg)
  mesh, rules = sharding.make_mesh(cfg.mesh), sharding.rules(cfg.mesh)
  tokenizer = data_lib.build_tokenizer(cfg.data)
  model = Transformer(ModelConfig.from_config(cfg.model, tokenizer.vocab_size))
  optimizer, lr_schedule = optim.make_optimizer(cfg.optim, t.steps, model.cfg)
  spec = steps_lib.StateSpec(model, optimizer, mesh, rules)
  ckpt = checkpoint_lib.Checkpointer(workdir, t.keep_checkpoints, preserve=t.checkpoint_steps)
  train_it = data_lib.train_iterator(cfg.data, tokenizer, t.batch_size, t.seed)
  start, state, resumed = restore_or_init(cfg, spec, ckpt, train_it, workdir, changes)
  facts = metrics_lib.RunFacts.of(cfg, workdir, model.cfg, resumed.get("peak"))  # the MFU peak: measured now, or kept
  logging.info("model: %s parameters (%s non-embedding); mesh %s", f"{facts.counts.total:,}",
               f"{facts.counts.nonembedding:,}", sharding.describe(mesh))
  done = metrics_lib.read_summary(workdir)
  if start == t.steps and done and done.get("status") == "finished" and done.get("steps") == t.steps:
    ckpt.close()
    print(f"{workdir} already finished its {t.steps} steps: nothing to do, nothing changed (summary.json is "
          f"from that run). To train longer, raise --config.train.steps.", flush=True)
    return TrainResult(done, state, model, tokenizer, already_finished=True)
  if jax.process_index() == 0:  # only once the resume is accepted: a refused one leaves the old config
    checkpoint_lib.write_config(cfg, workdir, **facts.derived())
  evaluate = evaluation.Evaluation(cfg, spec, tokenizer,  # held-out text, or SFT pairs (data.format)
                                 tasks.Tasks(cfg, spec, tokenizer))  # and train.eval_tasks
  batch_keys = steps_lib.TRAIN_KEYS + (steps_lib.OPTIONAL_KEYS if cfg.data.format == "sft" else ())
  train_step = spec.jit_train_step(
      steps_lib.make_train_step(model, optimizer, lr_schedule, t.z_loss, cfg.optim.grad_accum_steps),
      steps_lib.batch_shardings(mesh, rules, batch_keys))
  log = metrics_lib.TrainLog(workdir, cfg, start, facts, resumed)
  wall_before = float(resumed.get("wall_s", 0.0))
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
        saving = step % t.checkpoint_every == 0 or step == t.steps or step in t.checkpoint_steps
        if not log.step(step, device_metrics, settle=evaluating or saving):  # read one step late
          status = "diverged"
          break
        with log.paused():
          if evaluating:
            log.eval(step, evaluate(state["params"]))
          if saving:
            save(ckpt, step, state, train_it, facts, wall_s(), log)
      if status != "diverged" and not log.settle():
        status = "diverged"
      if status == "preempted":
        save(ckpt, step, state, train_it, facts, wall_s(), log, wait=True)
        log.write(f"{preemption.reason}: saved a checkpoint at step {step}; rerun the same command to resume.")
  except BaseException as e:  # recorded in summary.json below, then re-raised
    status, error = "failed", e

  # ---- teardown: one path for every status ----
  for close in (ckpt.close, log.close):  # close waits for a pending save, which may fail (a full disk)
    try:
      close()
    except Exception as e:  # noqa: BLE001 - the run failed; the summary below says so
      logging.warning("while closing: %r", e)
      status, error = "failed", error or e
  last_eval, baseline = log.last_eval, None
  if status == "finished":
    if not last_eval:
      last_eval = evaluate(state["params"])
    if not (math.isfinite(last_eval.get("eval_loss", math.nan)) and checkpoint_lib.all_finite(state["params"])):
      log.write(f"step {step}: the parameters or the eval loss ({last_eval.get('eval_loss')}) are not finite: "
                "diverged.")
      status = "diverged"
    elif cfg.data.format == "text":
      baseline = data_lib.unigram_baseline(cfg.data, tokenizer)
  row = metrics_lib.summary_row(facts, status, step, log.train_loss(), last_eval,
                                wall_s(), log.meter.run_rate(),
                                error=repr(error) if error else None, baseline=baseline)
  summary = row  # what the trackers get if summary.json cannot be written (a full disk)
  try:
    summary = metrics_lib.write_summary(workdir, row)
  except OSError as e:  # a full disk: keep the run's own error, if it had one
    if error is None:
      raise
    logging.warning("could not record the failure in summary.json (%s)", e)
    print(f"WARNING: could not write {workdir}/summary.json ({e}); the run failed with: {error!r}", flush=True)
  log.close_trackers(summary)  # after the summary: W&B keeps it as the run summary
  if error is not None:
    raise error
  return TrainResult(summary, state, model, tokenizer)


def restore_or_init(cfg, spec: steps_lib.StateSpec, ckpt, train_it, workdir: str, changes=()):
  """(start step, state, the restored checkpoint's meta or {}): the newest intact checkpoint of
  the workdir, or the stable run's at train.branch_step (a branch's first start), or a fresh
  state (with train.init_from's parameters, if set)."""
  t = cfg.train
  restored = ckpt.restore_latest(checkpoint_lib.abstract_with_shardings(spec.abstract, spec.shardings))
  if restored is not None:
    start, state, data_state, meta = restored
    if start > t.steps:
      raise WorkdirError(f"{workdir} holds a checkpoint at step {start}, beyond train.steps={t.steps}; set "
                         f"--config.train.steps={start} or more to resume it, or use a new --workdir.")
    train_it.set_state(data_state)
    logging.info("resumed from step %d", start)
    print(f"Resumed from the checkpoint at step {start} in {workdir}.", flush=True)
    for field, old, new in changes:
      note = (optim.schedule_change(cfg.optim, int(old), int(new), start) if field == "train.steps"
              else f"{field} {old!r} -> {new!r}.")
      print(f"Changed on resume: {note}", flush=True)
    return start, state, meta
  if t.branch_from:
    start, state, data_state, meta = branching.restore(cfg, checkpoint_lib.abstract_with_shardings(
        spec.abstract, spec.shardings), workdir)
    train_it.set_state(data_state)
    return start, state, meta
  params = None
  if t.init_from:
    abstract = checkpoint_lib.abstract_with_shardings(spec.abstract["params"], spec.shardings["params"])
    params, from_step = loading.init_params_from(t.init_from, abstract)  # lm workdir or HF directory
    print(f"Initialised parameters from {t.init_from} (step {from_step}).", flush=True)
  return 0, spec.init(t.seed, params), {}


def save(ckpt, step: int, state, train_it, facts, wall_s: float, log, wait: bool = False) -> None:
  """A checkpoint of the state, the data position and the log's running totals, unless a
  parameter is not finite."""
  if not checkpoint_lib.all_finite(state["params"]):
    logging.warning("not saving step %d: non-finite parameters", step)
    return
  meta = {"step": step, "wall_s": wall_s, "tokens": step * facts.tokens_per_step, **log.resume_state(),
          "peak": dataclasses.asdict(facts.peak_run) if facts.peak_run else None}
  ckpt.save(step, state, train_it.get_state(), meta, wait=wait)


class _Preemption:
  """SIGTERM, or a first Ctrl-C (SIGINT), sets a flag; the loop checkpoints at the next step
  boundary and exits. A second Ctrl-C raises KeyboardInterrupt at once (no checkpoint).

  With several processes, the signal reaches each at its own moment, so `stop()` agrees
  across processes (an allgather of the flags at every step): all stop at the same step,
  or one would enter the checkpoint's collectives while the others train on.
  """
  SIGNALS = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "Ctrl-C"}

  def __init__(self):
    self.requested = False
    self.reason = "SIGTERM"
    self._previous = {}

  def stop(self) -> bool:
    if jax.process_count() == 1:
      return self.requested
    flags = multihost_utils.process_allgather(np.array([self.requested], np.int32))
    return bool(np.any(flags))

  def __enter__(self):
    try:
      self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
    except ValueError:  # not the main thread: leave signals alone
      self._previous = {}
    return self

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT and self.requested:
      raise KeyboardInterrupt("a second Ctrl-C")
    if not self.requested:
      self.requested, self.reason = True, self.SIGNALS[signum]
      if signum == signal.SIGINT:
        print("\nCtrl-C: saving a checkpoint at the end of this step, then stopping (Ctrl-C again stops at once).",
              flush=True)

  def __exit__(self, *exc):
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)
