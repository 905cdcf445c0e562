"""A sweep config -> its points: each one lm.main run (config + overrides) with N, D, C, steps.

A sweep is a Python file whose get_config(arg=None) returns a ConfigDict with fields:

  name              the sweep's name (the `sweep` column of the results table)
  config            the lm.main config file of every point, e.g. 'configs/ladder.py'
  models            tuple of model names. A name listed in `shapes` is `config` plus those
                    overrides; any other name is the config's ':arg' (configs/ladder.py:p1m)
  shapes            optional, name -> nested overrides, e.g. {'model': {'d_model': 48}}; an 'arg'
                    entry picks the config's ':arg' they start from ({'arg': 'p50k', 'model': ...})
  budget_models     optional, one tuple of model names per budget: the models that budget runs
                    (an IsoFLOP set brackets each budget's optimum with its own range of sizes)
  kind              'isoflop': budgets are training FLOPs C; each model trains D = C / flops-per-token
                    'grid':    budgets are training tokens D; every model x every D
  budgets           tuple of C (isoflop) or D (grid)
  flops_definition  what C counts: 'flops_exact' (default), 'flops_executed' (the fits' default compute
                    axis: what runs) or 'flops_6n' (docs/conventions.md, Parameters and FLOPs).
                    At CPU scale flops_exact is 1.3x (p10m) to 7x (p50k) flops_6n, so a sweep
                    budgets in one definition and its fits use the same one.
  min_steps, max_steps  isoflop points with fewer / more steps are left out (listed by the dry run)
  warmup_fraction   optim.warmup_steps = round(fraction x steps), at least 1 (None: the config's)
  evals, checkpoints  per point: eval_every = ceil(steps / evals), checkpoint_every = ceil(steps /
                    checkpoints) (unless `overrides` sets them); a preempted point loses at most
                    1/checkpoints of its steps
  cooldown_fraction optional (None: off), e.g. 0.2: WSD branching (Hägele et al. 2024; lm/branching.py).
                    Each model trains one stable run, 'stable-<model>' (constant LR after a warmup
                    of warmup_fraction x its shortest point's steps), checkpointed at every
                    point's decay start s = T - round(cooldown_fraction x T); each point of T
                    steps is a cooldown branch from step s (optim.schedule 'wsd', decay_fraction
                    = cooldown_fraction) that runs only its T - s steps, after its stable run has
                    finished, and is the point's results row. The stable runs are rows with
                    role 'stable', which fits leave out. The dry run prints the FLOPs this spends
                    against running every point from scratch.
  seeds             optional tuple of train.seed values, e.g. (0, 1): every point runs once per seed
                    (None: once, at the config's seed). The first seed's points keep their names;
                    another seed's are '<name>-seed<k>' (with branching, from their own stable run
                    'stable-<model>-seed<k>'). The results table's `seed` column makes them
                    replicates, and the fits take the noise from their spread (lm/scaling_table.py).
  seed_budgets      optional tuple of budgets at which the seeds after the first run (None: every
                    budget), so a few budgets carry the replicates and the rest run once
  cooldown_shape    the decay of the branches: '1-sqrt' (default) or 'linear' (optim.decay_shape)
  overrides         nested overrides of every point, e.g. {'train': {'eval_steps': 16}}; None
                    values are not passed (placeholders a command line may fill:
                    --config.overrides.data.data_dir=DIR)

Point names are '<budget>-<model>': C3e12-p1m (isoflop), D2M-p1m (grid), with the budget written
exactly (D32.768K, C3.2768e4: never rounded, so two budgets never share a name or a workdir);
a sweep that lists a budget or a model twice is refused. (Until 2026-12 labels were rounded to 3
digits, D32.8K for 32,768: a sweep directory from then has other point names; rename its point
directories to the new names to keep their runs.) Steps:
  isoflop  steps = round(C / (flops_per_token x batch_size x seq_len))
  grid     steps = round(D / (batch_size x seq_len))
"""

from __future__ import annotations

import dataclasses
import decimal
import importlib.util
import json
import math
import os
from typing import Any

