"""The coordinate check (Yang et al. 2022, "Tensor Programs V", sec. 5 and fig. 5): train
models of several widths a few steps and record each activation's RMS; under µP the curves
are flat in width, under SP they grow.

    python -m lm.coord_check --out=coord.png [--widths=32,64,128,256 --steps=4 --lr=0.01]

    rms = run(widths=(32, 64, 128, 256), parameterization="mup", steps=4)
    rms[width][step]["layer_0/mlp"]        # RMS after `step` optimizer steps (0: at init)
    slope(rms, "layer_0/mlp", step=4)      # log-log slope of RMS against width

Why it works: with Adam, an update changes every entry of a hidden matrix by about lr, in
directions correlated with the input, so after t steps a hidden activation has moved by
about t * lr * fan_in under SP (slope 1 in width once the change outgrows the init) and by
t * lr * fan_in / m = constant under µP (slope 0). At init µP is flat (its std of
1/sqrt(fan_in) keeps each activation O(1)); SP's fixed std (0.02, GPT-2's) lets the attention
and MLP outputs grow about as width^1 already at step 0, under the residual stream, which the
fixed-std embedding keeps flat. The models here are lm's Transformer at d_model = width with
4 heads (head_dim grows with the width, so µP's 1/head_dim attention scale is exercised)
and d_ff = 4 width, the base model being the narrowest. Every step trains on one batch of
32 uniform random tokens, the same at every width, and measures on it.

Why one small batch: µP's rule assumes an update correlated with the input, the regime of
width >> the gradient's rank (Yang et al.'s limit: width to infinity, batch fixed). With a
fresh batch of 256 random tokens per step, wider than three of the four widths, Adam's
sign-like update of a nearly full-rank, random gradient moved activations by about
lr sqrt(fan_in) instead, and µP's 1/m overcorrected: slopes of -0.4 to -0.6 after 4 steps
(SP +2.0 to +3.3). With this batch µP's slopes lay within +-0.2 (SP +2.5 to +3.0). Real
text at lm's batch sizes sits between the two; experiments/studies/lr_transfer.py measures
what that does to the optimal LR. No clipping, no decay, constant LR: each would mix a width
dependence in.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from lm import optim
from lm import schema
from lm import sharding
from lm import steps as steps_lib
from lm.model import ModelConfig, Transformer, init_params

VOCAB, SEQ, BATCH, HEADS, LAYERS = 256, 16, 2, 4, 2  # 32 tokens: fewer than the narrowest width


def model_config(width: int, parameterization: str, base_width: int, **overrides) -> ModelConfig:
  """lm's model at d_model = width: 4 heads, d_ff = 4 width; µP relative to base_width."""
  kw = dict(n_layers=LAYERS, d_model=width, n_heads=HEADS, n_kv_heads=HEADS, d_ff=4 * width,
            max_seq_len=SEQ, attention="reference", parameterization=parameterization)
  if parameterization == "mup":
    kw.update(base_width=base_width, base_head_dim=base_width // HEADS)
  kw.update(overrides)
  return ModelConfig(vocab_size=VOCAB, **kw)


def optim_config(lr: float) -> ConfigDict:
  o = schema.defaults().optim
  o.update(lr=lr, schedule="constant", warmup_steps=0, weight_decay=0.0, clip_norm=0.0)
  return o


def activation_rms(model: Transformer, params, tokens_BL) -> dict[str, jax.Array]:
  """RMS of the embedding output, of each layer's attention and MLP branch and block output,
  and of the logits (flax's captured module outputs)."""
  logits_BLV, state = model.apply({"params": params}, tokens_BL, capture_intermediates=True)
  inter = state["intermediates"]
  rms = lambda x: jnp.sqrt(jnp.mean(jnp.square(x.astype(jnp.float32))))  # noqa: E731
  out = {"embedding": rms(jnp.take(params["embedding"], tokens_BL, axis=0))}
  for i in range(model.cfg.n_layers):
    layer = inter[f"layer_{i}"]
    out[f"layer_{i}/attn"] = rms(layer["attn"]["__call__"][0])
    out[f"layer_{i}/mlp"] = rms(layer["mlp"]["__call__"][0])
    out[f"layer_{i}"] = rms(layer["__call__"][0][0])  # a block returns (x, None)
  out["logits"] = rms(logits_BLV)
  return out


def batch(seed: int = 0) -> dict:
  """BATCH x SEQ uniform random tokens: the one batch every step trains on and measures."""
  tokens = np.random.default_rng(seed).integers(0, VOCAB, (BATCH, SEQ + 1)).astype(np.int32)
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "segment_ids": np.ones((BATCH, SEQ), np.int32),
          "positions": np.tile(np.arange(SEQ, dtype=np.int32), (BATCH, 1))}


