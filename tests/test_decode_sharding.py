"""Decoding on a mesh of 8 simulated devices equals decoding on one device."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import decode, sharding
from lm.model import ModelConfig, Transformer
from tests.helpers import tiny_config
from tests.test_decode import random_params

VOCAB = 96
PROMPTS = [[5, 17, 3, 88, 41], [9, 60], [1, 2, 3, 4, 5, 6, 7]]  # 3 rows: one filler row joins on data x fsdp = 4


# (sampling compiles threefry, ~2x the compile time of greedy, so only one case samples)
@pytest.mark.parametrize("mesh_shape,scan_layers,temperature", [((2, 2, 2), False, 0.0), ((1, 4, 2), True, 0.8)])
def test_sharded_generate_equals_one_device(mesh_shape, scan_layers, temperature):
  cfg = tiny_config(n_heads=4, n_kv_heads=2, scan_layers=scan_layers)
  cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = mesh_shape
  model = Transformer(ModelConfig.from_config(cfg.model, VOCAB))
  params = random_params(model)
  kw = dict(max_new_tokens=6, temperature=temperature, seed=0, return_logprobs=True)
  ref = decode.generate(model, params, PROMPTS, **kw)

  mesh, rules = sharding.make_mesh(cfg.mesh), sharding.rules(cfg.mesh)
  tokens = jnp.zeros((1, 8), jnp.int32)
  _, shardings = sharding.abstract_shardings(lambda r: model.init(r, tokens), mesh, rules, jax.random.key(0))
  out = decode.generate(model, jax.device_put(params, shardings["params"]), PROMPTS, mesh=mesh, rules=rules, **kw)
  np.testing.assert_array_equal(out.tokens, ref.tokens)
  np.testing.assert_array_equal(out.lengths, ref.lengths)
  np.testing.assert_allclose(out.logprobs, ref.logprobs, rtol=1e-5, atol=1e-5)

  # The cache is split by batch (data x fsdp) and kv heads (tensor); scanned layers stack first.
  cache = decode.init_cache(model, 4, 16, mesh=mesh, rules=rules)
  attn = cache["layers"]["attn"] if scan_layers else cache["layer_0"]["attn"]
  lead = (None,) if scan_layers else ()
  batch = ("data", "fsdp") if mesh_shape[0] > 1 else "fsdp"
  for name in ("k", "v"):  # k [B, G, K, S], v [B, G, S, K]
    spec = tuple(attn[name].sharding.spec) + (None,) * 5
    assert spec[:len(lead) + 4] == (*lead, batch, "tensor", None, None), (name, attn[name].sharding.spec)
  assert attn["k"].addressable_shards[0].data.shape[-4:] == (1, 1, 8, 16)
