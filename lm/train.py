"""The training loop: validate -> mesh -> data -> state (fresh or restored) -> steps -> summary.

    train(cfg, workdir) -> TrainResult(summary, state, model, tokenizer)
    (the summary is one row of the results schema, also written to WORKDIR/summary.json)

Statuses: finished; diverged (a non-finite loss or gradient: the run stops, the last
checkpoint, written only after its parameters were checked finite, is kept); preempted
(SIGTERM: a checkpoint at the step reached, then a clean exit; the same command resumes);
failed (an exception: recorded, then re-raised).
"""

from __future__ import annotations

import itertools
import math
import os
import signal
import time
from typing import NamedTuple

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from lm import checkpoint as checkpoint_lib
from lm import config as config_lib
from lm import data as data_lib
from lm import flops as flops_lib
from lm import loading
from lm import metrics as metrics_lib
from lm import optim
from lm import sharding
from lm import sft as sft_lib
from lm import steps as steps_lib
from lm.data import sft as sft_data
from lm.model import ModelConfig, Transformer


def validate_train(t) -> None:
  for field in ("steps", "batch_size", "eval_every", "eval_steps", "checkpoint_every", "keep_checkpoints",
                "log_every"):
    if int(t[field]) < 1:
      raise config_lib.ConfigError(f"train.{field}={t[field]} must be a positive integer.")
  if t.batch_size % jax.process_count():
    raise config_lib.ConfigError(f"train.batch_size={t.batch_size} does not divide over {jax.process_count()} "
                                 f"processes; use a multiple of {jax.process_count()}.")


def validate_all(cfg) -> None:
  """Every check that needs no data and no compilation, before any work is done."""
  config_lib.validate(cfg, n_devices=jax.device_count())
  config_lib.validate_data(cfg.data)
  validate_train(cfg.train)
  optim.validate(cfg.optim, cfg.train.steps)
  accum = cfg.optim.grad_accum_steps
  rows = cfg.train.batch_size // accum
  if cfg.train.batch_size % accum:
    raise config_lib.ConfigError(f"train.batch_size={cfg.train.batch_size} is not a multiple of "
                                 f"optim.grad_accum_steps={accum}.")
  data, fsdp, _ = config_lib.mesh_shape(cfg.mesh, jax.device_count())
  if rows % (data * fsdp):
    raise config_lib.ConfigError(
        f"each micro-batch of {rows} rows (train.batch_size / optim.grad_accum_steps) must divide over the "
        f"{data * fsdp} data-parallel devices; change the batch size or the accumulation steps.")


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
    from jax.experimental import multihost_utils
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


def _host(metrics: dict) -> dict:
  return {k: float(v) for k, v in jax.device_get(metrics).items()}