def run(widths=(32, 64, 128, 256), parameterization: str = "mup", steps: int = 4, lr: float = 1e-2,
        seed: int = 0, optimizer: str = "adamw", **model_overrides) -> dict[int, list[dict[str, float]]]:
  """{width: [RMS per activation after 0, 1, ..., steps optimizer steps]}, base = min(widths)."""
  o = optim_config(lr)
  o.name = optimizer
  data = batch(seed)
  out = {}
  for width in widths:
    cfg = model_config(width, parameterization, min(widths), **model_overrides)
    model = Transformer(cfg)
    opt, schedule = optim.make_optimizer(o, steps, cfg)
    params = init_params(model, jax.random.key(seed))
    state = {"step": jnp.int32(0), "params": params, "opt_state": opt.init(params)}
    train_step = steps_lib.make_train_step(model, opt, schedule)
    def step_and_measure(state, batch):  # noqa: E306 (one compiled program per width)
      return train_step(state, batch)[0], activation_rms(model, state["params"], batch["inputs"])
    # Compiled at XLA's level 0, as sharding.run_once does for init: the programs are tiny and
    # run a few times, so compiling dominates (8 models took ~400 s at the default level on 2
    # busy cores).
    step = sharding.compile_once(step_and_measure, state, data)
    record = []
    for _ in range(steps + 1):
      state, rms = step(state, data)  # the RMS before this step's update
      record.append(rms)
    out[width] = [{k: float(v) for k, v in r.items()} for r in jax.device_get(record)]
  return out


def slope(rms: dict, name: str, step: int) -> float:
  """The least-squares slope of log RMS against log width for one activation after `step` steps."""
  widths = sorted(rms)
  x = np.log([float(w) for w in widths])
  y = np.log([rms[w][step][name] for w in widths])
  return float(np.polyfit(x, y, 1)[0])


def hidden_names(n_layers: int = LAYERS) -> list[str]:
  """The hidden activations: every layer's attention and MLP branch outputs and block output."""
  return [f"layer_{i}{part}" for i in range(n_layers) for part in ("/attn", "/mlp", "")]


def plot(results: dict[str, dict], path: str) -> None:
  """One row per parameterization, one panel per recorded step: RMS against width, log-log."""
  from matplotlib.figure import Figure  # local: plotting is only for the command line
  names = list(next(iter(next(iter(results.values())).values()))[0])
  n_steps = len(next(iter(next(iter(results.values())).values())))
  fig = Figure(figsize=(3.2 * n_steps, 3.0 * len(results)), layout="constrained")
  axes = fig.subplots(len(results), n_steps, squeeze=False, sharey="row")
  for row, (param, rms) in enumerate(results.items()):
    widths = sorted(rms)
    for t in range(n_steps):
      ax = axes[row][t]
      for name in names:
        ax.plot(widths, [rms[w][t][name] for w in widths], marker="o", ms=3, lw=1, label=name)
      ax.set_xscale("log", base=2)
      ax.set_yscale("log")
      ax.set_title(f"{param}: step {t}", fontsize=9)
      ax.set_xlabel("width (d_model)")
      if t == 0:
        ax.set_ylabel("activation RMS")
  axes[0][-1].legend(fontsize=6, loc="best")
  fig.savefig(path, dpi=110)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--widths", default="32,64,128,256")
  p.add_argument("--steps", type=int, default=4)
  p.add_argument("--lr", type=float, default=1e-2)
  p.add_argument("--optimizer", default="adamw", choices=optim.OPTIMIZERS)
  p.add_argument("--out", default="coord_check.png")
  args = p.parse_args(argv)
  widths = tuple(int(w) for w in args.widths.split(","))
  results = {param: run(widths, param, args.steps, args.lr, optimizer=args.optimizer) for param in ("sp", "mup")}
  plot(results, args.out)
  print(f"{'activation':14} " + " ".join(f"{p + ' slope':>10}" for p in results))
  for name in ["embedding"] + hidden_names() + ["logits"]:
    print(f"{name:14} " + " ".join(f"{slope(rms, name, args.steps):10.3f}" for rms in results.values()))
  print(f"wrote {args.out} (log-log slope of RMS against width after {args.steps} steps; µP: near 0)")


if __name__ == "__main__":
  from lm.cli import set_process_defaults  # local: entry points set lm's XLA flags, importing lm does not
  set_process_defaults()
  main()
