"""Learning-rate sweeps in one program, and what a sweep study reports (the studies
experiments/studies/{lr_transfer,depth_transfer,muon_vs_adamw}.py use it).

    rows = sweep(cfg, lrs)                 # one row per LR: eval_loss at the end, train loss, curve
    best = optimum(lrs, losses)            # the optimal LR and an interval, from the curvature
    optima = best_table(rows, ("width",))  # the optimum per group of rows; plot(), write_csv()
    rows, record = run_groups(out, groups, config_of, lrs)   # a study's sweeps, resumable

Every LR of a sweep trains side by side in one jitted step (jax.vmap over the LRs): lm's
own train step (lm/steps.py) with lm's optimizer (lm/optim.py, the config's schedule,
clipping, decay and µP multipliers) built at LR 1, whose update is then multiplied by the
swept LR. Every optax chain lm builds ends in its LR (scale_by_learning_rate, then constant
per-tensor factors), so the update at LR 1 times lr is the update at lr:
tests/test_lr_sweep.py checks the trajectories equal separate runs. One compilation, one
data stream and one evaluation set serve the whole sweep (lm.main would compile and read
the data once per LR: ~13 s a run on 2 quiet cores for a p200k-sized model), and every LR
sees the same initialisation and batches, so the differences between LRs are not noise of
the seed (common random numbers).

swept='muon' multiplies only the tensors Muon takes (the hidden matrices) and leaves the
AdamW side at optim.lr: a sweep of optim.muon_lr.

Reporting: optimum() fits a parabola in log2(lr) to the lowest loss and its two neighbours
on each side (five points; fewer at an edge of the grid, flagged) and returns its vertex
with +-2 standard errors from the fit's covariance (the delta method), i.e. an interval from
the curvature. LoadSampler records the machine's load while a study runs (shared machines).
"""

from __future__ import annotations

import csv
import datetime
import itertools
import json
import math
import os
import platform
import subprocess
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lm import data as data_lib
from lm import muon as muon_lib
from lm import optim
from lm import parameterization as param_lib
from lm import schema
from lm import steps as steps_lib
from lm.model import ModelConfig, Transformer, init_params


LRS = tuple(2.0 ** e for e in range(-11, -3))  # the transfer studies' grid: 4.9e-4 ... 6.25e-2, x2 apart


