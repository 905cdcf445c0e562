"""Packed-sequence check of every attention implementation, on whatever backend jax has.

    python -m experiments.bench.packed_attention [--implementations=reference,xla,cudnn] [--dtypes=...]

MaxText once shipped cuDNN flash attention that silently ignored segment ids
(AI-Hypercomputer/maxtext#4478): packed documents attended to each other and nothing failed.
Here a small Llama-like model (2 layers, d_model 256, 4 heads of 64; init std 0.2 so that its
attention is peaked and a leak between documents moves the logits) reads one row that packs
three documents (100, 60 and 96 tokens; positions restart at 0 in each) and each document
alone. For each implementation and compute dtype it prints, relative to the largest logit:
  packed   max |logits of a document in the packed row - logits of the document alone|;
  leak     the same with every segment id set to 1 (the documents see each other): what a
           kernel that ignored segment ids would give;
  grad     |d loss / d params, packed - alone| / |alone|, the loss being one document's mean
           token NLL (the backward must keep the documents apart too).
A row passes when packed and grad are within the dtype's tolerance and leak is at least 10x the
tolerance (so the check can fail). cuDNN runs on NVIDIA GPUs in bf16/fp16 only; rows a backend
cannot run say why. Exit status 1 if any row that ran failed.
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np

DOCS = (100, 60, 96)  # even lengths: cuDNN's masked (biased) training path needs them
TOLERANCE = {"float32": 1e-4, "bfloat16": 3e-2}  # of the largest |logit|; grads: of |grad|


def model_for(implementation: str, dtype: str, max_seq_len: int = sum(DOCS)):
  from lm.model import ModelConfig, Transformer
  cfg = ModelConfig(vocab_size=512, n_layers=2, d_model=256, n_heads=4, n_kv_heads=4, d_ff=512,
                    max_seq_len=max_seq_len, attention=implementation, dtype=dtype, init_std=0.2)
  return Transformer(cfg)


def doc_loss(model, params, tokens_BL, segments_BL, positions_BL, start, length: int):
  """Mean next-token NLL over one document's tokens (inside the row, from `start`, traced)."""
  logits = model.apply({"params": params}, tokens_BL, segments_BL, positions_BL).astype(jnp.float32)
  logp = jax.nn.log_softmax(jax.lax.dynamic_slice_in_dim(logits[0], start, length - 1), axis=-1)
  targets = jax.lax.dynamic_slice_in_dim(tokens_BL[0], start + 1, length - 1)
  return -jnp.mean(jnp.take_along_axis(logp, targets[:, None], axis=-1))


def check(implementation: str, dtype: str, seed: int = 0, docs: tuple[int, ...] = DOCS) -> dict:
  """The worst relative differences over the documents (module docstring) and whether they pass."""
  from lm.model import init_params
  model = model_for(implementation, dtype, sum(docs))
  params = init_params(model, jax.random.key(seed))
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, 512, (1, sum(docs))).astype(np.int32)
  segments = np.concatenate([np.full(n, i + 1) for i, n in enumerate(docs)])[None].astype(np.int32)
  positions = np.concatenate([np.arange(n) for n in docs])[None].astype(np.int32)
  forward = jax.jit(lambda t, s, p: model.apply({"params": params}, t, s, p).astype(jnp.float32))
  grad = jax.jit(jax.grad(doc_loss, argnums=1), static_argnums=(0, 6))
  packed = np.asarray(forward(tokens, segments, positions))
  leaked = np.asarray(forward(tokens, np.ones_like(segments), positions))
  worst = dict(packed=0.0, leak=0.0, grad=0.0)
  start = 0
  for n in docs:
    alone_t, alone_p = tokens[:, start:start + n], positions[:, start:start + n]
    alone = np.asarray(forward(alone_t, np.ones_like(alone_t), alone_p))
    scale = np.abs(alone).max()
    worst["packed"] = max(worst["packed"], np.abs(packed[:, start:start + n] - alone).max() / scale)
    worst["leak"] = max(worst["leak"], np.abs(leaked[:, start:start + n] - alone).max() / scale)
    g_packed = grad(model, params, tokens, segments, positions, start, n)
    g_alone = grad(model, params, alone_t, np.ones_like(alone_t), alone_p, 0, n)
    diff = jax.tree.map(lambda a, b: jnp.sum((a.astype(jnp.float32) - b.astype(jnp.float32)) ** 2), g_packed, g_alone)
    norm = jax.tree.map(lambda b: jnp.sum(b.astype(jnp.float32) ** 2), g_alone)
    worst["grad"] = max(worst["grad"], float(np.sqrt(sum(jax.tree.leaves(diff)) / sum(jax.tree.leaves(norm)))))
    start += n
  tol = TOLERANCE[dtype]
  ok = worst["packed"] <= tol and worst["grad"] <= tol and worst["leak"] >= 10 * tol
  return {**worst, "tolerance": tol, "passed": bool(ok)}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m experiments.bench.packed_attention", description=__doc__.split("\n")[0])
  p.add_argument("--implementations", default="reference,xla,cudnn")
  p.add_argument("--dtypes", default="float32,bfloat16")
  args = p.parse_args(argv)
  device = jax.devices()[0]
  print(f"jax {jax.__version__} on {device.device_kind}; documents {DOCS} packed in one row; "
        "differences relative to the largest |logit| of the document alone (grad: to |grad|)")
  print(f"{'attention':10} {'dtype':9} {'packed':>9} {'leak':>9} {'grad':>9} {'tolerance':>9}  result")
  failed = False
  for implementation in args.implementations.split(","):
    for dtype in args.dtypes.split(","):
      if implementation == "cudnn" and (device.platform != "gpu" or dtype == "float32"):
        print(f"{implementation:10} {dtype:9} skipped: cuDNN attention runs on NVIDIA GPUs in bf16/fp16")
        continue
      try:
        r = check(implementation, dtype)
      except Exception as e:  # a backend that cannot run it: say so, check the rest
        print(f"{implementation:10} {dtype:9} error: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
        failed = True
        continue
      failed |= not r["passed"]
      print(f"{implementation:10} {dtype:9} {r['packed']:>9.2e} {r['leak']:>9.2e} {r['grad']:>9.2e} "
            f"{r['tolerance']:>9.0e}  {'PASS' if r['passed'] else 'FAIL'}", flush=True)
  return int(failed)


if __name__ == "__main__":
  sys.exit(main())