from ml_collections import ConfigDict

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KINDS = ("isoflop", "grid")
DEFINITIONS = ("flops_exact", "flops_executed", "flops_6n")
BYTE_VOCAB = 3 + 256  # lm.data.tokenizers.ByteTokenizer: pad, bos, eos + 256 bytes
# Overrides that name where things are, not what a point computes: a relaunch may change them.
NOT_IDENTITY = ("data.data_dir", "logging.")


class SweepError(ValueError):
  """A sweep config or sweep directory that cannot run; the message says what to change."""


@dataclasses.dataclass
class Point:
  name: str
  model: str
  config: str                      # lm.main --config address, e.g. configs/ladder.py:p1m
  overrides: dict[str, Any]        # dotted path -> value, passed as --config.<path>=<value>
  budget: float                    # the sweep's budget: C (isoflop) or D (grid)
  flops_budget: float              # nominal C of the point, in flops_definition
  flops_definition: str
  steps: int
  tokens_per_step: int
  params_total: int
  params_nonembedding: int
  flops_per_token: dict[str, float]  # both definitions
  memory_bytes: float              # lm.flops.train_memory total, all devices
  cfg: Any = dataclasses.field(repr=False, default=None)  # the resolved ConfigDict
  role: str = ""                   # WSD branching: 'stable' (a model's stable run) or 'branch' ('' without)
  after: str = ""                  # a branch's stable point: it starts once that one has finished
  branch_step: int = 0             # a branch's first step: the stable checkpoint it starts from
  seed: int | None = None          # train.seed set by the sweep's `seeds` (None: the config's)

  @property
  def steps_run(self) -> int:
    """The steps this point trains itself: a branch only its cooldown."""
    return self.steps - self.branch_step

  @property
  def flops_spent(self) -> float:
    """Training FLOPs this point's own process spends (a branch: its cooldown only)."""
    return self.flops_per_token[self.flops_definition] * self.steps_run * self.tokens_per_step

  @property
  def tokens(self) -> int:
    return self.steps * self.tokens_per_step

  @property
  def flops(self) -> float:
    """Training FLOPs the point spends, in the sweep's definition (C up to the rounding of steps)."""
    return self.flops_per_token[self.flops_definition] * self.tokens

  def identity(self) -> dict:
    """What a point computes; a relaunch whose identity differs would mix two experiments."""
    overrides = {k: v for k, v in self.overrides.items() if not any(k.startswith(p) for p in NOT_IDENTITY)}
    return json.loads(json.dumps({"config": self.config, "overrides": overrides}))  # as point.json holds it

  def record(self) -> dict:
    """point.json: the identity plus the planned quantities the results table carries."""
    return {"name": self.name, "model": self.model, **self.identity(), "all_overrides": self.overrides,
            "budget": self.budget, "flops_budget": self.flops_budget, "flops_definition": self.flops_definition,
            "steps": self.steps, "tokens": self.tokens, "params_total": self.params_total,
            "params_nonembedding": self.params_nonembedding,
            **({"role": self.role, "after": self.after or None, "branch_step": self.branch_step,
                "steps_run": self.steps_run} if self.role else {})}

  def argv(self, workdir: str) -> list[str]:
    where = [f"--config.train.branch_from={os.path.join(os.path.dirname(workdir), self.after)}"] if self.after else []
    return ["-m", "lm.main", f"--config={self.config}", f"--workdir={workdir}",
            *[f"--config.{k}={_flag_value(v)}" for k, v in self.overrides.items()], *where, *self._wandb_group(workdir)]

  def _wandb_group(self, workdir: str) -> list[str]:
    """A sweep's points log to one W&B group, named after the sweep directory, unless the sweep
    names its own (overrides.logging.wandb_group) or logs nothing to W&B."""
    g = self.cfg.logging if self.cfg is not None else None
    if g is None or not g.get("wandb") or g.get("wandb_group"):
      return []
    return [f"--config.logging.wandb_group={os.path.basename(os.path.dirname(os.path.abspath(workdir)))}"]


def _flag_value(v) -> str:
  if isinstance(v, bool):
    return "true" if v else "false"  # absl's boolean parser
  return repr(v) if isinstance(v, float) else str(v)


# ---- loading configs ----

