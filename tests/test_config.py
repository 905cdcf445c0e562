"""A bad config fails before anything compiles, and the message names the fix."""

import pytest

from lm import schema
from lm.errors import ConfigError
from lm import sharding
from tests.helpers import tiny_config


def _fails(cfg, *fragments, n_devices=8):
  with pytest.raises(ConfigError) as err:
    schema.validate(cfg, n_devices=n_devices)
  for f in fragments:
    assert f in str(err.value), (f, str(err.value))


def test_the_tiny_config_is_valid():
  schema.validate(tiny_config(), n_devices=8)


def test_heads_must_divide_d_model():
  _fails(tiny_config(d_model=30, n_heads=4, n_kv_heads=4), "model.n_heads=4", "model.d_model=30", "head_dim")


def test_kv_heads_must_divide_heads():
  _fails(tiny_config(n_heads=4, n_kv_heads=3), "model.n_kv_heads=3", "model.n_heads=4", "multiple")


@pytest.mark.parametrize("field,value", [("norm", "batchnorm"), ("mlp", "relu"), ("positions", "alibi"),
                                         ("attention", "flash"), ("remat", "some")])
def test_unknown_names_list_the_choices(field, value):
  cfg = tiny_config(**{field: value})
  _fails(cfg, f"model.{field}={value!r}", "one of", f"--config.model.{field}")


def test_mesh_product_must_match_devices():
  cfg = tiny_config()
  cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 2, 2, 1
  _fails(cfg, "4 devices but 8 are present", "-1")
  cfg.mesh.data = 3
  cfg.mesh.fsdp = -1
  _fails(cfg, "does not divide the 8 devices")


def test_minus_one_takes_the_remaining_devices():
  cfg = tiny_config()
  cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = -1, 2, 2
  assert sharding.mesh_shape(cfg.mesh, 8) == (2, 2, 2)
  assert sharding.make_mesh(cfg.mesh).shape == {"data": 2, "fsdp": 2, "tensor": 2}


def test_sequence_longer_than_learned_position_table():
  cfg = tiny_config(positions="learned", max_seq_len=16)
  cfg.data.seq_len = 32
  _fails(cfg, "data.seq_len=32", "learned position table", "model.max_seq_len")


def test_batch_must_divide_over_data_parallel_devices():
  cfg = tiny_config()
  cfg.train.batch_size = 6
  _fails(cfg, "train.batch_size=6", "multiple of 8")


def test_rules_may_only_name_mesh_axes():
  cfg = tiny_config()
  cfg.mesh.rules.embed = "model"
  with pytest.raises(ConfigError, match="mesh axis 'model'"):
    sharding.rules(cfg.mesh)


@pytest.mark.parametrize("section,field,value,fragment", [
    ("optim", "b1", 1.5, "optim.b1=1.5 must lie in [0, 1)"),
    ("optim", "b2", -1.0, "optim.b2=-1.0 must lie in [0, 1)"),
    ("optim", "eps", 0.0, "optim.eps=0.0 must be positive"),
    ("optim", "weight_decay", -0.1, "optim.weight_decay=-0.1 must be >= 0"),
    ("optim", "clip_norm", -1.0, "optim.clip_norm=-1.0 must be >= 0"),
    ("train", "seed", -1, "train.seed=-1 must be an integer in [0, 2**32)"),
    ("train", "divergence_factor", 0.5, "train.divergence_factor=0.5 must be 0 (off) or above 1"),
    ("train", "z_loss", -1e-4, "train.z_loss=-0.0001 must be >= 0"),
])
def test_nonsense_optimizer_and_train_values_fail_before_compiling(section, field, value, fragment):
  cfg = tiny_config()
  cfg[section][field] = value
  _fails(cfg, fragment)


def test_lion_has_no_eps_to_check_and_zero_turns_the_divergence_threshold_off():
  cfg = tiny_config()
  cfg.optim.update(name="lion", eps=0.0)
  cfg.train.divergence_factor = 0.0
  schema.validate(cfg, n_devices=8)
