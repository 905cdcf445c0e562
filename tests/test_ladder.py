"""The model ladder: every rung is a valid config, named for its size, built by one rule."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from absl import flags
from ml_collections import config_flags

from configs import ladder
from lm import schema
from lm.errors import ConfigError
from lm.data import validate as data_validate
from lm import flops
from lm import ladder as rule
from lm.model import Transformer


@pytest.mark.parametrize("name", ladder.RUNGS)
def test_every_rung_validates_and_its_counts_match_the_parameter_pytree(name):
  cfg = ladder.get_config(name)
  schema.validate(cfg, n_devices=8)
  data_validate(cfg.data)
  model_cfg = ladder.model_config(cfg)
  # Abstract init: shapes only, so even the 70B rung costs milliseconds.
  params = jax.eval_shape(Transformer(model_cfg).init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
  assert flops.count_params(nn.meta.unbox(params)["params"]) == flops.params_total(model_cfg)


def _nominal(name: str) -> float:
  return float(name[1:-1]) * {"k": 1e3, "m": 1e6, "b": 1e9}[name[-1]]


def test_names_give_the_non_embedding_count_within_a_third_and_sizes_grow():
  rows = ladder.rungs()
  for r in rows:
    assert abs(math.log(r["params_nonembedding"] / _nominal(r["name"]))) < math.log(1.35), r
  counts = [r["params_nonembedding"] for r in rows]
  assert counts == sorted(counts) and counts[0] < 60e3 and counts[-1] > 60e9


def test_shapes_follow_the_stated_rule():
  for r in ladder.rungs():
    d, layers = r["d_model"], r["n_layers"]
    expected_layers = round(math.sqrt(d) / 2) if d <= 4096 else round(d / 102.4)
    assert layers == expected_layers
    assert r["n_kv_heads"] == (8 if d >= 2048 else r["n_heads"]) and r["n_heads"] % r["n_kv_heads"] == 0
    assert r["d_model"] % r["n_heads"] == 0 and 16 <= d // r["n_heads"] <= 128
    assert 3.5 * d <= r["d_ff"] < 3.5 * d + 256
    assert r["vocab_size"] == (ladder.CPU_VOCAB if d <= ladder.CPU_TIER_MAX_WIDTH else ladder.ACCELERATOR_VOCAB)


def test_big_rungs_have_llama_3_shapes():
  # Llama-3-8B: 32 x 4096, 32 heads, 8 kv heads, d_ff 14336, untied; 70B: 80 x 8192, 64/8, 28672.
  for name, shape in {"p7b": (32, 4096, 32, 8, 14336), "p70b": (80, 8192, 64, 8, 28672),
                      "p3b": (28, 3072, 24, 8, 10752)}.items():
    m = ladder.get_config(name).model
    assert (m.n_layers, m.d_model, m.n_heads, m.n_kv_heads, m.d_ff) == shape
    assert (m.mlp, m.norm, m.positions) == ("swiglu", "rmsnorm", "rope")
  assert not ladder.get_config("p7b").model.tie_embeddings and ladder.get_config("p3b").model.tie_embeddings
  # With Llama-3's vocabulary the 8B body has Llama-3-8B's 8.03B parameters.
  cfg = ladder.get_config("p7b")
  cfg.data.vocab_size = 128256
  assert flops.params_total(ladder.model_config(cfg)) == pytest.approx(8.03e9, rel=0.002)


def test_cpu_rungs_are_sized_to_train_in_minutes():
  for name, d in ladder.RUNGS.items():
    cfg = ladder.get_config(name)
    if d > ladder.CPU_TIER_MAX_WIDTH:
      assert cfg.model.dtype == "bfloat16"
      continue
    assert cfg.data.seq_len == cfg.model.max_seq_len == 128 and cfg.train.batch_size == 16
    assert 50 <= cfg.train.steps <= 1000 and 0 < cfg.optim.warmup_steps < cfg.train.steps
    step = flops.flops_exact(ladder.model_config(cfg), 128) * 16 * 128
    # ~4 minutes at the 45 GFLOP/s measured for p20m; the 50-step floor lets p20m run to ~6.
    assert cfg.train.steps * step < 1.6e13


def test_nearest_rung_by_either_count():
  assert ladder.nearest(1e6)["name"] == "p1m"
  assert ladder.nearest(50e3)["name"] == "p50k" and ladder.nearest(1.0)["name"] == "p50k"
  assert ladder.nearest(7e10)["name"] == "p70b" and ladder.nearest(1e15)["name"] == "p70b"
  assert ladder.nearest(58e6, "params_total")["name"] == "p50m"
  assert ladder.nearest(58e6)["name"] == "p50m"  # 41.8M non-embedding: nearer than p100m's 120M
  with pytest.raises(ValueError, match="params_total"):
    ladder.nearest(1e6, "tokens")
  with pytest.raises(ValueError, match="positive"):
    ladder.nearest(0)


def test_rungs_are_addressable_through_config_flags_and_unknown_names_list_the_rungs():
  argv = ["prog", "--config=configs/ladder.py:p2m", "--config.train.steps=7"]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv, sys_argv=argv)
  fv(argv)
  assert fv.config.model.d_model == ladder.RUNGS["p2m"] and fv.config.train.steps == 7
  with pytest.raises(ConfigError, match=r"p3m.*p50k \(44.8K\).*p70b \(68.7B\)"):
    ladder.get_config("p3m")
  with pytest.raises(ConfigError, match="configs/ladder.py:NAME"):
    ladder.get_config()
  assert "p70b" in ladder.table() and ladder.human(1.25e9) == "1.25B"


# ---- lm/ladder.py: the rule library code uses (plans, synthetic tables) without configs/ ----

@pytest.mark.parametrize("name", rule.RUNGS)
def test_the_rule_gives_the_model_the_config_trains(name):
  cfg = ladder.get_config(name)
  assert rule.model_config(rule.RUNGS[name]) == ladder.model_config(cfg)
  assert (cfg.data.seq_len, cfg.train.batch_size) == (rule.tier(rule.RUNGS[name])["seq_len"],
                                                      rule.tier(rule.RUNGS[name])["batch_size"])


def test_rungs_carry_each_definitions_flops_per_token_at_any_vocabulary():
  bytes_rungs = {r["name"]: r for r in rule.rungs(vocab_size=259, seq_len=128)}
  p50k = rule.model_config(32, 259, 128)
  assert bytes_rungs["p50k"]["vocab_size"] == 259 and bytes_rungs["p50k"]["params_total"] == flops.params_total(p50k)
  for d in flops.FLOPS_DEFINITIONS:
    assert bytes_rungs["p50k"][f"{d}_per_token"] == flops.flops_per_token(p50k, 128, d)
  # The executed count leaves out the embedding gather's 6 V D a token.
  assert bytes_rungs["p50k"]["flops_exact_per_token"] - bytes_rungs["p50k"]["flops_executed_per_token"] == 6 * 259 * 32
  assert rule.nearest(45e3, vocab_size=259)["name"] == "p50k"
  assert all(d % rule.head_dim(d) == 0 for d in rule.widths()) and set(rule.RUNGS.values()) <= set(rule.widths())
