"""Is the input pipeline ever the bottleneck? Pipeline tokens/s on one core vs training tokens/s.

    python -m experiments.bench.data [--seconds=10] [--data_dir=DIR]

Measures, in one run:
  1. first use: preparing the embedded corpus (array_record) and training SentencePiece
     bpe 4096 in an empty data_dir, and the unigram baseline;
  2. training tokens/s of a ~10M-parameter Transformer (6 layers, d_model 320, seq 256,
     batch 16): jitted forward + backward + optax.adamw update, all cores;
  3. pipeline tokens/s (tokenize + chunk + shuffle + pack + batch; non-padding targets per
     second) for each tokenizer, with the process pinned to ONE core, over several groups
     so tokenizing is included (not just the first group's leftovers).
The pipeline runs in a reader thread beside training, so what it costs training is about
training_tps / pipeline_tps of one core.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from configs import base
from lm import data


def first_use(data_dir: str) -> dict:
  cfg = base.get_config().data
  cfg.data_dir = data_dir
  t0 = time.perf_counter()
  data.sources.prepare_sotu(data_dir)
  t1 = time.perf_counter()
  tok = data.build_tokenizer(cfg)
  t2 = time.perf_counter()
  baseline = data.unigram_baseline(cfg, tok)
  t3 = time.perf_counter()
  return dict(prepare_s=t1 - t0, sp_train_s=t2 - t1, baseline_s=t3 - t2, baseline=baseline)


def training_tps(vocab_size: int, seq_len: int, batch: int, seconds: float) -> tuple[float, dict]:
  import jax
  import jax.numpy as jnp
  import optax
  from lm.model import ModelConfig, Transformer

  cfg = base.get_config().model
  cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.d_ff = 6, 320, 5, 5, 1280
  cfg.max_seq_len = seq_len
  model = Transformer(ModelConfig.from_config(cfg, vocab_size))
  tokens = jnp.zeros((batch, seq_len), jnp.int32)
  params = jax.jit(model.init)(jax.random.key(0), tokens)["params"]
  params = jax.tree.map(lambda x: getattr(x, "value", x), params, is_leaf=lambda x: hasattr(x, "value"))
  n_params = sum(x.size for x in jax.tree.leaves(params))
  n_embed = vocab_size * cfg.d_model
  opt = optax.adamw(1e-3)
  opt_state = opt.init(params)

  def loss_fn(p, b):
    logits = model.apply({"params": p}, b["inputs"], b["segment_ids"], b["positions"])
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, b["targets"])
    mask = b["segment_ids"] > 0
    return (nll * mask).sum() / mask.sum()

  @jax.jit
  def step(p, s, b):
    loss, grads = jax.value_and_grad(loss_fn)(p, b)
    updates, s = opt.update(grads, s, p)
    return optax.apply_updates(p, updates), s, loss

  rng = np.random.default_rng(0)
  b = {"inputs": rng.integers(3, vocab_size, (batch, seq_len), dtype=np.int32),
       "targets": rng.integers(3, vocab_size, (batch, seq_len), dtype=np.int32),
       "segment_ids": np.ones((batch, seq_len), np.int32),
       "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), (batch, seq_len)).copy()}
  params, opt_state, loss = step(params, opt_state, b)  # compile
  loss.block_until_ready()
  n, t0 = 0, time.perf_counter()
  while time.perf_counter() - t0 < seconds or n < 3:
    params, opt_state, loss = step(params, opt_state, b)
    loss.block_until_ready()
    n += 1
  dt = time.perf_counter() - t0
  return n * batch * seq_len / dt, dict(params=n_params, nonembedding=n_params - n_embed, ms=1e3 * dt / n)


def pipeline_tps(data_cfg, tokenizer, batch: int, seconds: float) -> dict:
  it = data.train_iterator(data_cfg, tokenizer, batch, seed=0, process_index=0, process_count=1)
  t0 = time.perf_counter()
  next(it)
  first = time.perf_counter() - t0
  n_tokens = n_slots = n = 0
  t0 = time.perf_counter()
  while time.perf_counter() - t0 < seconds or n < 10:
    b = next(it)
    n_tokens += int((b["segment_ids"] > 0).sum())
    n_slots += b["segment_ids"].size
    n += 1
  dt = time.perf_counter() - t0
  return dict(tps=n_tokens / dt, ms=1e3 * dt / n, first_s=first, padding=1 - n_tokens / n_slots,
              tokens=n_tokens)


def main():
  p = argparse.ArgumentParser(prog="python -m experiments.bench.data", description=__doc__.split("\n")[0])
  p.add_argument("--seconds", type=float, default=10.0, help="timed seconds per measurement")
  p.add_argument("--data_dir", default=None, help="prepared data (default: a fresh temp dir)")
  args = p.parse_args()
  seq_len, batch = 256, 16
  n_cores = len(os.sched_getaffinity(0))
  load = os.getloadavg()[0]

  with tempfile.TemporaryDirectory() as tmp:
    data_dir = args.data_dir or tmp
    fu = first_use(data_dir)
    print(f"first use in an empty data_dir: prepare sotu {fu['prepare_s']:.1f} s, "
          f"SentencePiece bpe 4096 {fu['sp_train_s']:.1f} s, unigram baseline {fu['baseline_s']:.1f} s")
    bl = fu["baseline"]
    print(f"unigram baseline (bpe 4096, validation): {bl['nats_per_token']:.3f} nats/token, "
          f"{bl['bits_per_byte']:.3f} bits/byte over {bl['eval_tokens']:,} tokens\n")

    # Training first: XLA's threads are created while the process may use every core.
    train = {v: training_tps(v, seq_len, batch, args.seconds) for v in (4096, 259)}

    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # threads made later inherit
    rows = []
    for name, overrides in [("sentencepiece bpe 4096", dict(sp_model_type="bpe")),
                            ("sentencepiece unigram 4096", dict(sp_model_type="unigram")),
                            ("bytes (vocab 259)", dict(tokenizer="bytes"))]:
      cfg = base.get_config().data
      cfg.data_dir, cfg.seq_len = data_dir, seq_len
      cfg.update(overrides)
      tok = data.build_tokenizer(cfg)
      rows.append((name, tok.vocab_size, pipeline_tps(cfg, tok, batch, args.seconds)))

  print(f"seq_len {seq_len}, global batch {batch} ({seq_len * batch:,} tokens/step); pipeline pinned to "
        f"1 core, training on {n_cores}; load average at start {load:.1f} (other work skews both)")
  print(f"{'pipeline (tokenize+pack+batch)':<30} {'tokens/s':>12} {'ms/batch':>9} {'1st batch':>10} "
        f"{'padding':>8} | {'train tokens/s':>14} {'pipeline/train':>15}")
  for name, vocab, r in rows:
    t_tps, _ = train[4096 if vocab == 4096 else 259]
    print(f"{name:<30} {r['tps']:>12,.0f} {r['ms']:>9.2f} {r['first_s']:>9.2f}s {r['padding']:>8.2%} | "
          f"{t_tps:>14,.0f} {r['tps'] / t_tps:>14,.0f}x")
  for vocab, (t_tps, info) in train.items():
    print(f"training model: vocab {vocab}, 6 x d_model 320, {info['params'] / 1e6:.1f}M params "
          f"({info['nonembedding'] / 1e6:.1f}M non-embedding), {info['ms']:.0f} ms/step, {t_tps:,.0f} tokens/s")


if __name__ == "__main__":
  from lm.cli import set_process_defaults  # the entry point's process-wide settings (XLA flags, malloc), before jax starts
  set_process_defaults()
  main()