def train(cfg, workdir: str) -> "TrainResult":
  validate_all(cfg)
  os.makedirs(workdir, exist_ok=True)
  t = cfg.train
  mesh, rules = sharding.make_mesh(cfg.mesh), sharding.rules(cfg.mesh)
  tokenizer = data_lib.build_tokenizer(cfg.data)
  model_cfg = ModelConfig.from_config(cfg.model, tokenizer.vocab_size)
  model = Transformer(model_cfg)
  optimizer, lr_schedule = optim.make_optimizer(cfg.optim, t.steps)
  spec = steps_lib.StateSpec(model, optimizer, mesh, rules, cfg.data.seq_len)
  counts = flops_lib.param_counts(model_cfg)
  tokens_per_step = t.batch_size * cfg.data.seq_len
  per_token = {"flops_6n": flops_lib.flops_6n(model_cfg), "flops_exact": flops_lib.flops_exact(model_cfg, cfg.data.seq_len)}
  if jax.process_index() == 0:
    checkpoint_lib.write_config(cfg, workdir, vocab_size=tokenizer.vocab_size, params_total=counts.total,
                                params_nonembedding=counts.nonembedding, tokens_per_step=tokens_per_step,
                                **per_token)
  logging.info("model: %s parameters (%s non-embedding); mesh %s", f"{counts.total:,}",
               f"{counts.nonembedding:,}", sharding.describe(mesh))

  ckpt = checkpoint_lib.Checkpointer(workdir, t.keep_checkpoints)
  sft = cfg.data.get("format", "text") == "sft"  # supervised fine-tuning: lm/data/sft.py batches, loss_mask
  data_src = sft_data if sft else data_lib
  train_it = data_src.train_iterator(cfg.data, tokenizer, t.batch_size, t.seed)
  restored = ckpt.restore_latest(checkpoint_lib.abstract_with_shardings(spec.abstract, spec.shardings))
  if restored is not None:
    start, state, data_state, meta = restored
    train_it.set_state(data_state)
    wall_before = float(meta.get("wall_s", 0.0))
    logging.info("resumed from step %d", start)
    print(f"Resumed from the checkpoint at step {start} in {workdir}.", flush=True)
  else:
    start, wall_before = 0, 0.0
    params = None
    if t.init_from:
      abstract = checkpoint_lib.abstract_with_shardings(spec.abstract["params"], spec.shardings["params"])
      params, from_step = loading.init_params_from(t.init_from, abstract)  # lm workdir or HF directory
      print(f"Initialised parameters from {t.init_from} (step {from_step}).", flush=True)
    state = spec.init(t.seed, params)

  extra_keys = steps_lib.OPTIONAL_KEYS if sft else ()
  eval_keys = steps_lib.EVAL_KEYS + extra_keys
  b_shard = steps_lib.batch_shardings(mesh, rules, steps_lib.TRAIN_KEYS + extra_keys)
  e_shard = steps_lib.batch_shardings(mesh, rules, eval_keys)
  eval_batches = [sharding.shard_batch({k: b[k] for k in eval_keys}, mesh, rules)
                  for b in itertools.islice(data_src.eval_iterator(cfg.data, tokenizer, t.batch_size), t.eval_steps)]
  sft_pairs = sft_data.read_examples(cfg.data, "eval") if sft else None
  train_step = spec.jit_train_step(
      steps_lib.make_train_step(model, optimizer, lr_schedule, cfg.train.z_loss, cfg.optim.grad_accum_steps), b_shard)
  eval_step = spec.jit_eval_step(steps_lib.make_eval_step(model), e_shard)
  measured_peak, spec_peak = flops_lib.peak_flops(cfg.model.dtype)  # cached per device kind + dtype
  peak = measured_peak * flops_lib.peak_units(jax.devices())  # FLOP/s of all the devices used

  writer = metrics_lib.MetricWriter(workdir, resume_step=start, tensorboard=cfg.logging.tensorboard)
  progress = metrics_lib.Progress(t.steps, start, enabled=cfg.logging.progress)
  throughput = metrics_lib.Throughput()
  run_throughput = metrics_lib.Throughput()
  t0 = time.perf_counter()
  status, last, last_eval, recent_losses = "finished", {}, {}, []
  step = start

  def evaluate(params) -> dict:
    sums = None
    with steps_lib.in_context(mesh, rules):
      for batch in eval_batches:
        out = eval_step(params, batch)
        sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    metrics = steps_lib.eval_metrics(jax.device_get(sums))
    if sft:  # eval_loss is the completion loss; add exact match by greedy generation
      metrics.update(sft_lib.train_metrics(model, params, tokenizer, sft_pairs, cfg.data, mesh, rules))
    return metrics

  def save(state, step, wait=False):
    if not _all_finite(state["params"]):
      logging.warning("not saving step %d: non-finite parameters", step)
      return False
    meta = {"step": step, "wall_s": wall_before + time.perf_counter() - t0, "tokens": step * tokens_per_step}
    ckpt.save(step, state, train_it.get_state(), meta, wait=wait)
    return True

  pending = None  # the previous step's device metrics: read one step late, so the host never stalls the device

  def settle(pending) -> bool:
    """Log the previous step's metrics; False if they are not finite (divergence)."""
    nonlocal last
    s, dev_metrics = pending
    m = _host(dev_metrics)
    if not (math.isfinite(m["train_loss"]) and math.isfinite(m["grad_norm"])):
      progress.write(f"step {s}: train_loss={m['train_loss']} grad_norm={m['grad_norm']}: diverged; "
                     f"stopping (the last checkpoint is kept).")
      return False
    if s > start + 1:  # steps after the first (compiling) one, counted as they complete
      throughput.add(tokens_per_step)
      run_throughput.add(tokens_per_step)
    recent_losses.append(m["train_loss"])
    del recent_losses[:-t.log_every]
    if s % t.log_every == 0 or s == t.steps:
      m["tokens"] = s * tokens_per_step
      m["tokens_per_s"] = throughput.rate()
      if peak:
        m["mfu"] = m["tokens_per_s"] * per_token["flops_exact"] / peak
      throughput.reset()
      writer.write(s, m)
      last = m
      progress.update(s, {**m, **last_eval})
    return True

  try:
    with _Preemption() as preemption, steps_lib.in_context(mesh, rules):
      for step in range(start, t.steps):
        if preemption.stop():
          status = "preempted"
          break
        batch = sharding.shard_batch({k: v for k, v in next(train_it).items() if k in b_shard}, mesh, rules)
        state, dev_metrics = train_step(state, batch)
        if step == start:  # the first step includes compilation: keep it out of tokens/s
          jax.block_until_ready(dev_metrics)
          throughput.reset(); run_throughput.reset()
        if pending is not None and not settle(pending):
          status = "diverged"
          break
        pending = (step + 1, dev_metrics)
        done = step + 1
        if done % t.eval_every == 0 or done == t.steps or done % t.checkpoint_every == 0:
          if not settle(pending):
            status, pending = "diverged", None
            break
          pending = None
          throughput.pause(); run_throughput.pause()
          if done % t.eval_every == 0 or done == t.steps:
            last_eval = evaluate(state["params"])
            writer.write(done, last_eval)
            progress.update(done, {**last, **last_eval})
          if done % t.checkpoint_every == 0 or done == t.steps:
            save(state, done)
          throughput.resume(); run_throughput.resume()
      else:
        step = t.steps
      if pending is not None and status in ("finished", "preempted"):
        if not settle(pending):
          status = "diverged"
      if status == "preempted":
        save(state, step, wait=True)
        progress.write(f"SIGTERM: saved a checkpoint at step {step}; rerun the same command to resume.")
  except BaseException as e:
    status = "failed"
    ckpt.close()
    progress.close()
    _summary(cfg, workdir, model_cfg, counts, per_token, status, step, tokens_per_step, last, last_eval,
             recent_losses, wall_before + time.perf_counter() - t0, run_throughput, peak, spec_peak, error=repr(e))
    writer.close()
    raise
  ckpt.close()
  progress.close()
  writer.close()
  if status == "finished" and not last_eval:
    last_eval = evaluate(state["params"])
  completed = step if status != "finished" else t.steps
  summary = _summary(cfg, workdir, model_cfg, counts, per_token, status, completed, tokens_per_step, last,
                     last_eval, recent_losses, wall_before + time.perf_counter() - t0, run_throughput, peak, spec_peak,
                     baseline=data_lib.unigram_baseline(cfg.data, tokenizer) if status == "finished" and not sft else None)
  return TrainResult(summary, state, model, tokenizer)


