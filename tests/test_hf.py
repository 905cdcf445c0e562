"""Parity with transformers: small random Llama / GPT-2 checkpoints built locally.

lm's float32 logits after import equal transformers' (computed in float64) within 1e-4; lm's KV-cache greedy
decoding produces transformers' generate() tokens; export then re-import is exact, and
transformers loads lm's export to the same logits. Three checkpoints cover the options:
GPT-2 (learned positions, LayerNorm, biases, tied); Llama with GQA, an untied head, llama3
rope scaling, a padded embedding (more rows than tokenizer ids), in two shards; Llama with
multi-query attention, tied embeddings, linear rope scaling.
"""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from lm import decode, loading  # noqa: E402
from lm.hf import exporter, importer  # noqa: E402
from lm.model import Transformer  # noqa: E402
from tests import hf_helpers as H  # noqa: E402
from tests.helpers import child_env  # noqa: E402

TEXT = "Fellow-Citizens of the Senate and House of Representatives: the state of the Union is strong."
LLAMA3 = {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 32}
CASES = {
    "gpt2": lambda d: H.make_gpt2(d, initializer_range=0.2),
    "llama_gqa_llama3_sharded": lambda d: H.make_llama(d, vocab_rows=H.TOKENIZER_VOCAB + 16, shards=2,
                                                       rope_scaling=LLAMA3, initializer_range=0.2,
                                                       hidden_size=64, num_attention_heads=4, num_key_value_heads=2),
    "llama_mqa_tied_linear": lambda d: H.make_llama(d, tie_word_embeddings=True, num_key_value_heads=1,
                                                    rope_scaling={"rope_type": "linear", "factor": 2.0},
                                                    rope_theta=500.0, initializer_range=0.2),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
  d = str(tmp_path_factory.mktemp(request.param))
  hf_model = CASES[request.param](d)
  cfg, params, tok = importer.load_hf(d)
  return request.param, d, hf_model, cfg, params, tok


def _tokens(tok, n=40):
  return np.array([tok.encode(TEXT)[:n]], np.int32)


def test_logits_equal_transformers(case):
  name, _, hf_model, cfg, params, tok = case
  tokens = _tokens(tok)
  assert tokens.shape[1] >= 20
  model = Transformer(importer.model_config(cfg))
  ours = np.asarray(jax.jit(model.apply)({"params": params}, tokens))
  theirs = H.hf_logits_float64(hf_model, tokens)
  assert ours.shape == theirs.shape
  try:
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
  except AssertionError as e:
    own = np.abs(H.hf_logits(hf_model, tokens) - theirs).max()
    raise AssertionError(f"{e}\n(transformers' own float32 logits are {own:.2e} from these)") from None
  if "llama3" in name or "linear" in name:  # the scaling matters here: without it the logits differ
    plain = Transformer(dataclasses.replace(importer.model_config(cfg), rope_scaling="none"))
    assert np.abs(np.asarray(jax.jit(plain.apply)({"params": params}, tokens)) - theirs).max() > 1e-3


def test_greedy_decoding_equals_generate(case):
  _, _, hf_model, cfg, params, tok = case
  tokens = _tokens(tok)[0].tolist()
  prompts = [tokens[:7], tokens[:13]]  # different lengths: lm left-pads them in one batch
  model = Transformer(importer.model_config(cfg))
  ours = decode.generate(model, params, prompts, max_new_tokens=12).tokens
  for row, prompt in zip(ours, prompts):
    assert row.tolist() == H.hf_greedy(hf_model, prompt, 12)
  assert len(set(ours[1].tolist())) > 2  # a non-degenerate continuation


def test_export_reimport_is_exact_and_transformers_loads_it(case, tmp_path):
  name, _, hf_model, cfg, params, tok = case
  m = importer.model_config(cfg)
  written = exporter.export(m, params, tok, str(tmp_path), max_shard_bytes=40_000 if "gpt2" in name else None)
  assert "config.json" in written and "tokenizer.json" in written
  if "gpt2" in name:
    assert "model.safetensors.index.json" in written
  cfg2, params2, tok2 = importer.load_hf(str(tmp_path))
  assert importer.model_config(cfg2) == m
  jax.tree.map(np.testing.assert_array_equal, params2, params)
  assert (tok2.bos_id, tok2.eos_id, tok2.vocab_size) == (tok.bos_id, tok.eos_id, tok.vocab_size)
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
  tokens = _tokens(tok)
  np.testing.assert_allclose(H.hf_logits_float64(reloaded, tokens), H.hf_logits_float64(hf_model, tokens),
                             atol=1e-12, rtol=0)  # the same weights: the same float64 forward


def test_tokenizer_round_trips_and_counts_bytes(case):
  name, _, _, _, _, tok = case
  text = "The State of the Union, 1790-2021: naïve café 😀 —  two  spaces."
  ids = tok.encode(text)
  assert tok.decode(ids) == text
  dummy_prefix = 0 if "gpt2" in name else 1  # SentencePiece-style: the '▁' it prepends counts as a space
  assert tok.count_bytes(ids) == len(text.encode("utf-8")) + dummy_prefix
  assert tok.token_bytes[tok.eos_id] == 0 and tok.token_bytes.shape == (tok.vocab_size,)


@pytest.mark.slow
def test_convert_cli_then_loading_a_workdir_or_the_directory(tmp_path):
  d = str(tmp_path / "hf")
  hf_model = CASES["llama_gqa_llama3_sharded"](d)
  tok = importer.load_hf(d)[2]
  work = tmp_path / "imported"
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = child_env()
  out = subprocess.run([sys.executable, "-m", "lm.convert", f"--from_hf={d}", f"--to={work}", "--seq_len=48"],
                       cwd=root, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "Imported" in out.stdout and (work / "tokenizer" / "tokenizer.json").is_file()
  with open(work / "config.json") as f:
    assert json.load(f)["data"]["seq_len"] == 48
  tokens = _tokens(tok)
  theirs = H.hf_logits_float64(hf_model, tokens)
  for source in (str(work), d):  # the imported workdir, and the HF directory itself
    trained = loading.load(source)
    assert trained.step == 0 and trained.tokenizer.encode(TEXT) == tok.encode(TEXT)
    ours = np.asarray(jax.jit(trained.model.apply)({"params": trained.params}, tokens))
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
