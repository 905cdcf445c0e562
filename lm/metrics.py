"""What a run leaves behind: metrics.jsonl, TensorBoard events, a progress bar, summary.json.

    facts = RunFacts.of(cfg, workdir, model_cfg)     # what the run is: sizes, FLOPs per token, peaks
    log = TrainLog(workdir, cfg, start_step, facts)  # what the loop reports, step by step
    row = summary_row(facts, status, ...)            # one row of SCHEMA, written to summary.json

Only process 0 writes (every process computes the same global metrics). On resume,
metrics logged after the restored checkpoint are dropped from metrics.jsonl and purged
from TensorBoard, since the resumed run logs those steps again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import subprocess
import time
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from lm import flops as flops_lib

SCHEMA = ("run_id", "experiment", "status", "n_layers", "d_model", "n_heads", "n_kv_heads", "d_ff",
          "vocab_size", "seq_len", "batch_size", "steps", "lr", "params_total", "params_nonembedding",
          "tokens", "flops_6n", "flops_exact", "train_loss", "eval_loss", "eval_bpb", "wall_s",
          "tokens_per_s", "mfu", "device_kind", "device_count", "jax_version", "git_commit")


def _plain(value):
  """JSON-friendly scalars: numpy / jax scalars to Python, NaN/Inf to None (valid JSON)."""
  if isinstance(value, (np.generic, np.ndarray, jax.Array)):
    value = np.asarray(value).item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def read_jsonl(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


class MetricWriter:
  """metrics.jsonl (one object a line: step + metrics) and TensorBoard scalars."""

  def __init__(self, workdir: str, resume_step: int = 0, tensorboard: bool = True):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if not self.enabled:
      return
    kept = [r for r in read_jsonl(self.path) if r.get("step", 0) <= resume_step]
    with open(self.path, "w") as f:  # drop rows the resumed run will write again
      f.writelines(json.dumps(r) + "\n" for r in kept)
    if tensorboard:
      from tensorboardX import SummaryWriter  # local: only when logging.tensorboard is on
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"),
                               purge_step=resume_step + 1 if resume_step else None)

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    if self._tb is not None:
      for k, v in row.items():
        if k != "step" and isinstance(v, (int, float)):
          self._tb.add_scalar(k, v, step)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


class Progress:
  """A tqdm bar over training steps showing loss and tokens/s (process 0 only)."""

  def __init__(self, total: int, initial: int, enabled: bool = True):
    self.bar = None
    if enabled and jax.process_index() == 0:
      self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, smoothing=0.1)

  def update(self, step: int, metrics: dict[str, Any]) -> None:
    if self.bar is None:
      return
    self.bar.n = step
    shown = {"loss": metrics.get("train_loss"), "eval": metrics.get("eval_loss"),
             "tok/s": metrics.get("tokens_per_s")}
    self.bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items() if v is not None}, refresh=False)
    self.bar.refresh()

  def write(self, text: str) -> None:
    (self.bar.write if self.bar is not None else print)(text)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()


def git_commit() -> str | None:
  try:
    out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.abspath(__file__)), timeout=5)
    return out.stdout.strip() or None
  except (OSError, subprocess.SubprocessError):
    return None


def write_summary(workdir: str, row: dict[str, Any]) -> dict:
  """summary.json: one row of the results schema (docs/conventions.md#results-schema), plus extras."""
  row = {k: _plain(v) for k, v in row.items()}
  ordered = {k: row.get(k) for k in SCHEMA}
  ordered.update({k: v for k, v in row.items() if k not in ordered})
  if jax.process_index() == 0:
    tmp = os.path.join(workdir, "summary.json.tmp")
    with open(tmp, "w") as f:
      json.dump(ordered, f, indent=2)
    os.replace(tmp, os.path.join(workdir, "summary.json"))  # never a half-written summary
  return ordered


class Meter:
  """Tokens per second of training: over the steps since the last log row (`interval_rate`),
  and over the whole run (`run_rate`). Time inside `paused()` (evaluation, checkpoints) and
  before `restart()` (the first, compiling, step) is left out of both."""

  def __init__(self):
    self.restart()

  def restart(self):
    now = time.perf_counter()
    self._run_t0 = self._interval_t0 = now
    self.run_tokens = self.interval_tokens = 0
    self._run_paused = self._interval_paused = 0.0

  def add(self, tokens: int):
    self.run_tokens += tokens
    self.interval_tokens += tokens

  @contextlib.contextmanager
  def paused(self):
    t0 = time.perf_counter()
    try:
      yield
    finally:
      dt = time.perf_counter() - t0
      self._run_paused += dt
      self._interval_paused += dt

  def interval_rate(self) -> float:
    """tokens/s since the last call (or restart), then starts a new interval."""
    now = time.perf_counter()
    dt = now - self._interval_t0 - self._interval_paused
    rate = self.interval_tokens / dt if dt > 0 else float("nan")
    self._interval_t0, self.interval_tokens, self._interval_paused = now, 0, 0.0
    return rate

  def run_rate(self) -> float | None:
    dt = time.perf_counter() - self._run_t0 - self._run_paused
    return self.run_tokens / dt if self.run_tokens and dt > 0 else None


@dataclasses.dataclass(frozen=True)
class RunFacts:
  """What a run is, fixed at set-up: its config, sizes, FLOPs per token and the device peaks."""
  cfg: Any
  workdir: str
  model_cfg: Any
  counts: flops_lib.ParamCounts
  flops_per_token: dict            # {"flops_6n": ..., "flops_exact": ...} per trained token
  tokens_per_step: int
  peak_measured: float | None      # FLOP/s of all the devices used (a matmul timed on them)
  peak_spec: float | None          # FLOP/s of all the devices used, from the spec sheet

  @classmethod
  def of(cls, cfg, workdir: str, model_cfg) -> "RunFacts":
    seq_len = cfg.data.seq_len
    measured, spec = flops_lib.peak_flops(cfg.model.dtype)  # per device, cached per device kind + dtype
    return cls(cfg, workdir, model_cfg, flops_lib.param_counts(model_cfg),
               {"flops_6n": flops_lib.flops_6n(model_cfg), "flops_exact": flops_lib.flops_exact(model_cfg, seq_len)},
               cfg.train.batch_size * seq_len, measured * flops_lib.peak_units(jax.devices()) if measured else None,
               spec * len(jax.devices()) if spec else None)

  def derived(self) -> dict:
    """The sizes config.json records beside the config."""
    return dict(vocab_size=self.model_cfg.vocab_size, params_total=self.counts.total,
                params_nonembedding=self.counts.nonembedding, tokens_per_step=self.tokens_per_step,
                **self.flops_per_token)

  def mfu(self, tokens_per_s: float | None, peak: float | None = None) -> float | None:
    """flops_exact FLOP/s over the measured peak (or `peak`)."""
    peak = self.peak_measured if peak is None else peak
    return tokens_per_s * self.flops_per_token["flops_exact"] / peak if (tokens_per_s and peak) else None


def summary_row(f: RunFacts, status: str, steps_done: int, train_loss: float | None, last_eval: dict,
                wall_s: float, tokens_per_s: float | None, error: str | None = None,
                baseline: dict | None = None) -> dict:
  """One row of SCHEMA (plus extras) for a run that reached `steps_done` steps."""
  m, cfg = f.model_cfg, f.cfg
  tokens = steps_done * f.tokens_per_step
  row = {
      "run_id": os.path.basename(os.path.abspath(f.workdir)), "experiment": cfg.experiment, "status": status,
      "n_layers": m.n_layers, "d_model": m.d_model, "n_heads": m.n_heads, "n_kv_heads": m.n_kv_heads,
      "d_ff": m.d_ff, "vocab_size": m.vocab_size, "seq_len": cfg.data.seq_len, "batch_size": cfg.train.batch_size,
      "steps": steps_done, "lr": cfg.optim.lr, "params_total": f.counts.total,
      "params_nonembedding": f.counts.nonembedding, "tokens": tokens,
      "flops_6n": f.flops_per_token["flops_6n"] * tokens, "flops_exact": f.flops_per_token["flops_exact"] * tokens,
      "train_loss": train_loss, "eval_loss": last_eval.get("eval_loss"), "eval_bpb": last_eval.get("eval_bpb"),
      "wall_s": wall_s, "tokens_per_s": tokens_per_s, "mfu": f.mfu(tokens_per_s),
      "device_kind": jax.devices()[0].device_kind, "device_count": jax.device_count(),
      "jax_version": jax.__version__, "git_commit": git_commit(),
      "head_dim": m.head_dim, "positions": m.positions, "mlp": m.mlp, "dtype": cfg.model.dtype,
      "tokenizer": cfg.data.tokenizer, "dataset": cfg.data.dataset, "schedule": cfg.optim.schedule,
      "params_embedding": f.counts.embedding, "peak_flops_measured": f.peak_measured,
      "peak_flops_spec": f.peak_spec, "mfu_spec": f.mfu(tokens_per_s, f.peak_spec) if f.peak_spec else None,
      # The hyperparameters a recipe (lm/recipe.py) or the command line set, as used.
      "recipe": cfg.recipe or None, "optimizer": cfg.optim.name, "warmup_steps": cfg.optim.warmup_steps,
      "b2": cfg.optim.b2, "weight_decay": cfg.optim.weight_decay, "parameterization": m.parameterization,
      "base_width": m.base_width, "base_depth": m.base_depth,
  }
  if cfg.optim.name == "muon":
    row["muon_lr"] = cfg.optim.muon_lr
  if "eval_exact_match" in last_eval:  # supervised fine-tuning (lm/evaluation.py)
    row["eval_exact_match"] = last_eval["eval_exact_match"]
  if baseline:
    row["unigram_loss"] = baseline["nats_per_token"]
    row["unigram_bpb"] = baseline["bits_per_byte"]
  if error:
    row["error"] = error
  return row


class TrainLog:
  """Everything the training loop reports, step by step.

  Device metrics are read one step late: `step(s, metrics)` reads the previous step's
  (finished by now, since step s is already queued), so the host never waits for the
  device. At an evaluation or checkpoint boundary (`settle=True`) the current step's
  metrics are read at once too, so a divergence is caught before anything is saved.
  Rows go to metrics.jsonl and TensorBoard every train.log_every steps and at the end.
  """

  def __init__(self, workdir: str, cfg, start: int, facts: RunFacts):
    t = cfg.train
    self.start, self.total, self.log_every, self.facts = start, t.steps, t.log_every, facts
    self.writer = MetricWriter(workdir, resume_step=start, tensorboard=cfg.logging.tensorboard)
    self.progress = Progress(t.steps, start, enabled=cfg.logging.progress)
    self.meter = Meter()
    self.pending = None             # (step, device metrics) not read yet
    self.recent_losses: list[float] = []
    self.last_row: dict = {}
    self.last_eval: dict = {}

  def step(self, step: int, device_metrics, settle: bool = False) -> bool:
    """Queue this step's metrics, read the previous ones; False once a loss is not finite."""
    if step == self.start + 1:  # the first step includes compilation: keep it out of tokens/s
      jax.block_until_ready(device_metrics)
      self.meter.restart()
    ok = self.settle()
    self.pending = (step, device_metrics)
    return ok and (self.settle() if settle else True)

  def settle(self) -> bool:
    """Read the queued metrics, if any; False if they are not finite (divergence)."""
    if self.pending is None:
      return True
    (s, device_metrics), self.pending = self.pending, None
    m = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
    if not (math.isfinite(m["train_loss"]) and math.isfinite(m["grad_norm"])):
      self.progress.write(f"step {s}: train_loss={m['train_loss']} grad_norm={m['grad_norm']}: diverged; "
                          f"stopping (the last checkpoint is kept).")
      return False
    if s > self.start + 1:  # steps after the first (compiling) one, counted as they complete
      self.meter.add(self.facts.tokens_per_step)
    self.recent_losses = (self.recent_losses + [m["train_loss"]])[-self.log_every:]
    if s % self.log_every == 0 or s == self.total:
      m["tokens"] = s * self.facts.tokens_per_step
      m["tokens_per_s"] = self.meter.interval_rate()
      if self.facts.peak_measured:
        m["mfu"] = self.facts.mfu(m["tokens_per_s"])
      self.writer.write(s, m)
      self.last_row = m
      self.progress.update(s, {**m, **self.last_eval})
    return True

  def eval(self, step: int, metrics: dict) -> dict:
    self.last_eval = metrics
    self.writer.write(step, metrics)
    self.progress.update(step, {**self.last_row, **metrics})
    return metrics

  def paused(self):
    """A context in which time does not count towards tokens/s (evaluation, checkpoints)."""
    return self.meter.paused()

  def train_loss(self) -> float | None:
    """The mean of the last log_every training losses (what the summary reports)."""
    return float(np.mean(self.recent_losses)) if self.recent_losses else None

  def write(self, text: str) -> None:
    self.progress.write(text)

  def close(self) -> None:
    self.progress.close()
    self.writer.close()