class TrainResult(NamedTuple):
  summary: dict
  state: dict
  model: Transformer
  tokenizer: data_lib.Tokenizer


def _summary(cfg, workdir, model_cfg, counts, per_token, status, steps_done, tokens_per_step, last, last_eval,
             recent_losses, wall_s, run_throughput, peak, spec_peak, error=None, baseline=None) -> dict:
  tokens = steps_done * tokens_per_step
  tps = run_throughput.rate() if run_throughput.tokens else None
  row = {
      "run_id": os.path.basename(os.path.abspath(workdir)), "experiment": cfg.experiment, "status": status,
      "n_layers": model_cfg.n_layers, "d_model": model_cfg.d_model, "n_heads": model_cfg.n_heads,
      "n_kv_heads": model_cfg.n_kv_heads, "d_ff": model_cfg.d_ff, "vocab_size": model_cfg.vocab_size,
      "seq_len": cfg.data.seq_len, "batch_size": cfg.train.batch_size, "steps": steps_done, "lr": cfg.optim.lr,
      "params_total": counts.total, "params_nonembedding": counts.nonembedding, "tokens": tokens,
      "flops_6n": per_token["flops_6n"] * tokens, "flops_exact": per_token["flops_exact"] * tokens,
      "train_loss": float(np.mean(recent_losses)) if recent_losses else None,
      "eval_loss": last_eval.get("eval_loss"), "eval_bpb": last_eval.get("eval_bpb"), "wall_s": wall_s,
      "tokens_per_s": tps, "mfu": tps * per_token["flops_exact"] / peak if (tps and peak) else None,
      "device_kind": jax.devices()[0].device_kind, "device_count": jax.device_count(),
      "jax_version": jax.__version__, "git_commit": metrics_lib.git_commit(),
      "head_dim": model_cfg.head_dim, "positions": model_cfg.positions, "mlp": model_cfg.mlp,
      "dtype": cfg.model.dtype,
      "tokenizer": cfg.data.tokenizer, "dataset": cfg.data.dataset, "schedule": cfg.optim.schedule,
      "params_embedding": counts.embedding, "peak_flops_measured": peak,
      "peak_flops_spec": spec_peak * len(jax.devices()) if spec_peak else None,
      "mfu_spec": tps * per_token["flops_exact"] / (spec_peak * len(jax.devices())) if (tps and spec_peak) else None,
  }
  if "eval_exact_match" in last_eval:  # supervised fine-tuning (lm/sft.py)
    row["eval_exact_match"] = last_eval["eval_exact_match"]
  if baseline:
    row["unigram_loss"] = baseline["nats_per_token"]
    row["unigram_bpb"] = baseline["bits_per_byte"]
  if error:
    row["error"] = error
  return metrics_lib.write_summary(workdir, row)
