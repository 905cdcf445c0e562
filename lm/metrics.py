"""What a run leaves behind: metrics.jsonl, TensorBoard events, a progress bar, summary.json.

    facts = RunFacts.of(cfg, workdir, model_cfg, meta.get("peak"))  # sizes, FLOPs per token, peaks
    log = TrainLog(workdir, cfg, start_step, facts, resumed=meta)  # what the loop reports, step by step
    row = summary_row(facts, status, ...)            # one row of SCHEMA, written to summary.json

Only process 0 writes (every process computes the same global metrics). On resume,
metrics logged after the restored checkpoint are dropped from metrics.jsonl (the file is
rewritten whole: lm/workdir.py:atomic_write) and purged from TensorBoard, since the resumed
run logs those steps again. Otherwise metrics.jsonl is only appended to, and `read_jsonl`
drops a torn line (a kill or a full disk in the middle of a write) with a warning.

Divergence: a non-finite loss or gradient norm, or a training loss above
train.divergence_factor x ln(vocab_size) (a uniform guess's loss, which a fresh model starts
near; 0 turns the threshold off), stops the run as `diverged`.
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

from absl import logging
import jax
import numpy as np
from tqdm.auto import tqdm

from lm import flops as flops_lib
from lm.workdir import atomic_write
from lm import tracking

SCHEMA = ("run_id", "experiment", "status", "n_layers", "d_model", "n_heads", "n_kv_heads", "d_ff",
          "vocab_size", "seq_len", "batch_size", "steps", "lr", "params_total", "params_nonembedding",
          "tokens", "flops_6n", "flops_exact", "flops_executed", "train_loss", "eval_loss", "eval_bpb", "wall_s",
          "tokens_per_s", "mfu", "device_kind", "device_count", "jax_version", "git_commit")


def _plain(value):
  """JSON-friendly scalars: numpy / jax scalars to Python, NaN/Inf to None (valid JSON)."""
  if isinstance(value, (np.generic, np.ndarray, jax.Array)):
    value = np.asarray(value).item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def json_safe(obj):
  """A copy of obj (dicts, lists, scalars) that json.dumps(..., allow_nan=False) accepts:
  NaN and infinities become null, which is what every lm output file and --json line uses."""
  if isinstance(obj, dict):
    return {k: json_safe(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [json_safe(v) for v in obj]
  return _plain(obj)


def read_jsonl(path: str) -> list[dict]:
  """The rows of a JSONL file; a line that is not a JSON object (torn by a kill or a full disk)
  is dropped with a warning naming it."""
  if not os.path.exists(path):
    return []
  rows = []
  with open(path, encoding="utf-8", errors="replace") as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except ValueError:
        row = None
      if not isinstance(row, dict):
        logging.warning("%s, line %d: not a JSON object (a torn write?); dropped: %r", path, n, line[:80])
        continue
      rows.append(row)
  return rows


def read_summary(workdir: str) -> dict | None:
  """WORKDIR/summary.json, or None if there is none (or it cannot be read)."""
  try:
    with open(os.path.join(workdir, "summary.json")) as f:
      out = json.load(f)
  except (OSError, ValueError):
    return None
  return out if isinstance(out, dict) else None


class MetricWriter:
  """metrics.jsonl (one object a line: step + metrics) and TensorBoard scalars."""

  def __init__(self, workdir: str, resume_step: int = 0, tensorboard: bool = True):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if not self.enabled:
      return
    self._keep_until(resume_step)
    if tensorboard:
      from tensorboardX import SummaryWriter  # local: only when logging.tensorboard is on
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"),
                               purge_step=resume_step + 1 if resume_step else None)

  def _keep_until(self, step: int) -> None:
    """Drops the rows after `step` (the resumed run writes them again) and any torn line, by
    rewriting the file whole; a file that needs neither is left alone."""
    if not os.path.exists(self.path):
      return
    with open(self.path, "rb") as f:
      raw = f.read()
    rows = read_jsonl(self.path)
    kept = [r for r in rows if r.get("step", 0) <= step]
    lines = [line for line in raw.splitlines() if line.strip()]
    if len(kept) != len(lines) or (raw and not raw.endswith(b"\n")):
      atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in kept))

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
    atomic_write(os.path.join(workdir, "summary.json"), json.dumps(ordered, indent=2))  # never a torn one
  return ordered


class Meter:
  """Tokens per second of training: over the steps since the last log row (`interval_rate`),
  and over every step timed in this and earlier sessions of the run (`run_rate`; the totals
  travel in each checkpoint's meta). Time inside `paused()` (evaluation, checkpoints), before
  `restart()` (each session's first, compiling, step) and after the last step is left out."""

  def __init__(self, tokens_before: int = 0, seconds_before: float = 0.0):
    self.tokens_before, self.seconds_before = int(tokens_before), float(seconds_before)
    self.restart()

  def restart(self):
    now = time.perf_counter()
    self._run_t0 = self._interval_t0 = now
    self.run_tokens = self.interval_tokens = 0
    self._run_paused = self._interval_paused = 0.0
    self._run_s = 0.0  # this session's timed seconds, up to the last step added

  def add(self, tokens: int):
    self.run_tokens += tokens
    self.interval_tokens += tokens
    self._run_s = time.perf_counter() - self._run_t0 - self._run_paused

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

  def totals(self) -> tuple[int, float]:
    """(tokens, seconds) timed over the whole run so far."""
    return self.tokens_before + self.run_tokens, self.seconds_before + self._run_s

  def run_rate(self) -> float | None:
    tokens, seconds = self.totals()
    return tokens / seconds if tokens and seconds > 0 else None


@dataclasses.dataclass(frozen=True)
class RunFacts:
  """What a run is, fixed at set-up: its config, sizes, FLOPs per token and the device peaks."""
  cfg: Any
  workdir: str
  model_cfg: Any
  counts: flops_lib.ParamCounts
  flops_per_token: dict            # {"flops_6n", "flops_exact", "flops_executed"}: FLOPs per trained token
  tokens_per_step: int
  peak_measured: float | None      # FLOP/s of all the devices used (a matmul timed on them as the run starts)
  peak_spec: float | None          # FLOP/s of all the devices used, from the spec sheet
  peak_run: flops_lib.RunPeak | None = None  # that measurement: its load average, cores and share
  peak_units: int = 1              # device peaks in peak_measured (lm/flops.py:peak_units)

  @classmethod
  def of(cls, cfg, workdir: str, model_cfg, resumed_peak: dict | None = None) -> "RunFacts":
    """resumed_peak: the RunPeak a checkpoint's meta carries (`save` in lm/train.py). A resumed
    run keeps its first session's peak when it runs on the same device and cores, so its MFU
    and its cumulative tokens/s share one denominator; otherwise the peak is measured now, not
    read from a cache that may have been timed under another load (~1 s on CPU)."""
    seq_len = cfg.data.seq_len
    if resumed_peak and resumed_peak.get("key") == flops_lib.peak_key(cfg.model.dtype):
      run = flops_lib.RunPeak(**resumed_peak)
    else:
      run = flops_lib.measure_run_peak(cfg.model.dtype)
    spec = flops_lib.spec_peak_flops(jax.devices()[0].device_kind, cfg.model.dtype)
    units = flops_lib.peak_units(jax.devices())
    return cls(cfg, workdir, model_cfg, flops_lib.param_counts(model_cfg),
               {d: flops_lib.flops_per_token(model_cfg, seq_len, d) for d in flops_lib.FLOPS_DEFINITIONS},
               cfg.train.batch_size * seq_len, run.flops_per_s * units, spec * len(jax.devices()) if spec else None,
               run, units)

  def peak_row(self, tokens_per_s: float | None) -> dict:
    """summary.json's account of the peak: the load it was measured under, the cores and
    share of the host the run had, and the MFU against the cached quiet figure x that share."""
    r = self.peak_run
    if r is None:
      return {}
    quiet = r.cached_share * self.peak_units if r.cached_share else None
    return {"peak_load_avg": r.load_avg, "peak_measure_s": r.seconds, "cores": r.cores, "host_cores": r.host_cores,
            "core_share": r.share, "peak_flops_cached_share": quiet,
            "mfu_cached_share": self.mfu(tokens_per_s, quiet) if quiet else None}

  def derived(self) -> dict:
    """The sizes config.json records beside the config."""
    return dict(vocab_size=self.model_cfg.vocab_size, params_total=self.counts.total,
                params_nonembedding=self.counts.nonembedding, tokens_per_step=self.tokens_per_step,
                **self.flops_per_token)

  def mfu(self, tokens_per_s: float | None, peak: float | None = None) -> float | None:
    """Model FLOP/s (flops_executed: what runs, remat's recompute not counted) over the
    measured peak (or `peak`)."""
    peak = self.peak_measured if peak is None else peak
    return tokens_per_s * self.flops_per_token["flops_executed"] / peak if (tokens_per_s and peak) else None


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
      "flops_executed": f.flops_per_token["flops_executed"] * tokens,
      "train_loss": train_loss, "eval_loss": last_eval.get("eval_loss"), "eval_bpb": last_eval.get("eval_bpb"),
      "wall_s": wall_s, "tokens_per_s": tokens_per_s, "mfu": f.mfu(tokens_per_s),
      "device_kind": jax.devices()[0].device_kind, "device_count": jax.device_count(),
      "jax_version": jax.__version__, "git_commit": git_commit(),
      "head_dim": m.head_dim, "positions": m.positions, "mlp": m.mlp, "dtype": cfg.model.dtype,
      "tokenizer": cfg.data.tokenizer, "dataset": cfg.data.dataset, "schedule": cfg.optim.schedule,
      "params_embedding": f.counts.embedding, "peak_flops_measured": f.peak_measured,
      "peak_flops_spec": f.peak_spec, "mfu_spec": f.mfu(tokens_per_s, f.peak_spec) if f.peak_spec else None,
      **f.peak_row(tokens_per_s),
      # The hyperparameters a recipe (lm/recipe.py) or the command line set, as used.
      "recipe": cfg.recipe or None, "optimizer": cfg.optim.name, "warmup_steps": cfg.optim.warmup_steps,
      "b2": cfg.optim.b2, "weight_decay": cfg.optim.weight_decay, "parameterization": m.parameterization,
      "base_width": m.base_width, "base_depth": m.base_depth,
      "seed": cfg.train.seed,  # init and data order; seed replicates differ only here (lm/scaling_table.py)
  }
  if cfg.optim.name == "muon":
    row["muon_lr"] = cfg.optim.muon_lr
  if "eval_exact_match" in last_eval:  # supervised fine-tuning (lm/evaluation.py)
    row["eval_exact_match"] = last_eval["eval_exact_match"]
  row.update({k: v for k, v in last_eval.items() if k.startswith("task_")})  # lm/tasks.py: a column each
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
  Rows go to metrics.jsonl and TensorBoard every train.log_every steps and at the end, and
  to Weights & Biases when logging.wandb is on (lm/tracking.py, the same rows); a
  logging.profile_steps range is traced as the steps pass. `resume_state()` goes into each
  checkpoint's meta, and `resumed=` that meta carries the recent losses and the timed totals
  over, so a resumed run reports the same train_loss and tokens/s as an uninterrupted one
  (and a run restored at its last step reports them at all).
  """

  def __init__(self, workdir: str, cfg, start: int, facts: RunFacts, resumed: dict | None = None):
    t, resumed = cfg.train, resumed or {}
    self.start, self.total, self.log_every, self.facts = start, t.steps, t.log_every, facts
    self.factor = float(t.divergence_factor)
    self.max_loss = self.factor * math.log(facts.model_cfg.vocab_size) if self.factor > 0 else math.inf
    self.writer = MetricWriter(workdir, resume_step=start, tensorboard=cfg.logging.tensorboard)
    self.trackers = [w for w in (tracking.WandbWriter.of(cfg, workdir),) if w is not None]
    self.profile = tracking.Profile.of(cfg, workdir)
    self.progress = Progress(t.steps, start, enabled=cfg.logging.progress)
    self.meter = Meter(resumed.get("timed_tokens", 0), resumed.get("timed_s", 0.0))
    self.pending = None             # (step, device metrics) not read yet
    self.recent_losses: list[float] = list(resumed.get("recent_losses", []))[-self.log_every:]
    self.last_row: dict = {}
    self.last_eval: dict = {}
    self.diverged_at: str | None = None  # why the run diverged, once it has

  def resume_state(self) -> dict:
    """What a checkpoint's meta carries for the next session (see the class docstring)."""
    tokens, seconds = self.meter.totals()
    return {"recent_losses": list(self.recent_losses), "timed_tokens": tokens, "timed_s": seconds}

  def step(self, step: int, device_metrics, settle: bool = False) -> bool:
    """Queue this step's metrics, read the previous ones; False once the run diverged."""
    if step == self.start + 1:  # the first step includes compilation: keep it out of tokens/s
      jax.block_until_ready(device_metrics)
      self.meter.restart()
    if self.profile is not None:
      self.profile.step(step, device_metrics)
    ok = self.settle()
    self.pending = (step, device_metrics)
    return ok and (self.settle() if settle else True)

  def settle(self) -> bool:
    """Read the queued metrics, if any; False if they show divergence (module docstring)."""
    if self.pending is None:
      return True
    (s, device_metrics), self.pending = self.pending, None
    m = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
    loss, grad_norm = m["train_loss"], m["grad_norm"]
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
      self.diverged_at = f"step {s}: train_loss={loss} grad_norm={grad_norm}"
    elif loss > self.max_loss:
      self.diverged_at = (f"step {s}: train_loss={loss:.6g} > {self.max_loss:.4g} = train.divergence_factor "
                          f"{self.factor:g} x ln(vocab_size {self.facts.model_cfg.vocab_size})")
    if self.diverged_at:
      self.progress.write(f"{self.diverged_at}: diverged; stopping (the last checkpoint is kept).")
      return False
    if s > self.start + 1:  # steps after the first (compiling) one, counted as they complete
      self.meter.add(self.facts.tokens_per_step)
    self.recent_losses = (self.recent_losses + [m["train_loss"]])[-self.log_every:]
    if s % self.log_every == 0 or s == self.total:
      m["tokens"] = s * self.facts.tokens_per_step
      m["tokens_per_s"] = self.meter.interval_rate()
      if self.facts.peak_measured:
        m["mfu"] = self.facts.mfu(m["tokens_per_s"])
      self._write(s, m)
      self.last_row = m
      self.progress.update(s, {**m, **self.last_eval})
    return True

  def eval(self, step: int, metrics: dict) -> dict:
    self.last_eval = metrics
    self._write(step, metrics)
    self.progress.update(step, {**self.last_row, **metrics})
    return metrics

  def _write(self, step: int, metrics: dict) -> None:
    for w in [self.writer] + self.trackers:
      w.write(step, metrics)

  def paused(self):
    """A context in which time does not count towards tokens/s (evaluation, checkpoints)."""
    return self.meter.paused()

  def train_loss(self) -> float | None:
    """The mean of the last log_every training losses (what the summary reports)."""
    return float(np.mean(self.recent_losses)) if self.recent_losses else None

  def write(self, text: str) -> None:
    self.progress.write(text)

  def close(self) -> None:
    """Ends the profile range, the progress bar and the metrics writers."""
    if self.profile is not None:
      self.profile.close()
    self.progress.close()
    self.writer.close()

  def close_trackers(self, summary: dict | None = None) -> None:
    """Ends the W&B run, with `summary` (summary.json) as its run summary."""
    for w in self.trackers:
      w.close(summary)
