"""Hugging Face checkpoint files without torch: bad checkpoints give one clear error naming the
tensor or field (they are lm exports of random models, then damaged), and lm's byte
tokenizer is exported as an exactly equivalent tokenizer.json."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from lm.hf import exporter, importer
from lm.errors import HFError
from lm.hf.tokenizer import HFTokenizer
from lm.model import ModelConfig, Transformer, init_params
from tests import hf_helpers as H


def _export(out, **model):
  tok_dir = out + "_tok"
  n = (H.gpt2_tokenizer if model.get("positions") == "learned" else H.llama_tokenizer)(tok_dir)
  m = ModelConfig(**{**dict(vocab_size=n, n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, head_dim=8, d_ff=64,
                             max_seq_len=64), **model})
  params = init_params(Transformer(m), jax.random.key(0))
  exporter.export(m, params, HFTokenizer(tok_dir), out)
  return out


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
  return _export(str(tmp_path_factory.mktemp("llama") / "hf"), tie_embeddings=False)


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
  return _export(str(tmp_path_factory.mktemp("gpt2") / "hf"), positions="learned", norm="layernorm", mlp="gelu",
                 use_bias=True, n_kv_heads=4, norm_eps=1e-5)


@pytest.fixture
def llama(llama_dir, tmp_path):
  return shutil.copytree(llama_dir, tmp_path / "copy")


def _edit_config(d, **changes):
  path = os.path.join(d, "config.json")
  with open(path) as f:
    cfg = json.load(f)
  cfg.update(changes)
  with open(path, "w") as f:
    json.dump(cfg, f)


def _edit_tensors(d, fn):
  path = os.path.join(d, "model.safetensors")
  tensors = load_file(path)
  fn(tensors)
  save_file(tensors, path, metadata={"format": "pt"})


def test_a_clean_export_loads(llama_dir, gpt2_dir):
  for d in (llama_dir, gpt2_dir):
    importer.load_hf(d)


def test_missing_tensor_is_named(llama):
  _edit_tensors(llama, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
  with pytest.raises(HFError, match=r"missing.*model\.layers\.1\.mlp\.up_proj\.weight"):
    importer.load_hf(str(llama))


def test_extra_tensor_is_named(llama):
  _edit_tensors(llama, lambda t: t.update({"model.layers.2.mlp.up_proj.weight": np.zeros((64, 32), np.float32)}))
  with pytest.raises(HFError, match=r"unexpected.*model\.layers\.2\.mlp\.up_proj\.weight.*num_hidden_layers"):
    importer.load_hf(str(llama))


def test_shape_mismatch_names_tensor_and_config_fields(llama):
  _edit_config(llama, num_key_value_heads=4)
  with pytest.raises(HFError, match=r"k_proj\.weight.*shape \(16, 32\).*\(32, 32\).*num_key_value_heads=4"):
    importer.load_hf(str(llama))


@pytest.mark.parametrize("changes,match", [
    (dict(model_type="mistral", architectures=["MistralForCausalLM"]), r"model_type='mistral'.*LlamaForCausalLM.*GPT2"),
    (dict(attention_bias=True), r"attention_bias=True.*supported"),
    (dict(hidden_act="gelu"), r"hidden_act='gelu'.*\['silu'\]"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}, rope_parameters=None), r"'yarn'.*default.*linear.*llama3"),
    (dict(sliding_window=4096), r"sliding_window=4096"),
])
def test_unsupported_llama_options_say_what_is_supported(llama, changes, match):
  _edit_config(llama, **changes)
  with pytest.raises(HFError, match=match):
    importer.load_hf(str(llama))


@pytest.mark.parametrize("changes,match", [
    (dict(scale_attn_by_inverse_layer_idx=True), r"scale_attn_by_inverse_layer_idx=True"),
    (dict(activation_function="gelu"), r"activation_function='gelu'.*gelu_new"),
])
def test_unsupported_gpt2_options(gpt2_dir, tmp_path, changes, match):
  d = shutil.copytree(gpt2_dir, tmp_path / "copy")
  _edit_config(d, **changes)
  with pytest.raises(HFError, match=match):
    importer.load_hf(str(d))


def test_tokenizer_larger_than_the_embedding(llama):
  n = HFTokenizer(str(llama)).tokenizer_vocab_size
  _edit_tensors(llama, lambda t: t.update({k: v[:n - 10] for k, v in t.items() if v.shape[0] == n}))
  _edit_config(llama, vocab_size=n - 10)
  with pytest.raises(HFError, match=rf"tokenizer.*ids up to {n - 1}.*embedding has {n - 10} rows"):
    importer.load_hf(str(llama))


def test_vocab_size_disagreeing_with_the_embedding(llama):
  n = HFTokenizer(str(llama)).tokenizer_vocab_size
  _edit_config(llama, vocab_size=n + 5)
  with pytest.raises(HFError, match=r"embed_tokens\.weight.*vocab_size"):
    importer.load_hf(str(llama))


def test_tied_config_with_a_different_head(llama):
  _edit_config(llama, tie_word_embeddings=True)
  with pytest.raises(HFError, match=r"ties the embeddings.*lm_head\.weight"):
    importer.load_hf(str(llama))


def test_no_safetensors_and_broken_index(llama):
  os.rename(os.path.join(llama, "model.safetensors"), os.path.join(llama, "pytorch_model.bin"))
  with pytest.raises(HFError, match=r"no safetensors.*pytorch_model\.bin.*safe_serialization"):
    importer.load_hf(str(llama))
  with open(os.path.join(llama, "model.safetensors.index.json"), "w") as f:
    json.dump({"weight_map": {"model.norm.weight": "model-00001-of-00002.safetensors"}}, f)
  with pytest.raises(HFError, match=r"model-00001-of-00002\.safetensors.*not in"):
    importer.load_hf(str(llama))


def test_no_tokenizer_json(llama):
  os.remove(os.path.join(llama, "tokenizer.json"))
  with pytest.raises(HFError, match=r"no tokenizer\.json.*save_pretrained"):
    importer.load_hf(str(llama))


def test_exporting_a_model_without_hf_equivalent(tmp_path):
  m = ModelConfig(vocab_size=97, n_layers=1, d_model=32, n_heads=4, n_kv_heads=4, head_dim=8, d_ff=64,
                  positions="rope", norm="layernorm")
  with pytest.raises(HFError, match=r"no Hugging Face equivalent.*LlamaForCausalLM.*GPT2LMHeadModel"):
    exporter.export(m, {}, None, str(tmp_path))


def test_byte_tokenizer_exports_as_an_equivalent_tokenizer_json(tmp_path):
  from lm.data.tokenizers import ByteTokenizer
  from lm.hf.tokenizer import write_byte_tokenizer
  write_byte_tokenizer(str(tmp_path))
  ours, theirs = ByteTokenizer(), HFTokenizer(str(tmp_path))
  text = "Fellow-Citizens: naïve café 😀\n\ttabs  and <s> look-alikes"
  assert (theirs.bos_id, theirs.eos_id, theirs.pad_id, theirs.vocab_size) == (1, 2, 0, 259)
  ids = ours.encode(text.replace("<s>", "s"))
  assert theirs.encode(text.replace("<s>", "s")) == ids and theirs.decode(ids) == ours.decode(ids)
  np.testing.assert_array_equal(theirs.token_bytes, ours.token_bytes)


def test_scanned_layout_and_bfloat16_export(llama_dir, tmp_path):
  """An import placed in the scanned layout computes the same logits; a bfloat16 export
  re-imports as the bfloat16-rounded parameters."""
  import dataclasses
  import ml_dtypes
  cfg, params, tok = importer.load_hf(llama_dir)
  m = importer.model_config(cfg)
  tokens = np.arange(3, 19, dtype=np.int32)[None]
  unrolled = jax.jit(Transformer(m).apply)({"params": params}, tokens)
  scanned_cfg = dataclasses.replace(m, scan_layers=True)
  scanned = jax.jit(Transformer(scanned_cfg).apply)({"params": importer.to_model_layout(params, scanned_cfg)}, tokens)
  np.testing.assert_allclose(np.asarray(scanned), np.asarray(unrolled), atol=1e-5)
  exporter.export(m, params, tok, str(tmp_path), dtype="bfloat16")
  with open(tmp_path / "config.json") as f:
    assert json.load(f)["torch_dtype"] == "bfloat16"
  _, params16, _ = importer.load_hf(str(tmp_path))
  rounded = jax.tree.map(lambda x: np.asarray(x).astype(ml_dtypes.bfloat16).astype(np.float32), params)
  jax.tree.map(np.testing.assert_array_equal, params16, rounded)


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.bool_])
def test_integer_or_bool_weights_are_refused_not_cast(llama, dtype):
  name = "model.layers.0.self_attn.q_proj.weight"
  _edit_tensors(llama, lambda t: t.update({name: np.clip(t[name] * 100, -100, 100).astype(dtype)}))
  with pytest.raises(HFError, match=rf"tensor '{name}' is stored as {np.dtype(dtype).name}; lm imports floating-point"):
    importer.load_hf(str(llama))


def test_bfloat16_and_float16_weights_still_load(llama):
  import ml_dtypes
  _edit_tensors(llama, lambda t: t.update({k: v.astype(ml_dtypes.bfloat16 if "mlp" in k else np.float16)
                                           for k, v in t.items()}))
  importer.load_hf(str(llama))


def test_garbage_safetensors_and_tokenizer_files_are_one_clear_error(llama, tmp_path):
  broken = shutil.copytree(llama, tmp_path / "weights")
  (broken / "model.safetensors").write_bytes(b"garbage" * 100)
  with pytest.raises(HFError, match="model.safetensors is not a readable safetensors file"):
    importer.load_hf(str(broken))
  for name, text in (("tokenizer.json", "{not json"), ("tokenizer_config.json", "{not json")):
    bad = shutil.copytree(llama, tmp_path / name)
    (bad / name).write_text(text)
    with pytest.raises(HFError, match=rf"{name} is not (a tokenizer.json the `tokenizers` library can read|valid JSON)"):
      importer.load_hf(str(bad))
