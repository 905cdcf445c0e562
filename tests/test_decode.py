"""KV-cache decoding equals the full forward pass; sampling is seeded; bad input fails clearly."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from lm import decode
from lm.model import Transformer
from tests.helpers import VOCAB, tiny_model_config

GPT2 = dict(positions="learned", norm="layernorm", mlp="gelu", use_bias=True)
# Every pair of (attention, positions, kv heads, scan_layers) values appears at least once;
# learned positions come with the GPT-2 family (biases, LayerNorm, GELU, tied head).
VARIANTS = {
    "reference-rope-mha": dict(attention="reference", positions="rope", n_kv_heads=4, scan_layers=False),
    "xla-learned-mha-scan": dict(attention="xla", n_kv_heads=4, scan_layers=True, **GPT2),
    "reference-learned-gqa": dict(attention="reference", n_kv_heads=2, scan_layers=False, **GPT2),
    "xla-rope-gqa-scan": dict(attention="xla", positions="rope", n_kv_heads=2, scan_layers=True),
    "reference-rope-mqa-scan": dict(attention="reference", positions="rope", n_kv_heads=1, scan_layers=True),
    "xla-learned-mqa": dict(attention="xla", n_kv_heads=1, scan_layers=False, tie_embeddings=False, **GPT2),
}
PROMPTS = [[5, 17, 3, 88, 41], [9, 60], [1, 2, 3, 4, 5, 6, 7]]  # lengths 5, 2, 7: two rows padded
STEPS = 6  # 7 + 6 = 13 <= max_seq_len 16


def random_params(model: Transformer, seed: int = 0) -> dict:
  """Norm scales near 1, everything else N(0, 0.05^2), drawn with numpy from the shapes.

  Skips compiling flax's init (~1 s a model on 2 cores).
  """
  shapes = jax.eval_shape(lambda: nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))))
  rng = np.random.default_rng(seed)
  def draw(path, leaf):
    noise = rng.standard_normal(leaf.shape).astype(np.float32)
    return 1 + 0.1 * noise if jax.tree_util.keystr(path).endswith("['scale']") else 0.05 * noise
  return jax.tree_util.tree_map_with_path(draw, shapes["params"])


def _model(**overrides):
  model = Transformer(tiny_model_config(**overrides))
  return model, random_params(model)


@functools.partial(jax.jit, static_argnums=0)
def _prefill_then_steps(model, params, batch: decode.Prompts, extra_BT):
  """Logits of a prefill (into a new cache, as lm.decode's: fresh), then of T single-token steps
  feeding extra_BT, all through the cache."""
  b, t = extra_BT.shape
  cache = decode.init_cache(model, b, batch.tokens_BP.shape[1] + t)
  prefill_BPV, cache = decode.forward_with_cache(model, params, cache, batch.tokens_BP, batch.segment_ids_BP,
                                                 batch.positions_BP, fresh=True)
  def step(cache, token_position_B2):
    tokens_B1, positions_B1 = token_position_B2[:, :1], token_position_B2[:, 1:]
    logits_B1V, cache = decode.forward_with_cache(model, params, cache, tokens_B1, jnp.ones_like(tokens_B1),
                                                  positions_B1)
    return cache, logits_B1V[:, 0]
  positions_BT = batch.lengths_B[:, None] + jnp.arange(t)
  _, steps_TBV = jax.lax.scan(step, cache, jnp.stack([extra_BT, positions_BT], -1).transpose(1, 0, 2))
  return prefill_BPV, steps_TBV


@pytest.mark.parametrize("variant", VARIANTS)
def test_cached_logits_equal_full_forward_step_by_step(variant):
  model, params = _model(**VARIANTS[variant])
  rng = np.random.default_rng(0)
  extra = rng.integers(0, VOCAB, (len(PROMPTS), STEPS)).astype(np.int32)  # teacher-forced tokens
  # Reference: each row's whole sequence (prompt + extra), right-padded. Causality makes the
  # logits at t those of the forward pass over the sequence grown up to t.
  full = np.zeros((len(PROMPTS), 16), np.int32)
  for b, p in enumerate(PROMPTS):
    full[b, :len(p) + STEPS] = p + extra[b].tolist()
  ref = np.asarray(jax.jit(model.apply)({"params": params}, full))

  batch = decode.left_pad([np.asarray(p, np.int32) for p in PROMPTS], bucket=8)  # P = 8: all rows padded
  width = batch.tokens_BP.shape[1]
  prefill, steps = _prefill_then_steps(model, params, batch, extra)
  for b, n in enumerate(batch.lengths_B):
    np.testing.assert_allclose(prefill[b, width - n:], ref[b, :n], rtol=1e-5, atol=1e-5, err_msg=f"row {b}")
    for t in range(STEPS):
      np.testing.assert_allclose(steps[t, b], ref[b, n + t], rtol=1e-5, atol=1e-5, err_msg=f"row {b} step {t}")


def _slots(cache, p: int) -> dict:
  """The first p slots of every cache array (k [..., K, S], v [..., S, K], segment ids [..., S]),
  and the next free slot, by path."""
  def first(path, x):
    name = jax.tree_util.keystr(path)
    return x[..., :p] if name.endswith(("['k']", "['segment_ids']")) else x[..., :p, :] if name.endswith("['v']") else x
  return jax.tree_util.tree_map_with_path(first, cache)


@pytest.mark.parametrize("variant", ["xla-rope-gqa-scan", "reference-learned-gqa"])
def test_a_fresh_prefill_reads_no_slot_and_starts_the_cache_again(variant):
  """fresh=True: NaN in every slot does not reach the logits; on a cache another prompt filled,
  the logits, the written slots, the next free slot and the next step's logits are those of a
  prefill into a new cache."""
  model, params = _model(**VARIANTS[variant])
  batch = decode.left_pad([np.asarray(p, np.int32) for p in PROMPTS], bucket=8)
  p = batch.tokens_BP.shape[1]
  run = jax.jit(functools.partial(decode.forward_with_cache, model), static_argnames="fresh")
  prompt = (batch.tokens_BP, batch.segment_ids_BP, batch.positions_BP)
  new = decode.init_cache(model, len(PROMPTS), 12)
  ref_logits, ref_cache = run(params, new, *prompt, fresh=False)

  nan = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan) if jnp.issubdtype(x.dtype, jnp.floating) else x, new)
  nan_logits, _ = run(params, nan, *prompt, fresh=True)
  assert np.isfinite(nan_logits).all()  # without fresh, 0 * NaN in P V makes every logit NaN
  np.testing.assert_allclose(nan_logits, ref_logits, rtol=0, atol=1e-6)

  other = np.random.default_rng(1).integers(1, VOCAB, batch.tokens_BP.shape).astype(np.int32)
  _, used = run(params, new, other, np.ones_like(other), batch.positions_BP, fresh=False)
  logits, cache = run(params, used, *prompt, fresh=True)
  np.testing.assert_allclose(logits, ref_logits, rtol=0, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-6), _slots(cache, p), _slots(ref_cache, p))
  token_B1, position_B1 = jnp.full((len(PROMPTS), 1), 7, jnp.int32), batch.lengths_B[:, None]
  step = [run(params, c, token_B1, jnp.ones_like(token_B1), position_B1, fresh=False)[0] for c in (cache, ref_cache)]
  np.testing.assert_allclose(step[0], step[1], rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def llama():
  return _model(tie_embeddings=False)


def test_greedy_generate_follows_the_full_forward_argmax(llama):
  model, params = llama
  out = decode.generate(model, params, PROMPTS, max_new_tokens=STEPS, return_logprobs=True)
  assert out.tokens.shape == (3, STEPS) and out.tokens.dtype == np.int32
  np.testing.assert_array_equal(out.lengths, [STEPS] * 3)
  full = np.zeros((3, 16), np.int32)
  for b, p in enumerate(PROMPTS):
    full[b, :len(p) + STEPS] = p + out.tokens[b].tolist()
  logp = np.asarray(jax.nn.log_softmax(jax.jit(model.apply)({"params": params}, full)))
  for b, p in enumerate(PROMPTS):
    logp_b = logp[b, len(p) - 1:len(p) - 1 + STEPS]
    np.testing.assert_array_equal(out.tokens[b], logp_b.argmax(-1))
    np.testing.assert_allclose(out.logprobs[b], logp_b[np.arange(STEPS), out.tokens[b]], rtol=1e-5, atol=1e-5)
  # A row decodes the same whatever rows (padded differently) are beside it.
  swapped = decode.generate(model, params, PROMPTS[::-1], max_new_tokens=STEPS)
  np.testing.assert_array_equal(swapped.tokens, out.tokens[::-1])


def test_greedy_is_deterministic_and_sampling_is_seeded(llama):
  model, params = llama
  gen = functools.partial(decode.generate, model, params, PROMPTS, max_new_tokens=STEPS)
  greedy = gen()
  np.testing.assert_array_equal(gen().tokens, greedy.tokens)
  sampled = gen(temperature=1.0, seed=3)
  np.testing.assert_array_equal(gen(temperature=1.0, seed=3).tokens, sampled.tokens)
  assert not np.array_equal(gen(temperature=1.0, seed=4).tokens, sampled.tokens)
  assert not np.array_equal(sampled.tokens, greedy.tokens)  # a near-uniform random model
  # Filters that leave one candidate are greedy, whatever the temperature and seed.
  np.testing.assert_array_equal(gen(temperature=0.7, top_k=1, seed=5).tokens, greedy.tokens)
  np.testing.assert_array_equal(gen(temperature=2.0, top_p=1e-6, seed=6).tokens, greedy.tokens)


def test_stream_chunks_concatenate_to_generate(llama):
  model, params = llama
  kw = dict(max_new_tokens=STEPS, temperature=0.9, seed=1, return_logprobs=True)
  whole = decode.generate(model, params, PROMPTS, **kw)
  chunks = list(decode.stream(model, params, PROMPTS, chunk_tokens=4, **kw))
  assert [c.tokens.shape[1] for c in chunks] == [4, 2]
  np.testing.assert_array_equal(np.concatenate([c.tokens for c in chunks], 1), whole.tokens)
  np.testing.assert_allclose(np.concatenate([c.logprobs for c in chunks], 1), whole.logprobs)
  np.testing.assert_array_equal(sum(c.lengths for c in chunks), whole.lengths)


def test_generation_stops_at_eos(llama):
  model, params = llama
  greedy = decode.generate(model, params, PROMPTS, max_new_tokens=STEPS)
  # An EOS id that some row first emits after step 0 (a random model repeats itself a lot).
  row, step = next((b, t) for b in range(3) for t in range(1, STEPS) if greedy.tokens[b, t] not in greedy.tokens[b, :t])
  eos = int(greedy.tokens[row, step])
  out = decode.generate(model, params, PROMPTS, max_new_tokens=STEPS, eos_id=eos, pad_id=VOCAB + 1,
                        return_logprobs=True)
  for b in range(3):
    hits = np.flatnonzero(greedy.tokens[b] == eos)
    n = hits[0] + 1 if hits.size else STEPS
    assert out.lengths[b] == n
    np.testing.assert_array_equal(out.tokens[b, :n], greedy.tokens[b, :n])
    assert np.all(out.tokens[b, n:] == VOCAB + 1) and np.all(out.logprobs[b, n:] == 0)
  assert out.lengths[row] == step + 1 and out.sequences()[row] == greedy.tokens[row, :step + 1].tolist()
  # Several EOS ids; each row's token at step STEPS - 2 is one, so every row ends early and
  # the loop (here a stream of one-token chunks) stops once all have.
  eos_ids = [eos] + [int(t) for t in greedy.tokens[:, STEPS - 2]]
  lengths = decode.generate(model, params, PROMPTS, max_new_tokens=STEPS, eos_id=eos_ids).lengths
  assert lengths.max() < STEPS
  chunks = list(decode.stream(model, params, PROMPTS, max_new_tokens=STEPS, chunk_tokens=1, eos_id=eos_ids))
  assert len(chunks) == lengths.max()
  np.testing.assert_array_equal(sum(c.lengths for c in chunks), lengths)


def test_sample_logits_filters():
  logits = jnp.log(jnp.asarray([[0.05, 0.6, 0.05, 0.3], [0.1, 0.2, 0.3, 0.4]]))
  keys = jax.random.split(jax.random.key(0), 2)
  draw = jax.jit(decode.sample_logits, static_argnums=3)
  many = lambda top_k, top_p: np.stack([draw(logits, jax.random.split(jax.random.key(s), 2), 1.0, top_k, top_p)
                                        for s in range(40)])
  assert set(many(2, None)[:, 0]) == {1, 3} and set(many(2, None)[:, 1]) == {2, 3}
  assert set(many(None, 0.5)[:, 0]) == {1}             # 0.6 alone covers 0.5
  assert set(many(None, 0.65)[:, 0]) == {1, 3}         # 0.6 < 0.65 <= 0.9
  assert set(many(None, 1.0)[:, 1]) == {0, 1, 2, 3}
  assert int(draw(logits, keys, 1e-4, None, None)[1]) == 3  # temperature -> 0 is argmax


@pytest.mark.parametrize("prompts,kw,fragment", [
    ([[1, 2, 3] * 4], dict(max_new_tokens=5), "12 tokens + max_new_tokens=5 = 17 > the model's context"),
    ([[1, 2], []], dict(max_new_tokens=2), "prompt 1 is empty"),
    ([], dict(max_new_tokens=2), "prompts is empty"),
    ([[1, VOCAB]], dict(max_new_tokens=2), f"token id {VOCAB} outside the vocabulary [0, {VOCAB})"),
    ([[-1, 2]], dict(max_new_tokens=2), "token id -1 outside the vocabulary"),
    (["hello"], dict(max_new_tokens=2), "prompt 0 is text"),
    ([1, 2, 3], dict(max_new_tokens=2), "prompts=[[...]]"),
    ([[1.5, 2.0]], dict(max_new_tokens=2), "integer token ids"),
    ([[1, 2]], dict(max_new_tokens=0), "max_new_tokens=0 must be at least 1"),
    ([[1, 2]], dict(max_new_tokens=2, temperature=-1.0), "temperature=-1.0 must be >= 0"),
    ([[1, 2]], dict(max_new_tokens=2, top_k=0), "top_k=0 must be in [1, vocab_size=97]"),
    ([[1, 2]], dict(max_new_tokens=2, top_p=1.5), "top_p=1.5 must be in (0, 1]"),
])
def test_unusable_input_fails_with_a_message_naming_the_fix(llama, prompts, kw, fragment):
  model, params = llama
  with pytest.raises(ValueError) as err:
    decode.generate(model, params, prompts, **kw)
  assert fragment in str(err.value), str(err.value)


@pytest.mark.parametrize("prompt_len,new_tokens,advice", [
    (30, 8, "; keep the prompt's last 24 tokens, lower max_new_tokens to 2, or use a model with a longer context."),
    (40, 8, "; keep the prompt's last 24 tokens, or use a model with a longer context."),
    (10, 40, "; lower max_new_tokens to 22, or use a model with a longer context."),
    (60, 48, "; use a model with a longer context."),  # the README smoke test's case: no advice of 0
])
def test_a_prompt_too_long_for_the_context_gets_only_advice_that_works(prompt_len, new_tokens, advice):
  with pytest.raises(ValueError) as e:
    decode.check_prompts([[3] * prompt_len], vocab_size=97, max_seq_len=32, max_new_tokens=new_tokens)
  assert str(e.value).endswith(advice) and "to 0" not in str(e.value) and "last 0" not in str(e.value)


def test_first_argmax_equals_jnp_argmax_with_ties_and_nans():
  """Greedy decoding's token choice (two reductions instead of argmax's variadic one)."""
  x = np.random.default_rng(0).standard_normal((6, 37)).astype(np.float32)
  x[1, [3, 20]] = 9.0           # a tie: the first wins
  x[2, [5, 30]] = np.nan        # a NaN: the first NaN wins, as in jnp.argmax
  x[3, :] = -np.inf             # all -inf: index 0
  x[4, 36] = np.inf
  got = jax.jit(decode.first_argmax)(x)
  assert got.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(got), np.asarray(jnp.argmax(x, axis=-1)))
  assert np.asarray(got)[:5].tolist() == [int(np.argmax(x[0])), 3, 5, 0, 36]