def transfer_config(width: int, parameterization: str, base_width: int, steps: int = 300, n_layers: int = 2,
                    base_depth: int | None = None):
  """The transfer studies' model and run (experiments/studies/lr_transfer.py's docstring):
  Llama family, 4 heads, d_ff 3.5 width, bytes, sequences of 128, batches of 8, lm's optim
  defaults with warmup steps/10 and a cosine to 0.1x."""
  cfg = schema.defaults()
  cfg.experiment = "lr_transfer"
  m = cfg.model
  m.update(n_layers=n_layers, d_model=width, n_heads=4, n_kv_heads=4, d_ff=-(-7 * width // 2 // 16) * 16,
           max_seq_len=128, attention="reference", parameterization=parameterization)
  if parameterization == "mup":
    m.update(base_width=base_width, base_head_dim=base_width // 4, base_depth=base_depth)
  cfg.data.tokenizer, cfg.data.seq_len = "bytes", 128
  cfg.train.steps, cfg.train.batch_size, cfg.train.seed = steps, 8, 0
  cfg.optim.update(warmup_steps=max(1, steps // 10), schedule="cosine")
  return cfg


def scale_selected(lr, selected) -> optax.GradientTransformation:
  """updates * lr for the tensors `selected(names)` picks (lr may be traced: the swept value)."""
  def update(updates, state, params=None):
    del params
    return jax.tree_util.tree_map_with_path(
        lambda path, u: u * lr if selected(param_lib.path_names(path)) else u, updates), state
  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def sweep(cfg, lrs, swept: str = "all", eval_batches: int = 8, log_every: int = 25) -> list[dict]:
  """Train cfg once per LR in `lrs` (optim.lr, or optim.muon_lr with swept='muon'), side by side.

  Returns one dict per LR: lr, eval_loss and eval_bpb after the last step (after the decay),
  train_loss (mean of the last log_every steps), diverged, and curve [(step, train loss)].
  """
  if swept not in ("all", "muon"):
    raise ValueError(f"swept={swept!r}: 'all' (optim.lr) or 'muon' (optim.muon_lr).")
  t = cfg.train
  tokenizer = data_lib.build_tokenizer(cfg.data)
  model = Transformer(ModelConfig.from_config(cfg.model, tokenizer.vocab_size))
  o = cfg.optim.copy_and_resolve_references()
  if swept == "all":
    o.lr = 1.0
    o.muon_lr = o.muon_lr / cfg.optim.lr  # keeps muon_lr / lr as configured
  else:
    o.muon_lr = 1.0
  optimizer, schedule = optim.make_optimizer(o, t.steps, model.cfg)
  selected = (lambda names: True) if swept == "all" else muon_lib.uses_muon
  at = lambda lr: optax.chain(optimizer, scale_selected(lr, selected))  # noqa: E731

  params = init_params(model, jax.random.key(t.seed))
  lrs_R = jnp.asarray(lrs, jnp.float32)
  n = len(lrs)
  state = {"step": jnp.zeros((n,), jnp.int32), "params": jax.tree.map(lambda x: jnp.stack([x] * n), params),
           "opt_state": jax.vmap(lambda _: at(1.0).init(params))(lrs_R)}

  def one(state, lr, batch):
    return steps_lib.make_train_step(model, at(lr), schedule, t.z_loss, cfg.optim.grad_accum_steps)(state, batch)
  train_step = jax.jit(jax.vmap(one, in_axes=(0, 0, None)), donate_argnums=0)
  eval_step = jax.jit(jax.vmap(steps_lib.make_eval_step(model), in_axes=(0, None)))

  keys = steps_lib.TRAIN_KEYS
  train_it = data_lib.train_iterator(cfg.data, tokenizer, t.batch_size, t.seed)
  held_out = [{k: b[k] for k in steps_lib.EVAL_KEYS}
              for b in itertools.islice(data_lib.eval_iterator(cfg.data, tokenizer, t.batch_size), eval_batches)]
  curves, window = [[] for _ in lrs], []
  for step in range(1, t.steps + 1):
    batch = {k: v for k, v in next(train_it).items() if k in keys}
    state, metrics = train_step(state, lrs_R, batch)
    window.append(metrics["train_loss"])
    if step % log_every == 0 or step == t.steps:
      mean_R = np.mean(np.stack(jax.device_get(window)), axis=0)
      for i in range(n):
        curves[i].append((step, float(mean_R[i])))
      last, window = mean_R, []
  sums = [jax.device_get(eval_step(state["params"], b)) for b in held_out]
  nll_R = np.sum([s["sum_nll"] for s in sums], axis=0, dtype=np.float64)
  tokens, nbytes = sum(int(s["tokens"][0]) for s in sums), sum(int(s["bytes"][0]) for s in sums)
  rows = []
  for i, lr in enumerate(lrs):
    loss = float(nll_R[i] / tokens)
    finite = math.isfinite(loss) and math.isfinite(float(last[i]))
    rows.append({"lr": float(lr), "eval_loss": loss if finite else None,
                 "eval_bpb": float(nll_R[i] / math.log(2) / nbytes) if finite else None,
                 "train_loss": float(last[i]) if finite else None, "diverged": not finite, "curve": curves[i]})
  return rows


def optimum(lrs, losses) -> dict:
  """The LR at the vertex of a parabola in log2(lr) through the best point and up to two
  neighbours each side, with an interval of +-2 standard errors (delta method).

  Diverged runs (None / non-finite) are left out. Returns lr, lo, hi (the interval), best_lr
  (the grid point), edge (the best point is at the end of the grid: the interval is open).
  Where the parabola is not convex, or its vertex or its interval reaches outside the points
  it was fitted to (a zigzag the parabola does not describe), lr is the grid point and there
  is no interval."""
  pts = [(math.log2(lr), float(l)) for lr, l in zip(lrs, losses) if l is not None and math.isfinite(l)]
  pts.sort()
  if not pts:
    return {"lr": None, "lo": None, "hi": None, "best_lr": None, "edge": True}
  i = min(range(len(pts)), key=lambda j: pts[j][1])
  best_lr = 2 ** pts[i][0]
  edge = i == 0 or i == len(pts) - 1
  window = pts[max(0, i - 2): i + 3]
  if len(window) < 4 or edge:
    return {"lr": best_lr, "lo": None, "hi": None, "best_lr": best_lr, "edge": True}
  x, y = np.array([p[0] for p in window]), np.array([p[1] for p in window])
  coef, cov = np.polyfit(x, y, 2, cov="unscaled" if len(window) == 3 else True)
  a, b, _ = coef
  grid_point = {"lr": best_lr, "lo": None, "hi": None, "best_lr": best_lr, "edge": False}
  if a <= 0:  # not convex here
    return grid_point
  vertex = -b / (2 * a)
  if not x[0] <= vertex <= x[-1]:  # e.g. a vertex at 2^-4 from a window whose best point is 2^-6
    return grid_point
  grad = np.array([b / (2 * a * a), -1 / (2 * a), 0.0])  # d vertex / d (a, b, c)
  se = float(np.sqrt(max(grad @ cov @ grad, 0.0)))
  if vertex - 2 * se < x[0] or vertex + 2 * se > x[-1]:  # the points do not pin the vertex down
    return grid_point
  return {"lr": 2 ** vertex, "lo": 2 ** (vertex - 2 * se), "hi": 2 ** (vertex + 2 * se), "best_lr": best_lr,
          "edge": False}


def shift_exponent(widths, lrs) -> float | None:
  """b in lr* ~ width^b (least squares in log-log): 0 is perfect transfer, -1 is SP's 1/width."""
  pts = [(math.log2(w), math.log2(lr)) for w, lr in zip(widths, lrs) if lr]
  if len(pts) < 2:
    return None
  return float(np.polyfit([p[0] for p in pts], [p[1] for p in pts], 1)[0])


class LoadSampler:
  """os.getloadavg()[0] every `every` seconds in a thread, while a study runs."""

  def __init__(self, every: float = 30.0):
    self.every, self.samples, self._stop = every, [], threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)

  def _run(self):
    while not self._stop.is_set():
      self.samples.append((time.time(), os.getloadavg()[0]))
      self._stop.wait(self.every)

  def __enter__(self):
    self.t0 = time.time()
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()
    self.wall_s = time.time() - self.t0

  def summary(self) -> dict:
    loads = [s[1] for s in self.samples] or [float("nan")]
    return {"wall_s": round(self.wall_s, 1), "load_min": min(loads), "load_mean": round(float(np.mean(loads)), 2),
            "load_max": max(loads), "load_samples": len(loads), "cores": os.cpu_count(),
            "uptime_end": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()}


def machine() -> str:
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
  except OSError:
    pass
  return f"{cpu}, {os.cpu_count()} cores, jax {jax.__version__} ({jax.default_backend()})"


def best_table(rows: list[dict], group_keys: tuple[str, ...]) -> list[dict]:
  """The optimum per group (e.g. parameterization x width) from the rows' eval losses."""
  out = []
  groups = sorted({tuple(r[k] for k in group_keys) for r in rows},
                  key=lambda g: tuple(x if isinstance(x, (int, float)) else str(x) for x in g))  # 16 before 128
  for g in groups:
    sel = sorted((r for r in rows if tuple(r[k] for k in group_keys) == g), key=lambda r: r["lr"])
    best = optimum([r["lr"] for r in sel], [r["eval_loss"] for r in sel])
    losses = [r["eval_loss"] for r in sel if r["eval_loss"] is not None]
    out.append({**dict(zip(group_keys, g)), **best, "min_eval_loss": min(losses) if losses else None,
                "diverged": sum(r["diverged"] for r in sel)})
  return out


def write_csv(path: str, rows: list[dict]) -> None:
  keys = [k for k in rows[0] if k != "curve"]
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, keys, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)


def plot(rows: list[dict], optima: list[dict], path: str, panel_key: str, line_key: str, title: str) -> None:
  from matplotlib.figure import Figure  # local: only the figure needs matplotlib
  panels = sorted({r[panel_key] for r in rows}, key=str)
  lines = sorted({r[line_key] for r in rows})
  fig = Figure(figsize=(5.2 * len(panels), 4.0), layout="constrained")
  axes = fig.subplots(1, len(panels), squeeze=False, sharey=True)[0]
  for ax, panel in zip(axes, panels):
    for j, line in enumerate(lines):
      sel = sorted((r for r in rows if r[panel_key] == panel and r[line_key] == line), key=lambda r: r["lr"])
      color = f"C{j}"
      ax.plot([r["lr"] for r in sel], [r["eval_loss"] if r["eval_loss"] is not None else float("nan") for r in sel],
              marker="o", ms=3, color=color, label=f"{line_key} {line}")
      best = next((o for o in optima if o[panel_key] == panel and o[line_key] == line), None)
      if best and best["lr"]:
        ax.axvline(best["lr"], color=color, lw=0.8, ls=":")
        if best["lo"]:
          ax.axvspan(best["lo"], best["hi"], color=color, alpha=0.08)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("peak learning rate")
    ax.set_title(f"{title}: {panel}", fontsize=10)
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("eval loss after decay (nats/token)")
  finite = [r["eval_loss"] for r in rows if r["eval_loss"] is not None]
  if finite:
    lo = min(finite)
    axes[0].set_ylim(lo - 0.05, min(max(finite), lo + 1.5))
  axes[-1].legend(fontsize=8)
  fig.savefig(path, dpi=120)


def fmt(x, spec=".3g"):
  return "-" if x is None else format(x, spec)


def optima_markdown(optima: list[dict], group_keys: tuple[str, ...]) -> str:
  """best_table's rows as a Markdown table."""
  head = "| " + " | ".join(group_keys) + " | optimal LR | interval (+-2 SE) | best grid LR | min eval loss | diverged |"
  lines = [head, "|" + "---|" * (len(group_keys) + 5)]
  for o in optima:
    interval = "open (grid edge)" if o["edge"] else (f"{fmt(o['lo'])} - {fmt(o['hi'])}" if o["lo"] else "-")
    lines.append("| " + " | ".join(str(o[k]) for k in group_keys) + f" | {fmt(o['lr'])} | {interval} | "
                 f"{fmt(o['best_lr'])} | {fmt(o['min_eval_loss'], '.4f')} | {o['diverged']} |")
  return "\n".join(lines)


def load_line(load: dict) -> str:
  return (f"wall {load['wall_s']:.0f} s; load average {load['load_min']:.1f} - {load['load_max']:.1f} "
          f"(mean {load['load_mean']}, {load['load_samples']} samples) on {load['cores']} cores")


def run_groups(out: str, groups: list[dict], config_of, lrs_of, swept_of=None) -> tuple[list[dict], dict]:
  """Run one sweep per group (a dict of the group's keys, e.g. {"width": 64}); rows are
  appended to OUT/rows.jsonl as each group finishes, and groups already there are skipped,
  so an interrupted study resumes. Returns (rows, record): record holds the machine, the
  summed wall time and the load samples of every group, including earlier invocations."""
  os.makedirs(out, exist_ok=True)
  path = os.path.join(out, "rows.jsonl")
  done = []
  if os.path.exists(path):
    with open(path) as f:
      done = [json.loads(line) for line in f if line.strip()]
  key = lambda g: json.dumps(g, sort_keys=True)  # noqa: E731
  finished = {key({k: r[k] for k in g}) for r in done for g in groups if all(k in r for k in g)}
  for g in groups:
    if key(g) in finished:
      continue
    cfg = config_of(g)
    with LoadSampler() as load:
      rows = sweep(cfg, lrs_of(g), swept=swept_of(g) if swept_of else "all")
    info = load.summary()
    tokens = cfg.train.steps * cfg.train.batch_size * cfg.data.seq_len
    rows = [{**g, "steps": cfg.train.steps, "tokens": tokens, **r, "group_wall_s": info["wall_s"],
             "group_load": [s[1] for s in load.samples]} for r in rows]
    with open(path, "a") as f:
      f.writelines(json.dumps(r) + "\n" for r in rows)
    done += rows
    print(f"{g}: " + " ".join(f"{r['lr']:.2g}:{fmt(r['eval_loss'], '.3f')}" for r in rows)
          + f"  ({info['wall_s']:.0f} s, load {info['load_mean']})", flush=True)
  rows, walls, loads = [], {}, {}
  for r in done:
    for g in groups:
      if all(r.get(k) == v for k, v in g.items()):
        rows.append(r)
        walls[key(g)], loads[key(g)] = r["group_wall_s"], r["group_load"]
  loads = [x for samples in loads.values() for x in samples] or [float("nan")]
  record = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine(),
            "wall_s": round(sum(walls.values()), 1), "load_min": min(loads), "load_max": max(loads),
            "load_mean": round(float(np.mean(loads)), 2), "load_samples": len(loads), "cores": os.cpu_count(),
            "uptime_end": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()}
  return rows, record


KEEP_MARKER = "<!-- written by hand: a rerun of the study keeps everything below this line -->"


def write_readme(out: str, title: str, design: str, record: dict, body: str, quiet_minutes: float) -> None:
  """OUT/README.md: what was run (command, date, machine, load, wall time) and the tables.
  A README already there keeps what follows its KEEP_MARKER line (a person's reading of the
  tables), so regenerating the tables never deletes it."""
  text = f"""# {title}

Written by `{record['command']}` on {record['date']}.

Machine: {record['machine']}. The machine is shared: {load_line(record)}; uptime at the end:
`{record['uptime_end']}`. The design's expected wall time on 2 quiet cores: about
{quiet_minutes:.0f} minutes.

## Design

{design.strip()}

## Results

{body.strip()}

Files: `results.csv` (one row per run: eval loss after the decay, last train loss, divergence),
`optima.csv` (the optimum per group, from a parabola in log2(lr) through the best five points,
+-2 standard errors), `rows.jsonl` (the same rows with their loss curves), `run.json` (the record above).
"""
  path = os.path.join(out, "README.md")
  if os.path.exists(path):
    with open(path) as f:
      old = f.read()
    if KEEP_MARKER in old:
      text += "\n" + KEEP_MARKER + old.split(KEEP_MARKER, 1)[1]
  with open(path, "w") as f:
    f.write(text)
