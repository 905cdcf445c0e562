"""What greedy decoding costs on this machine: time, throughput, bytes read, bandwidth use.

One way of timing and pricing lm's KV-cache decoding, shared by experiments.bench.inference
(lm against transformers' generate()) and experiments.studies.quality_vs_cost (the model ladder):

  t(1) = generate 1 new token (prefill + first token), t(N) = generate N; each a median of repeats
  prefill tok/s = B x P / t(1)
  ms per token  = (t(N) - t(1)) / (N - 1)      each of the B sequences gets one token a step
  decode tok/s  = B / that
  bytes a step  = every weight once (an untied embedding table only B rows of it: left out)
                  + lm's whole KV cache (it attends over all slots, masked)
  BW util       = bytes a step x steps/s / the copy bandwidth

The copy bandwidth is measured in the same process (jit(x * c) on a donated 512 MiB float32
array: 512 MiB read + 512 MiB written); the read-only bandwidth (the faster of a sum and a
matrix-vector product over the array) is measured beside it: decoding mostly reads, so it is the
tighter roof. A "side" is anything with run(prompts, new_tokens) -> seconds and last_tokens
(TimedDecoder here; the benchmark's transformers side); timings() interleaves the sides' runs
so a change of machine load hits all of them alike.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from lm import decode
from lm.model import Transformer, init_params


def measure_bandwidth() -> dict:
  """GB/s of an in-place scale (read + write) and of reading (sum, matvec) over 512 MiB, float32."""
  n = 512 * 2**20 // 4
  scale = jax.jit(lambda x: x * 1.0000001, donate_argnums=0)
  reads = [jax.jit(jnp.sum), jax.jit(lambda x: x.reshape(-1, 2048) @ jnp.ones((2048,), jnp.float32))]
  x = scale(jnp.ones((n,), jnp.float32))
  for f in reads:
    f(x).block_until_ready()
  copy_s, read_s = [], []
  for _ in range(5):
    t = time.perf_counter()
    x = scale(x)
    x.block_until_ready()
    copy_s.append(time.perf_counter() - t)
    for f in reads:
      t = time.perf_counter()
      f(x).block_until_ready()
      read_s.append(time.perf_counter() - t)
  return dict(copy=2 * 4 * n / min(copy_s) / 1e9, read=4 * n / min(read_s) / 1e9)


class TimedDecoder:
  """Greedy lm.decode.generate of one model, timed end to end (the side `lm` of a timing)."""

  def __init__(self, cfg, params=None):
    """Random weights (key 0), or `params`: a trained model's (lm.loading.load(workdir).params)
    or another implementation's weights converted to lm's layout."""
    self.model = Transformer(cfg)
    self.params = init_params(self.model, jax.random.key(0)) if params is None else params
    leaves = jax.tree.leaves(self.params)
    self.weight_bytes = sum(x.nbytes for x in leaves)
    self.n_params = sum(x.size for x in leaves)
    self.table_bytes = self.params["embedding"].nbytes

  def cache_bytes(self, batch: int, slots: int) -> int:
    """Bytes of lm's KV cache for `batch` rows of `slots` slots (shapes only; nothing allocated)."""
    shapes = jax.eval_shape(lambda: decode.init_cache(self.model, batch, slots))
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes))

  def run(self, prompts, new_tokens: int) -> float:
    t = time.perf_counter()
    r = decode.generate(self.model, self.params, prompts, max_new_tokens=new_tokens)
    assert r.tokens.shape == (len(prompts), new_tokens)
    self.last_tokens = r.tokens
    return time.perf_counter() - t


def costs(t1: float, tn: float, batch: int, prompt_len: int, new_tokens: int) -> dict:
  """Throughputs from the times to generate 1 and N new tokens (the module docstring)."""
  step_s = (tn - t1) / (new_tokens - 1)
  return dict(prefill_tok_s=batch * prompt_len / t1, decode_tok_s=batch / step_s, ms_per_token=1e3 * step_s)


def step_bytes(decoder: TimedDecoder, batch: int, slots: int) -> tuple[int, int]:
  """(KV-cache bytes, bytes one decode step reads): every weight once, but only B rows of
  an untied embedding table (left out); the whole cache of `slots` positions."""
  kv = decoder.cache_bytes(batch, slots)
  return kv, decoder.weight_bytes - (0 if decoder.model.cfg.tie_embeddings else decoder.table_bytes) + kv


def timings(sides: dict, prompts, new_tokens: int, repeats: int) -> dict:
  """{side: {n: [seconds, ...]}} for n = 1 and N, the sides' runs interleaved, after a warm-up."""
  runs = {name: {1: [], new_tokens: []} for name in sides}
  for name, side in sides.items():  # warm-up: compiles (lm) and first-touch allocations
    side.run(prompts, 1)
    side.run(prompts, new_tokens)
  for _ in range(repeats):
    for name, side in sides.items():
      for n in (1, new_tokens):
        runs[name][n].append(side.run(prompts, n))
  return runs