def config_path(path: str) -> str:
  """A config file as given, or relative to the repository (points run with cwd = REPO)."""
  if os.path.isabs(path) or os.path.exists(path):
    return os.path.abspath(path)
  return os.path.join(REPO, path)


def load_config(address: str) -> ConfigDict:
  """'path/to/file.py[:arg]' -> get_config(arg), as ml_collections' config_flags loads it."""
  path, _, arg = address.partition(":")
  full = config_path(path)
  if not os.path.isfile(full):
    raise SweepError(f"no config file {path} (looked in {os.getcwd()} and {REPO}).")
  spec = importlib.util.spec_from_file_location(f"_sweep_config_{abs(hash(full))}", full)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg or None)


def flatten(tree, prefix: str = "") -> dict[str, Any]:
  """{'train': {'steps': 5}} -> {'train.steps': 5}; None leaves are dropped."""
  items = tree.items() if hasattr(tree, "items") else []
  out = {}
  for k, v in items:
    if isinstance(v, (dict, ConfigDict)):
      out.update(flatten(v, f"{prefix}{k}."))
    elif v is not None:
      out[f"{prefix}{k}"] = v
  return out


def apply_overrides(cfg: ConfigDict, overrides: dict[str, Any], where: str) -> None:
  """Set dotted fields that must already exist (lm.main locks its config the same way)."""
  for path, value in overrides.items():
    node, *_, leaf = [cfg] + path.split(".")
    for part in path.split(".")[:-1]:
      if not isinstance(node, ConfigDict) or part not in node:
        raise SweepError(f"{where}: the config has no section {path!r}.")
      node = node[part]
    if not isinstance(node, ConfigDict) or leaf not in node:
      raise SweepError(f"{where}: the config has no field {path!r} (fields are listed in configs/base.py).")
    node[leaf] = value


def model_config(cfg):
  from lm.model import ModelConfig
  vocab = BYTE_VOCAB if cfg.data.tokenizer == "bytes" else cfg.data.vocab_size
  return ModelConfig.from_config(cfg.model, vocab)


# ---- expansion ----

def budget_label(kind: str, budget: float) -> str:
  """The budget, exactly: FLOPs C3e12, C2.5e13, C3.2768e4; tokens D2M, D512K, D32.768K, D1.6384M."""
  value = decimal.Decimal(repr(float(budget)) if isinstance(budget, float) else str(budget)).normalize()
  if kind == "grid":
    for unit, scale in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3), ("", 1)):
      if abs(value) >= scale or not unit:
        return f"D{(value / scale).normalize():f}{unit}"
  _, digits, exponent = value.as_tuple()
  mantissa = str(digits[0]) + ("." + "".join(map(str, digits[1:])) if len(digits) > 1 else "")
  return f"C{mantissa}e{len(digits) - 1 + exponent}"


def validate(s: ConfigDict) -> None:
  for field in ("name", "config", "models", "kind", "budgets"):
    if field not in s or s[field] in (None, (), []):
      raise SweepError(f"the sweep config has no {field!r}; see experiments/sweep/plan.py for the fields.")
  if s.kind not in KINDS:
    raise SweepError(f"kind={s.kind!r} is not one of {KINDS}.")
  if s.get("flops_definition", "flops_exact") not in DEFINITIONS:
    raise SweepError(f"flops_definition={s.flops_definition!r} is not one of {DEFINITIONS}.")
  if any(not b > 0 for b in s.budgets):
    raise SweepError(f"budgets={tuple(s.budgets)} must be positive.")
  fraction = s.get("cooldown_fraction")
  if fraction is not None and not 0 < fraction < 1:
    raise SweepError(f"cooldown_fraction={fraction} must lie in (0, 1) (e.g. 0.2), or be None for no branching.")
  seeds = tuple(s.get("seeds") or ())
  if len(set(seeds)) != len(seeds) or any(not isinstance(k, int) or k < 0 for k in seeds):
    raise SweepError(f"seeds={seeds} must be distinct non-negative integers (train.seed values), e.g. (0, 1).")
  stray = sorted(set(s.get("seed_budgets") or ()) - set(s.budgets))
  if stray:
    raise SweepError(f"seed_budgets names {stray}, which are not in budgets={tuple(s.budgets)}.")
  if s.get("seed_budgets") and len(seeds) < 2:
    raise SweepError("seed_budgets is set but seeds lists fewer than 2 seeds; give seeds=(0, 1) or drop seed_budgets.")
  if s.get("cooldown_shape", "1-sqrt") not in ("1-sqrt", "linear"):
    raise SweepError(f"cooldown_shape={s.cooldown_shape!r} is not '1-sqrt' or 'linear'.")
  if len(set(s.models)) != len(s.models):
    raise SweepError(f"models={tuple(s.models)} names a model twice.")
  twice = sorted({b for b in s.budgets if list(s.budgets).count(b) > 1})
  if twice:
    raise SweepError(f"budgets={tuple(s.budgets)} lists {', '.join(f'{b:g}' for b in twice)} twice; two points "
                     "would share one workdir. List each budget once.")
  per_budget = s.get("budget_models")
  if per_budget:
    if len(per_budget) != len(s.budgets):
      raise SweepError(f"budget_models has {len(per_budget)} entries for {len(s.budgets)} budgets; give one tuple "
                       "of model names per budget.")
    unknown = sorted({m for ms in per_budget for m in ms} - set(s.models))
    if unknown:
      raise SweepError(f"budget_models names {unknown}, which are not in models={tuple(s.models)}.")


