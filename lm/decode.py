"""Generation with a KV cache: a left-padded prefill, then one jitted decode loop.

    result = generate(model, params, [[5, 17, 3], [8]], max_new_tokens=32, temperature=0.8, top_p=0.9)
    result.tokens     # int32 [B, N]: the new tokens; after a row's EOS, pad_id
    result.lengths    # int32 [B]: new tokens per row, its EOS included
    result.logprobs   # float32 [B, N]: the model's log-probability of each (return_logprobs=True)

Layout. Prompts of lengths n_b are left-padded to one length P (rounded up to a multiple
of `bucket`, so nearby prompt lengths share a compile). Row b's tokens fill slots
P - n_b ... P - 1 with positions 0 ... n_b - 1 (a padded prompt starts at position 0, as
HF generate does with left padding) and segment id 1; pads have segment id 0, which no
real token attends to. New token i of every row then sits in the same slot P + i - 1, so
each cache write is one dynamic_update_slice and the cache holds S = P + N - 1 slots.

Loop. `_start` (jit): a zero cache, the prefill (logits of the last slot only), token 0.
`_advance` (jit, state donated): a lax.while_loop whose step feeds the previous token at
position n_b + i - 1 and samples token i; it stops after `stop` tokens or once every row
has emitted EOS. The loop state comes back to the host between calls, so `stream` runs
the same compiled loop in chunks and yields each chunk's tokens as it is done. A CLI
streams with `for chunk in stream(..., chunk_tokens=8)`, decoding all tokens so far and
printing the new suffix of the text (a multi-byte character may straddle two chunks).

Sampling (HF's order): temperature, then top-k, then top-p over the renormalised top-k.
temperature=0 is greedy (argmax; top_k and top_p are ignored). The key of token i of row b
is fold_in(fold_in(key(seed), i), b): a row's sample does not depend on the chunking.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterator, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn

from lm import sharding, steps
from lm.model import Transformer, unstack_layers


@dataclasses.dataclass(frozen=True)
class GenerateResult:
  tokens: np.ndarray           # int32 [B, N]; tokens[b, lengths[b]:] are pad_id
  lengths: np.ndarray          # int32 [B]
  logprobs: np.ndarray | None  # float32 [B, N]: log p(token | prefix) at temperature 1, 0 after the end

  def sequences(self) -> list[list[int]]:
    return [row[:n].tolist() for row, n in zip(self.tokens, self.lengths)]


class Prompts(NamedTuple):
  """A left-padded batch (see the module docstring)."""
  tokens_BP: np.ndarray
  segment_ids_BP: np.ndarray   # 1 on real tokens, 0 on padding
  positions_BP: np.ndarray     # 0 ... n_b - 1 on the real tokens, 0 on padding
  lengths_B: np.ndarray        # n_b
  active_B: np.ndarray         # False on rows added only to fill the mesh's batch shards


class _Static(NamedTuple):
  """What the compiled loop depends on structurally (hashable: a jit static argument)."""
  model: Transformer           # the decode=True twin
  greedy: bool
  top_k: int | None
  top_p: bool                  # whether nucleus filtering is on; its value is traced
  mesh: jax.sharding.Mesh | None
  rules: tuple | None


class State(NamedTuple):
  cache: dict
  tokens_BN: jax.Array
  logprobs_BN: jax.Array
  last_B: jax.Array            # the token to feed next ...
  positions_B: jax.Array       # ... and its position
  done_B: jax.Array
  lengths_B: jax.Array
  step: jax.Array              # tokens sampled so far
  key: jax.Array


# ---- inputs ----

def check_prompts(prompts, vocab_size: int, max_seq_len: int, max_new_tokens: int) -> list[np.ndarray]:
  """Token-id lists -> int arrays, with an error naming the fix for anything unusable."""
  if hasattr(prompts, "__array__") and not isinstance(prompts, np.ndarray):
    prompts = np.asarray(prompts)  # a jax array [B, L]
  if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence) and not isinstance(prompts, np.ndarray):
    raise ValueError(f"prompts must be a list of token-id lists, got {type(prompts).__name__}; tokenize the "
                     "text first (e.g. [tokenizer.encode(text)]).")
  if len(prompts) == 0:
    raise ValueError("prompts is empty; pass at least one prompt (a list of token ids).")
  if int(max_new_tokens) < 1:
    raise ValueError(f"max_new_tokens={max_new_tokens} must be at least 1.")
  out = []
  for b, p in enumerate(prompts):
    if isinstance(p, (str, bytes)):
      raise ValueError(f"prompt {b} is text ({p[:20]!r}...); pass token ids (tokenizer.encode(text)).")
    if np.ndim(p) == 0:
      raise ValueError(f"prompt {b} is a single id ({p!r}), not a list; a single prompt is [ids], "
                       "so prompts=[[...]].")
    arr = np.asarray(p)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
      raise ValueError(f"prompt {b} must be a flat list of integer token ids, got shape {arr.shape} "
                       f"dtype {arr.dtype}.")
    if arr.size == 0:
      raise ValueError(f"prompt {b} is empty; generation needs at least one token to condition on "
                       "(start it with the tokenizer's BOS id).")
    bad = arr[(arr < 0) | (arr >= vocab_size)]
    if bad.size:
      raise ValueError(f"prompt {b} has token id {int(bad[0])} outside the vocabulary [0, {vocab_size}); "
                       "was it made by a different tokenizer than the model's (data.tokenizer, data.vocab_size)?")
    if arr.size + max_new_tokens > max_seq_len:
      fixes = ([f"keep the prompt's last {max_seq_len - max_new_tokens} tokens"] if max_seq_len > max_new_tokens else [])
      fixes += [f"lower max_new_tokens to {max_seq_len - arr.size}"] if max_seq_len > arr.size else []
      raise ValueError(  # only fixes that leave a token to condition on and one to generate
          f"prompt {b} has {arr.size} tokens + max_new_tokens={max_new_tokens} = {arr.size + max_new_tokens} "
          f"> the model's context model.max_seq_len={max_seq_len}; {', '.join(fixes + [''])}"
          f"{'or ' if fixes else ''}use a model with a longer context.")
    out.append(arr.astype(np.int32))
  return out


def left_pad(prompts: list[np.ndarray], bucket: int = 16, batch_multiple: int = 1) -> Prompts:
  """Right-align the prompts in [B', P]: P a multiple of `bucket`, B' of `batch_multiple`."""
  n = len(prompts)
  lengths = np.array([len(p) for p in prompts], np.int32)
  width = -(-int(lengths.max()) // bucket) * bucket        # ceil to the bucket
  rows = -(-n // batch_multiple) * batch_multiple            # filler rows: one token, inactive
  lengths = np.concatenate([lengths, np.ones(rows - n, np.int32)])
  tokens = np.zeros((rows, width), np.int32)
  segment_ids = np.zeros((rows, width), np.int32)
  positions = np.zeros((rows, width), np.int32)
  for b, k in enumerate(lengths):
    if b < n:
      tokens[b, width - k:] = prompts[b]
    segment_ids[b, width - k:] = 1
    positions[b, width - k:] = np.arange(k)
  return Prompts(tokens, segment_ids, positions, lengths, np.arange(rows) < n)


def decoding(model: Transformer) -> Transformer:
  """The decode=True twin of a Transformer (same parameters), reading its cache (not fresh_cache)."""
  return model if model.decode and not model.fresh_cache else Transformer(model.cfg, decode=True)


def _unwrap(params):
  return params["params"] if isinstance(params, dict) and set(params) == {"params"} else params


# ---- the cache and one model call ----

def _abstract_cache(model: Transformer, batch: int, slots: int):
  """Boxed ShapeDtypeStructs of a cache of `slots` slots (init traced, nothing computed)."""
  tokens = jnp.zeros((batch, slots), jnp.int32)
  return jax.eval_shape(lambda: decoding(model).init(jax.random.key(0), tokens))["cache"]


def _zeros_cache(model: Transformer, batch: int, slots: int):
  """A zero cache, each array constrained to its logical axes (batch, kv_heads, ...)."""
  abstract = _abstract_cache(model, batch, slots)
  specs = nn.get_partition_spec(abstract)
  def zeros(leaf, spec):
    x = jnp.zeros(leaf.shape, leaf.dtype)
    return nn.with_logical_constraint(x, tuple(spec)) if spec else x
  return jax.tree.map(zeros, nn.meta.unbox(abstract), specs,
                      is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))


def init_cache(model: Transformer, batch: int, slots: int, mesh=None, rules=None) -> dict:
  """An empty (zero) cache for `batch` rows of `slots` tokens; on the mesh if one is given."""
  if mesh is None:
    return _zeros_cache(model, batch, slots)
  with _context(mesh, rules):
    return jax.jit(lambda: _zeros_cache(model, batch, slots))()


def forward_with_cache(model, params, cache, tokens_BL, segment_ids_BL, positions_BL, last_only=False,
                       fresh=False):
  """Run L tokens through the model, reading and extending the cache -> (logits, cache).

  The tokens go into the next L free slots of every row; size the cache for the whole
  sequence (a write past the last slot is clamped by dynamic_update_slice and overwrites it).
  fresh=True: the tokens start the cache again (slots 0 ... L - 1, whatever it held), without
  attending over its slots; on a new cache the logits and the cache are fresh=False's, to rounding.
  """
  decoder = Transformer(model.cfg, decode=True, fresh_cache=fresh)
  logits, mutated = decoder.apply({"params": _unwrap(params), "cache": cache}, tokens_BL, segment_ids_BL,
                                  positions_BL, last_only=last_only, mutable=["cache"])
  return logits, mutated["cache"]


# ---- sampling ----

def sample_logits(logits_BV, keys_B, temperature, top_k: int | None, top_p) -> jax.Array:
  """One token per row from softmax(logits / temperature), filtered by top-k then top-p.

  `top_p=None` turns nucleus filtering off; otherwise it is a (traced) float in (0, 1].
  """
  v = logits_BV.shape[-1]
  x_BV = logits_BV.astype(jnp.float32) / temperature
  if top_k is not None and top_k < v:
    x_BC, ids_BC = jax.lax.top_k(x_BV, top_k)   # C candidates, sorted, ties to the lower id
  elif top_p is not None:
    x_BC, ids_BC = jax.lax.top_k(x_BV, v)       # the whole vocabulary, sorted
  else:
    x_BC, ids_BC = x_BV, None
  if top_p is not None:
    p_BC = jax.nn.softmax(x_BC, axis=-1)
    before_BC = jnp.cumsum(p_BC, axis=-1) - p_BC  # mass of the likelier candidates
    x_BC = jnp.where(before_BC < top_p, x_BC, -jnp.inf)  # always keeps the first
  choice_B = jax.vmap(jax.random.categorical)(keys_B, x_BC)
  if ids_BC is None:
    return choice_B.astype(jnp.int32)
  return jnp.take_along_axis(ids_BC, choice_B[:, None], axis=-1)[:, 0].astype(jnp.int32)


def first_argmax(x_BV: jax.Array) -> jax.Array:
  """jnp.argmax(x_BV, axis=-1) as int32 (the first maximum; the first NaN where there is one),
  as two plain reductions: XLA:CPU runs argmax's (value, index) reduce element by element, and
  inside the decode loop it took 0.9-2.6 ms of a llama-100m batch-8 step for [8, 4096] logits on
  the 2026-12-03 Xeon; a max and a min vectorise."""
  v = x_BV.shape[-1]
  max_B1 = jnp.max(x_BV, axis=-1, keepdims=True)
  hit_BV = (x_BV == max_B1) | jnp.isnan(x_BV)
  ids_BV = jax.lax.broadcasted_iota(jnp.int32, x_BV.shape, x_BV.ndim - 1)
  return jnp.min(jnp.where(hit_BV, ids_BV, v), axis=-1)


def _choose(static: _Static, logits_BV, key, step, temperature, top_p):
  """(token_B, log-probability_B) of token number `step`."""
  if static.greedy:
    token_B = first_argmax(logits_BV)
  else:
    step_key = jax.random.fold_in(key, step)
    keys_B = jax.vmap(lambda b: jax.random.fold_in(step_key, b))(jnp.arange(logits_BV.shape[0]))
    token_B = sample_logits(logits_BV, keys_B, temperature, static.top_k, top_p if static.top_p else None)
  logp_BV = jax.nn.log_softmax(logits_BV.astype(jnp.float32), axis=-1)
  return token_B, jnp.take_along_axis(logp_BV, token_B[:, None], axis=-1)[:, 0]


def _record(state: State, token_B, logp_B, cache, eos_E, pad_id) -> State:
  """Write token number `state.step` (pad_id for finished rows) and advance the counters."""
  i = state.step
  token_B = jnp.where(state.done_B, pad_id, token_B)
  tokens_BN = jax.lax.dynamic_update_slice(state.tokens_BN, token_B[:, None], (0, i))
  logp_B = jnp.where(state.done_B, 0.0, logp_B)
  logprobs_BN = jax.lax.dynamic_update_slice(state.logprobs_BN, logp_B[:, None], (0, i))
  lengths_B = state.lengths_B + (~state.done_B).astype(jnp.int32)
  done_B = state.done_B | jnp.any(token_B[:, None] == eos_E[None, :], axis=1)
  return State(cache, tokens_BN, logprobs_BN, token_B, state.positions_B + 1, done_B, lengths_B, i + 1,
               state.key)


# ---- the two compiled pieces ----

def _start(static: _Static, max_new_tokens: int, params, tokens_BP, segment_ids_BP, positions_BP, lengths_B,
           active_B, key, temperature, top_p, eos_E, pad_id) -> State:
  b, p = tokens_BP.shape
  cache = _zeros_cache(static.model, b, p + max_new_tokens - 1)
  logits_B1V, cache = forward_with_cache(static.model, params, cache, tokens_BP, segment_ids_BP, positions_BP,
                                         last_only=True, fresh=True)
  token_B, logp_B = _choose(static, logits_B1V[:, 0], key, 0, temperature, top_p)
  state = State(cache=None,
                tokens_BN=jnp.full((b, max_new_tokens), pad_id, jnp.int32),
                logprobs_BN=jnp.zeros((b, max_new_tokens), jnp.float32),
                last_B=token_B, positions_B=lengths_B.astype(jnp.int32) - 1, done_B=~active_B,
                lengths_B=jnp.zeros((b,), jnp.int32), step=jnp.zeros((), jnp.int32), key=key)
  return _record(state, token_B, logp_B, cache, eos_E, pad_id)


def _advance(static: _Static, params, state: State, stop, temperature, top_p, eos_E, pad_id) -> State:
  """Decode until `stop` tokens are sampled or every row is done: no Python per token."""
  def cond(s: State):
    return (s.step < stop) & ~jnp.all(s.done_B)

  def body(s: State):
    ones_B1 = jnp.ones_like(s.last_B)[:, None]
    logits_B1V, cache = forward_with_cache(static.model, params, s.cache, s.last_B[:, None], ones_B1,
                                           s.positions_B[:, None], last_only=True)
    token_B, logp_B = _choose(static, logits_B1V[:, 0], s.key, s.step, temperature, top_p)
    return _record(s, token_B, logp_B, cache, eos_E, pad_id)

  return jax.lax.while_loop(cond, body, state)


# The compiled loop `stream` calls, looked up at each call: a caller may install its own
# functions of the same signature for a while (experiments/bench/kernel_ab.py compiles the loop
# once under each of two builds of lm's CPU kernel and swaps them in turn).
start_jit = jax.jit(_start, static_argnums=(0, 1))
advance_jit = jax.jit(_advance, static_argnums=0, donate_argnames="state")
_unstack_jit = jax.jit(unstack_layers, static_argnums=1)


# ---- public entry points ----

def _context(mesh, rules):
  return contextlib.nullcontext() if mesh is None else steps.in_context(mesh, rules)


def stream(model: Transformer, params, prompts, *, max_new_tokens: int, chunk_tokens: int = 16,
           temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None, seed: int = 0,
           eos_id: int | Sequence[int] | None = None, pad_id: int = 0, return_logprobs: bool = False,
           bucket: int = 16, mesh=None, rules=None) -> Iterator[GenerateResult]:
  """Like `generate`, but yields the new tokens every `chunk_tokens` steps.

  Each yielded GenerateResult holds only that chunk's columns (its `lengths` count the
  chunk's tokens up to each row's EOS). The chunks, concatenated, equal `generate`'s
  result for the same arguments. The compiled loop is the same for every chunk.
  """
  cfg = model.cfg
  checked = check_prompts(prompts, cfg.vocab_size, cfg.max_seq_len, max_new_tokens)
  if temperature < 0:
    raise ValueError(f"temperature={temperature} must be >= 0 (0 is greedy).")
  if top_k is not None and not 1 <= top_k <= cfg.vocab_size:
    raise ValueError(f"top_k={top_k} must be in [1, vocab_size={cfg.vocab_size}], or None for no top-k.")
  if top_p is not None and not 0 < top_p <= 1:
    raise ValueError(f"top_p={top_p} must be in (0, 1], or None for no nucleus filtering.")
  if chunk_tokens < 1 or bucket < 1:
    raise ValueError(f"chunk_tokens={chunk_tokens} and bucket={bucket} must be at least 1.")
  if (mesh is None) != (rules is None):
    raise ValueError("pass mesh and rules together (lm.sharding.make_mesh(cfg.mesh), lm.sharding.rules(cfg.mesh)).")
  if model.cfg.scan_layers and jax.default_backend() == "cpu":
    # Under nn.scan every step slices each layer's weights out of the stacked arrays, which
    # XLA:CPU copies: 2-3x the weight traffic (100M model, batch 8: 92-123 against 58-62
    # ms/step). Unstacking once per call costs one copy of the weights instead of one a token.
    params = _unstack_jit(_unwrap(params), model.cfg.n_layers)
    model = Transformer(dataclasses.replace(model.cfg, scan_layers=False))
  static = _Static(decoding(model), greedy=temperature == 0, top_k=top_k, top_p=top_p is not None and top_p < 1,
                   mesh=mesh, rules=None if rules is None else tuple(rules))
  batch = left_pad(checked, bucket, 1 if mesh is None else sharding.batch_shards(mesh.shape, rules))
  n = len(checked)
  eos = [] if eos_id is None else [int(e) for e in np.atleast_1d(eos_id)]
  eos_E = np.full(-(-max(len(eos), 1) // 4) * 4, -1, np.int32)  # padded with -1 (no token) to E = 4k: one compile
  eos_E[:len(eos)] = eos
  dyn = (jnp.float32(max(temperature, 1e-6)), jnp.float32(1.0 if top_p is None else top_p), eos_E,
         jnp.int32(pad_id))
  with _context(mesh, rules):
    arrays = [batch.tokens_BP, batch.segment_ids_BP, batch.positions_BP, batch.lengths_B, batch.active_B]
    if mesh is not None:
      arrays = [jax.device_put(x, sharding.batch_sharding(mesh, rules, x.ndim)) for x in arrays]
    state = start_jit(static, int(max_new_tokens), _unwrap(params), *arrays, jax.random.key(seed), *dyn)
    done = 0
    while True:
      stop = min(done + chunk_tokens, max_new_tokens)
      if stop > 1:  # token 0 came from the prefill
        state = advance_jit(static, _unwrap(params), state, jnp.int32(stop), *dyn)
      tokens, lengths, step, done_B = jax.device_get((state.tokens_BN, state.lengths_B, state.step, state.done_B))
      logprobs = np.asarray(state.logprobs_BN) if return_logprobs else None
      stop = int(step)  # may be short of `stop` when every row has finished
      yield GenerateResult(tokens[:n, done:stop], np.clip(lengths[:n] - done, 0, stop - done).astype(np.int32),
                           None if logprobs is None else logprobs[:n, done:stop])
      done = stop
      if done >= max_new_tokens or bool(np.all(done_B)):
        return


def generate(model: Transformer, params, prompts, *, max_new_tokens: int, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, seed: int = 0,
             eos_id: int | Sequence[int] | None = None, pad_id: int = 0, return_logprobs: bool = False,
             bucket: int = 16, mesh=None, rules=None) -> GenerateResult:
  """Continue each prompt (a list of token ids) by up to max_new_tokens tokens.

  Under a mesh (pass `mesh` and `rules`, and parameters placed on it, e.g. by
  sharding.sharded_init), the batch is split by the `batch` rule (filler rows are added
  to make it divide) and the cache by `batch` and `kv_heads`.
  """
  chunks = list(stream(model, params, prompts, max_new_tokens=max_new_tokens, chunk_tokens=max_new_tokens,
                       temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, eos_id=eos_id,
                       pad_id=pad_id, return_logprobs=return_logprobs, bucket=bucket, mesh=mesh, rules=rules))
  tokens = np.concatenate([c.tokens for c in chunks], axis=1)
  b = tokens.shape[0]
  pad = np.full((b, max_new_tokens - tokens.shape[1]), pad_id, np.int32)  # every row stopped early
  logprobs = None
  if return_logprobs:
    logprobs = np.concatenate([c.logprobs for c in chunks] + [np.zeros(pad.shape, np.float32)], axis=1)
  return GenerateResult(np.concatenate([tokens, pad], axis=1), sum(c.lengths for c in chunks), logprobs)
