"""Cooldown branches: one stable-phase run, many training lengths (Hägele et al. 2024,
"Scaling Laws and Compute-Optimal Training Beyond Fixed Training Durations").

A wsd schedule is 'constant''s curve until its decay starts (lm/optim.py), so a run of T
steps whose decay starts at s = T - round(decay_fraction x T) has, up to step s, exactly the
state of a constant-LR run with the same warmup. One stable run per model saves checkpoints
at every such s (train.checkpoint_steps, kept however many train.keep_checkpoints says), and
each branch

    --config.train.branch_from=STABLE_WORKDIR --config.train.branch_step=s
    --config.train.steps=T --config.optim.schedule=wsd [--config.optim.decay_shape=1-sqrt]

starts from that checkpoint (parameters, optimizer state with its step count, and the data
iterator's position) and trains only the T - s steps of its cooldown. Its workdir then holds a
run indistinguishable from a from-scratch wsd run of T steps: the same losses (tests/
test_branching.py: bitwise equal train losses on the tiny config), the stable run's
metrics.jsonl rows up to s copied in, and a summary.json over all T steps (its wall_s and
tokens/s include the stable run's first s steps, as a resumed run's include the earlier
sessions'; a sweep's record of the branch counts only the time it ran). A branch that is preempted resumes
from its own checkpoints; the stable run is read only at its first start.

Refused before anything is built (`check`), each with what to change:
  - the stable workdir has no config.json or no intact checkpoint at branch_step;
  - the two configs differ in a field other than the run's length and schedule (what the
    branch may change: BRANCH_MAY_CHANGE, and what any relaunch may: lm/workdir.py);
  - the two learning-rate schedules differ at any step before branch_step (a warmup of
    another length, a branch whose decay would have begun before s, another peak LR):
    the checkpoint would then not be the state this schedule reaches at s.
"""

from __future__ import annotations

import json
import os

import numpy as np

from lm import checkpoint as checkpoint_lib
from lm import metrics as metrics_lib
from lm import optim
from lm import schema
from lm import workdir as workdir_lib
from lm.errors import ConfigError, WorkdirError

# What a branch sets differently from its stable run: the length, the schedule after s, and
# the branch fields themselves. Everything else must match (or be safe for any relaunch).
BRANCH_MAY_CHANGE = ("train.steps", "train.checkpoint_steps", "train.branch_from", "train.branch_step",
                     "optim.schedule", "optim.decay_fraction", "optim.decay_shape", "optim.min_lr_ratio")


def stable_config(cfg) -> dict:
  """The stable run's saved config.json (resolved over today's defaults)."""
  path = os.path.join(cfg.train.branch_from, "config.json")
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise WorkdirError(f"train.branch_from={cfg.train.branch_from}: cannot read {path} ({e}); branch from the "
                       "workdir of a run lm.main trained.") from None


def check(cfg) -> None:
  """Refuses a branch whose checkpoint would not be the state its own schedule reaches at
  branch_step (the module docstring lists the cases). Reads two small files, builds nothing."""
  t, saved = cfg.train, stable_config(cfg)
  step = int(t.branch_step)
  differ = [(k, old, new) for k, old, new in workdir_lib.config_changes(saved, cfg)
            if not (k in BRANCH_MAY_CHANGE or workdir_lib.is_safe_to_change(k))]
  if differ:
    shown = "; ".join(f"{k}: {old!r} there, {new!r} here" for k, old, new in differ[:6])
    raise ConfigError(f"train.branch_from={t.branch_from}: the stable run's config differs in {len(differ)} field(s) "
                      f"a branch must share ({shown}); a branch may change only {', '.join(BRANCH_MAY_CHANGE)}.")
  stable = schema.resolve({k: v for k, v in saved.items() if k != "derived"})
  steps = np.arange(step)
  ours = np.asarray(optim.schedule(cfg.optim, t.steps)(steps))
  theirs = np.asarray(optim.schedule(stable.optim, stable.train.steps)(steps))
  if not np.array_equal(ours, theirs):
    k = int(np.flatnonzero(ours != theirs)[0])
    raise ConfigError(
        f"train.branch_step={step}: at step {k} this run's learning rate is {ours[k]:.6g} and the stable run's was "
        f"{theirs[k]:.6g}, so its checkpoint is not where this schedule would be. Branch at or before this "
        f"schedule's decay start (step {optim.wsd_decay_start(cfg.optim, t.steps)} for wsd), with the stable "
        "run's warmup and peak LR.")
  if step not in workdir_lib.checkpoint_steps(t.branch_from):
    raise WorkdirError(f"train.branch_from={t.branch_from} has no checkpoint at step {step} (it has "
                       f"{workdir_lib.checkpoint_steps(t.branch_from)}); run the stable run with "
                       f"--config.train.checkpoint_steps including {step}, or branch at one of those.")


def restore(cfg, abstract_state, workdir: str):
  """(step, state, data_state, meta) of the stable run's checkpoint at branch_step, verified,
  with its metrics.jsonl rows up to that step copied into `workdir`."""
  t = cfg.train
  step = int(t.branch_step)
  state, data_state, meta = checkpoint_lib.restore_step(t.branch_from, step, abstract_state)
  source = os.path.join(t.branch_from, "metrics.jsonl")
  if os.path.isfile(source):
    rows = [r for r in metrics_lib.read_jsonl(source) if r.get("step", 0) <= step]
    workdir_lib.atomic_write(os.path.join(workdir, "metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in rows))
  print(f"Branched from the checkpoint at step {step} of {t.branch_from}: its cooldown trains steps {step + 1}-"
        f"{t.steps}.", flush=True)
  return step, state, data_state, meta