def expand(s: ConfigDict) -> tuple[list[Point], list[tuple[str, str]]]:
  """(points in run order: budget by budget, models in the given order; (name, why) of those left out)."""
  from lm import flops as flops_lib
  validate(s)
  definition = s.get("flops_definition", "flops_exact")
  shapes = s.get("shapes") or {}
  common = flatten(s.get("overrides") or {})
  points, left_out, seen = [], [], {}
  per_budget = s.get("budget_models")
  for model in s.models:
    shape = flatten(shapes[model]) if model in shapes else {}
    arg = shape.pop("arg", None) if model in shapes else model
    address = f"{s.config}:{arg}" if arg else s.config
    try:
      base = load_config(address)
    except Exception as e:  # a ladder's unknown rung, a config error: name the model
      raise SweepError(f"model {model!r} ({address}): {e}") from e
    apply_overrides(base, {**shape, **common}, f"model {model!r}")
    try:
      mcfg = model_config(base)
    except ValueError as e:  # lm.errors.ConfigError: heads that do not divide d_model, ...
      raise SweepError(f"model {model!r}: {e}") from e
    twin = seen.setdefault(base.to_json_best_effort(sort_keys=True), model)
    if twin != model:
      raise SweepError(f"models {twin!r} and {model!r} are the same config; a name not in `shapes` is passed to "
                       f"{s.config} as ':{model}', which may ignore it.")
    seq, batch = base.data.seq_len, base.train.batch_size
    per_token = {d: flops_lib.flops_per_token(mcfg, seq, d) for d in DEFINITIONS}
    counts = flops_lib.param_counts(mcfg)
    memory = flops_lib.train_memory(mcfg, seq, batch // base.optim.grad_accum_steps).total
    for i, budget in enumerate(s.budgets):
      if per_budget and model not in per_budget[i]:
        continue
      name = f"{budget_label(s.kind, budget)}-{model}"
      if s.kind == "isoflop":
        steps = round(budget / (per_token[definition] * batch * seq))
        flops_budget = float(budget)
      else:
        steps = round(budget / (batch * seq))
        flops_budget = per_token[definition] * steps * batch * seq
      low, high = s.get("min_steps") or 1, s.get("max_steps") or math.inf
      if not low <= steps <= high:
        left_out.append((name, f"{steps} steps, outside [{low}, {high if high < math.inf else 'inf'}]"))
        continue
      for k, seed in enumerate(_seeds(s)):
        if k and s.get("seed_budgets") and budget not in s.seed_budgets:
          continue
        overrides = {**shape, **common, **_per_point(s, steps, common),
                     **({"train.seed": seed} if seed is not None else {})}
        cfg = load_config(address)
        apply_overrides(cfg, overrides, f"point {name}")
        points.append(Point(name=name + (f"-seed{seed}" if k else ""), model=model, config=address,
                            overrides=overrides, budget=float(budget), flops_budget=flops_budget,
                            flops_definition=definition, steps=steps, tokens_per_step=batch * seq,
                            params_total=counts.total, params_nonembedding=counts.nonembedding,
                            flops_per_token=per_token, memory_bytes=memory, cfg=cfg, seed=seed))
  points.sort(key=lambda p: s.budgets.index(p.budget) if p.budget in s.budgets else 0)  # budget-major
  if s.get("cooldown_fraction") is not None:
    points = branched(s, points)
  names = [p.name for p in points] + [n for n, _ in left_out]
  shared = sorted({n for n in names if names.count(n) > 1})
  if shared:  # a model name that makes another point's name: 'D1K' + '-a-b' vs ...
    raise SweepError(f"points {shared} would share a workdir; rename the models so that every "
                     "'<budget>-<model>' is unique.")
  return points, left_out


def _per_point(s: ConfigDict, steps: int, common: dict) -> dict:
  """train.steps, the warmup and the eval / checkpoint cadence that follow from the steps."""
  out = {"train.steps": steps}
  if s.get("warmup_fraction") is not None:
    out["optim.warmup_steps"] = max(1, round(s.warmup_fraction * steps))
  for key, per in (("train.eval_every", s.get("evals") or 1), ("train.checkpoint_every", s.get("checkpoints") or 4)):
    if key not in common:
      out[key] = max(1, math.ceil(steps / per))
  return out


def _seeds(s) -> tuple:
  """The sweep's `train.seed` values; (None,) when it gives none (each point keeps its config's)."""
  return tuple(s.get("seeds") or (None,))


def branched(s: ConfigDict, points: list[Point]) -> list[Point]:
  """WSD branching (the cooldown_fraction field): one stable point per model first, then the
  points as cooldown branches from its checkpoints."""
  from lm import optim  # local, like lm.flops in expand: the planner loads jax only when it expands
  fraction, shape = float(s.cooldown_fraction), s.get("cooldown_shape", "1-sqrt")
  stables, branches = [], []
  first_seed = _seeds(s)[0]
  for model, seed in dict.fromkeys((p.model, p.seed) for p in points):
    mine = [p for p in points if (p.model, p.seed) == (model, seed)]
    fraction_warm = s.get("warmup_fraction")
    warmup = (max(1, round(fraction_warm * min(p.steps for p in mine))) if fraction_warm is not None
              else int(mine[0].cfg.optim.warmup_steps))  # one warmup for all: the stable run's
    schedule = ConfigDict({"warmup_steps": warmup, "decay_fraction": fraction})
    starts = {p.name: optim.wsd_decay_start(schedule, p.steps) for p in mine}
    stable_steps = max(starts.values())
    stable_name = f"stable-{model}" + (f"-seed{seed}" if seed != first_seed else "")
    # The first point's overrides with its per-point ones (_per_point) replaced: evaluated at its end only.
    stable_over = {**mine[0].overrides, "train.steps": stable_steps, "optim.schedule": "constant",
                   "optim.warmup_steps": warmup, "train.checkpoint_steps": tuple(sorted(set(starts.values()))),
                   "train.eval_every": stable_steps, "train.keep_checkpoints": 1,
                   "train.checkpoint_every": max(1, math.ceil(stable_steps / (s.get("checkpoints") or 4)))}
    stables.append(_with(mine[0], name=stable_name, overrides=stable_over, budget=0.0, steps=stable_steps,
                         flops_budget=mine[0].flops_per_token[mine[0].flops_definition] * stable_steps
                         * mine[0].tokens_per_step, role="stable"))
    for p in mine:
      over = {**p.overrides, "optim.schedule": "wsd", "optim.decay_fraction": fraction, "optim.decay_shape": shape,
              "optim.warmup_steps": warmup, "train.branch_step": starts[p.name]}
      branches.append(_with(p, overrides=over, role="branch", after=stable_name, branch_step=starts[p.name]))
  return stables + branches


def _with(p: Point, **changes) -> Point:
  """p with `changes`, its cfg rebuilt from the new overrides."""
  cfg = load_config(p.config)
  apply_overrides(cfg, changes.get("overrides", p.overrides), f"point {changes.get('name', p.name)}")
  return dataclasses.replace(p, cfg=cfg, **changes)
