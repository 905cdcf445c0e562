"""lm/ladder.py, the size rule library code uses, builds exactly the models configs/ladder.py trains."""

import pytest

from configs import ladder as ladder_configs
from lm import flops, ladder


@pytest.mark.parametrize("name", ladder.RUNGS)
def test_the_rule_gives_the_model_the_config_trains(name):
  cfg = ladder_configs.get_config(name)
  assert ladder.model_config(ladder.RUNGS[name]) == ladder_configs.model_config(cfg)
  assert (cfg.data.seq_len, cfg.train.batch_size) == (ladder.tier(ladder.RUNGS[name])["seq_len"],
                                                      ladder.tier(ladder.RUNGS[name])["batch_size"])


def test_rungs_carry_each_definitions_flops_per_token_at_any_vocabulary():
  bytes_rungs = {r["name"]: r for r in ladder.rungs(vocab_size=259, seq_len=128)}
  p50k = ladder.model_config(32, 259, 128)
  assert bytes_rungs["p50k"]["vocab_size"] == 259 and bytes_rungs["p50k"]["params_total"] == flops.params_total(p50k)
  for d in flops.FLOPS_DEFINITIONS:
    assert bytes_rungs["p50k"][f"{d}_per_token"] == flops.flops_per_token(p50k, 128, d)
  # The executed count leaves out the embedding gather's 6 V D a token.
  assert bytes_rungs["p50k"]["flops_exact_per_token"] - bytes_rungs["p50k"]["flops_executed_per_token"] == 6 * 259 * 32
  assert ladder.nearest(45e3, vocab_size=259)["name"] == "p50k"
  assert all(d % ladder.head_dim(d) == 0 for d in ladder.widths()) and set(ladder.RUNGS.values()) <= set(ladder.widths())
