"""lm/recipe.py: a ladder rung's hyperparameters are the docstring's formulas of its N, D and B;
a --config field wins over the recipe; the results row records the values the run used."""

import pytest
from absl import flags
from ml_collections import config_flags

from configs import ladder
from lm import flops, metrics, recipe


def _sizes(cfg):
  batch = cfg.train.batch_size * cfg.data.seq_len
  return flops.params_nonembedding(ladder.model_config(cfg)), cfg.train.steps * batch, batch


@pytest.mark.parametrize("name", ["p50k", "p2m", "p20m", "p500m", "p7b"])
def test_a_rungs_hyperparameters_are_the_docstrings_formulas(name):
  cfg = ladder.get_config(name)
  n, d, b = _sizes(cfg)
  o, m = cfg.optim, cfg.model
  assert cfg.recipe == "transfer" == recipe.RECIPE
  assert o.lr == recipe.BASE_LR * (m.d_model / 32) ** recipe.LR_WIDTH_EXPONENT
  steps = round(d / b)
  assert o.warmup_steps == max(1, min(steps - 1, round(min(n, d / 10) / b)))
  assert o.b2 == min(0.999, max(0.95, 0.95 ** (b / 2 ** 19)))
  assert o.weight_decay == pytest.approx(b / (o.lr * recipe.TAU * d), rel=1e-12)
  expected = (("mup", 32, 16) if recipe.PARAMETERIZATION == "mup" else ("sp", None, None)) + (None,)
  assert (m.parameterization, m.base_width, m.base_head_dim, m.base_depth) == expected
  assert recipe.batch_tokens(n, d) == pytest.approx(0.292 * (6 * n * d) ** 0.3271, rel=1e-12)


def test_the_base_rung_keeps_decay_0_1_and_the_decay_timescale_is_one_fraction_of_every_run():
  assert recipe.TAU == pytest.approx(1 / (recipe.BASE_LR * 0.1 * 1000))
  p50k = ladder.get_config("p50k")
  assert (p50k.optim.lr, p50k.train.steps) == (recipe.BASE_LR, 1000) and p50k.optim.weight_decay == pytest.approx(0.1)
  # tau = B / (lr wd D) = 1 / (lr wd steps): the same for a 50-step and a 34,600-step rung.
  for name in ("p20m", "p7b"):
    cfg = ladder.get_config(name)
    o = cfg.optim
    assert 1 / (o.lr * o.weight_decay * cfg.train.steps) == pytest.approx(recipe.TAU)
  # beta2: 0.95 at a 2^19-token batch, 0.999 (the cap) at the CPU tier's 2048 tokens.
  assert recipe.beta2(2 ** 19) == 0.95 and recipe.beta2(2 ** 11) == 0.999 and recipe.beta2(2 ** 22) == 0.95


def test_a_config_field_on_the_command_line_wins_over_the_recipe():
  base = ladder.get_config("p2m")
  other = "mup" if recipe.PARAMETERIZATION == "sp" else "sp"
  argv = ["prog", "--config=configs/ladder.py:p2m", "--config.optim.lr=0.001", "--config.optim.b2=0.9",
          f"--config.model.parameterization={other}", "--config.model.base_width=32"]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv, sys_argv=argv)
  fv(argv)
  cfg = fv.config
  assert (cfg.optim.lr, cfg.optim.b2, cfg.model.parameterization, cfg.model.base_width) == (0.001, 0.9, other, 32)
  # The fields not given keep the recipe's values for the rung.
  assert (cfg.optim.warmup_steps, cfg.optim.weight_decay, cfg.recipe) == (
      base.optim.warmup_steps, base.optim.weight_decay, "transfer")


def test_the_results_row_records_the_recipes_values():
  cfg = ladder.get_config("p200k")
  model_cfg = ladder.model_config(cfg)
  facts = metrics.RunFacts(cfg, "/tmp/p200k", model_cfg, flops.param_counts(model_cfg),
                           {d: 1.0 for d in flops.FLOPS_DEFINITIONS}, cfg.train.batch_size * cfg.data.seq_len,
                           None, None)
  row = metrics.summary_row(facts, "completed", 10, 3.0, {"eval_loss": 3.1}, 1.0, 100.0)
  o = cfg.optim
  assert {k: row[k] for k in ("recipe", "optimizer", "lr", "warmup_steps", "b2", "weight_decay",
                              "parameterization", "base_width", "base_depth")} == {
      "recipe": "transfer", "optimizer": "adamw", "lr": o.lr, "warmup_steps": o.warmup_steps, "b2": o.b2,
      "weight_decay": o.weight_decay, "parameterization": recipe.PARAMETERIZATION,
      "base_width": cfg.model.base_width, "base_depth": None}


def test_impossible_sizes_are_refused_before_any_value_is_computed():
  with pytest.raises(ValueError, match="D >= B"):
    recipe.hyperparameters(n_params=1e6, tokens=100, batch=2048, d_model=64)
