"""Experiment tracking and profiling beside metrics.jsonl: Weights & Biases, jax.profiler.

    writer = WandbWriter.of(cfg, workdir)     # None unless logging.wandb; process 0 only
    writer.write(step, metrics)               # the same interface as metrics.MetricWriter
    writer.close(summary)                     # summary.json becomes the run's summary; the run ends
    profile = Profile.of(cfg, workdir)        # logging.profile_steps="START:STOP"
    profile.step(step)                        # called after each step: starts / stops the trace

Weights & Biases (`pip install 'lm[tracking]'`; `wandb` is imported only when
logging.wandb is on). The run takes logging.wandb_project / _entity / _name (default: the
workdir's base name) / _group / _tags, the resolved config as its config, every scalar
metrics.jsonl gets at the same step, and summary.json as its summary. Its id is kept in
WORKDIR/wandb_run.json: a preempted run that resumes in the same workdir logs into the same
W&B run (resume="allow"). W&B never takes a step lower than one it has; the steps a resumed
run repeats (those after its checkpoint) are the same numbers (exact resume), which W&B
keeps from the first time. logging.wandb_mode='offline' writes WORKDIR/wandb/offline-run-*
for `wandb sync` later (no network, what the tests use).

Profiling: logging.profile_steps="10:15" traces steps 11 to 15 (from the moment step 10 is
done until step 15 is) with jax.profiler into WORKDIR/profile/; open it
with `tensorboard --logdir WORKDIR/profile` (the profile plugin: `pip install
tensorboard-plugin-profile`) or XProf. Skip the first steps: step 1 includes compilation.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import string
from typing import Any

import jax
import numpy as np

from lm.errors import ConfigError

RUN_FILE = "wandb_run.json"
WANDB_MODES = ("online", "offline")


def profile_range(spec: str) -> tuple[int, int] | None:
  """'10:15' -> (10, 15); '' -> None."""
  if not spec:
    return None
  try:
    start, stop = (int(x) for x in spec.split(":"))
  except ValueError:
    raise ConfigError(f"logging.profile_steps={spec!r} is not START:STOP (e.g. '10:15'); '' turns it off.") from None
  return start, stop


def validate(g, steps: int) -> None:
  rng = profile_range(g.profile_steps)
  if rng is not None and not 1 <= rng[0] < rng[1] <= steps:
    raise ConfigError(f"logging.profile_steps={g.profile_steps!r} must satisfy 1 <= START < STOP <= train.steps="
                      f"{steps}.")
  if g.wandb_mode not in WANDB_MODES:
    raise ConfigError(f"logging.wandb_mode={g.wandb_mode!r} is not one of {WANDB_MODES}.")


def _scalar(value) -> float | int | None:
  if isinstance(value, (np.generic, np.ndarray, jax.Array)):
    value = np.asarray(value).item()
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return None
  return value if math.isfinite(value) else None


class WandbWriter:
  """One W&B run per workdir, resumed by id; write(step, metrics) like MetricWriter."""

  def __init__(self, run):
    self.run = run

  @classmethod
  def of(cls, cfg, workdir: str) -> "WandbWriter | None":
    g = cfg.logging
    if not g.wandb or jax.process_index() != 0:
      return None
    try:
      import wandb  # local: an optional extra, imported only when logging.wandb is on
    except ImportError:
      raise ConfigError("logging.wandb=True needs the wandb package: pip install 'lm[tracking]' (or wandb).") from None
    path = os.path.join(workdir, RUN_FILE)
    if os.path.exists(path):
      with open(path) as f:
        run_id = json.load(f)["id"]
    else:
      run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))  # W&B's id alphabet
      with open(path + ".tmp", "w") as f:
        json.dump({"id": run_id}, f)
      os.replace(path + ".tmp", path)
    tags = [t.strip() for t in g.wandb_tags.split(",") if t.strip()]
    run = wandb.init(project=g.wandb_project, entity=g.wandb_entity, group=g.wandb_group, tags=tags or None,
                     name=g.wandb_name or os.path.basename(os.path.abspath(workdir)), id=run_id, resume="allow",
                     dir=workdir, mode=g.wandb_mode, config=cfg.to_dict())
    return cls(run)

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    row = {k: v for k, v in ((k, _scalar(v)) for k, v in metrics.items()) if v is not None}
    if row:
      self.run.log(row, step=int(step))

  def close(self, summary: dict | None = None) -> None:
    if summary:
      self.run.summary.update({k: v for k, v in summary.items() if v is not None})
    self.run.finish()


class Profile:
  """A jax.profiler trace of the steps in logging.profile_steps, into WORKDIR/profile."""

  def __init__(self, start: int, stop: int, logdir: str):
    self.start, self.stop, self.logdir, self.active = start, stop, logdir, False

  @classmethod
  def of(cls, cfg, workdir: str) -> "Profile | None":
    rng = profile_range(cfg.logging.profile_steps)
    return None if rng is None else cls(*rng, os.path.join(workdir, "profile"))

  def step(self, step: int, device_metrics=None) -> None:
    """After step `step` was dispatched: start once step == start, stop once step == stop."""
    if step == self.start and not self.active:
      jax.block_until_ready(device_metrics)  # the trace holds only the steps in range
      jax.profiler.start_trace(self.logdir)
      self.active = True
    elif step >= self.stop and self.active:
      jax.block_until_ready(device_metrics)
      jax.profiler.stop_trace()
      self.active = False

  def close(self) -> None:
    if self.active:
      jax.profiler.stop_trace()
      self.active = False
