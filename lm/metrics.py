"""What a run leaves behind: metrics.jsonl, TensorBoard events, a progress bar, summary.json.

Only process 0 writes (every process computes the same global metrics). On resume,
metrics logged after the restored checkpoint are dropped from metrics.jsonl and purged
from TensorBoard, since the resumed run logs those steps again.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

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
      from tensorboardX import SummaryWriter
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
  """summary.json: one row of the results schema (design.md section 6), plus extras."""
  row = {k: _plain(v) for k, v in row.items()}
  ordered = {k: row.get(k) for k in SCHEMA}
  ordered.update({k: v for k, v in row.items() if k not in ordered})
  if jax.process_index() == 0:
    tmp = os.path.join(workdir, "summary.json.tmp")
    with open(tmp, "w") as f:
      json.dump(ordered, f, indent=2)
    os.replace(tmp, os.path.join(workdir, "summary.json"))  # never a half-written summary
  return ordered


class Throughput:
  """tokens/s over the steps since the last call (excludes compile, eval, checkpoints)."""

  def __init__(self):
    self.reset()

  def reset(self):
    self.t0, self.tokens, self.paused = time.perf_counter(), 0, 0.0

  def add(self, tokens: int):
    self.tokens += tokens

  def pause(self):
    self._pause_start = time.perf_counter()

  def resume(self):
    self.paused += time.perf_counter() - self._pause_start

  def rate(self) -> float:
    dt = time.perf_counter() - self.t0 - self.paused
    return self.tokens / dt if dt > 0 else float("nan")
