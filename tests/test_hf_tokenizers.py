"""Prompts built as each tokenizer builds them, checked against transformers (issue 14): the
same ids in and the same text out, for tokenizers that add BOS and ones that do not; and the
export of lm's own SentencePiece tokenizer loads in transformers and in lm with the same ids."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import default
from lm import data as data_lib
from lm import decode, loading
from lm.data import sft as sft_data
from lm.data import sotu
from lm.data.hf_tokenizer import HFTokenizer
from lm.data.pipeline import Document
from lm.hf import exporter
from lm.model import ModelConfig, Transformer, init_params
from tests import hf_helpers as H
from tests.helpers import child_env, shared_data_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# No prompt starts with a space: transformers 5 rebuilds a LlamaTokenizer's pipeline with a Metaspace
# that adds no dummy "▁" before a leading space, where its tokenizer.json (and sentencepiece) add one.
PROMPTS = ["The state of the Union is", "Fellow-Citizens of the Senate", "Two  spaces, and \u00fcml\u00e4uts."]


def set_bos(d: str, add_bos: bool) -> None:
  """A Llama-style tokenizer that adds BOS (post-processor '<s> $A', add_bos_token true, as Llama 2
  ships) or does not (no template, add_bos_token false, as SmolLM2 ships)."""
  from tokenizers import Tokenizer, processors
  tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
  tok.post_processor = (processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
                        if add_bos else None)
  tok.save(os.path.join(d, "tokenizer.json"))
  path = os.path.join(d, "tokenizer_config.json")
  with open(path) as f:
    cfg = json.load(f)
  with open(path, "w") as f:
    json.dump({**cfg, "add_bos_token": add_bos}, f)


@pytest.fixture(scope="module")
def llama_dirs(tmp_path_factory):
  """{add_bos: a tiny random LlamaForCausalLM directory whose tokenizer does (not) add BOS}."""
  base = str(tmp_path_factory.mktemp("llama") / "base")
  H.make_llama(base, max_position_embeddings=64)
  out = {}
  for add_bos in (True, False):
    d = str(tmp_path_factory.mktemp("llama") / f"bos_{add_bos}")
    shutil.copytree(base, d)
    set_bos(d, add_bos)
    out[add_bos] = d
  return out


@pytest.mark.parametrize("add_bos", [True, False])
def test_prompt_ids_are_what_transformers_tokenizer_gives(llama_dirs, add_bos):
  from transformers import AutoTokenizer
  hf = AutoTokenizer.from_pretrained(llama_dirs[add_bos])
  tok = HFTokenizer(llama_dirs[add_bos])
  assert tok.adds_bos == add_bos and tok.start_ids == ((1,) if add_bos else ())
  for text in PROMPTS:
    assert tok.prompt_ids(text) == hf(text).input_ids, text
  assert tok.prompt_ids("") == [tok.bos_id]  # nothing to condition on: start from BOS, as generate() does


def test_a_gpt2_tokenizer_adds_no_bos_like_transformers(tmp_path):
  from transformers import AutoTokenizer
  H.gpt2_tokenizer(str(tmp_path))
  tok, hf = HFTokenizer(str(tmp_path)), AutoTokenizer.from_pretrained(str(tmp_path))
  assert tok.start_ids == () and [tok.prompt_ids(t) for t in PROMPTS] == [hf(t).input_ids for t in PROMPTS]


@pytest.mark.parametrize("add_bos", [True, False])
def test_greedy_generation_gives_transformers_ids_and_text(llama_dirs, add_bos):
  import torch
  from transformers import AutoModelForCausalLM, AutoTokenizer
  d = llama_dirs[add_bos]
  hf_tok, hf_model = AutoTokenizer.from_pretrained(d), AutoModelForCausalLM.from_pretrained(d).eval()
  trained = loading.load(d)
  for prompt in PROMPTS[:2]:
    ids = hf_tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
      out = hf_model.generate(ids, max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0)
    hf_new = out[0, ids.shape[1]:].tolist()
    lm_ids = trained.tokenizer.prompt_ids(prompt)
    lm_new = decode.generate(trained.model, trained.params, [lm_ids], max_new_tokens=12, temperature=0.0,
                             mesh=trained.mesh, rules=trained.rules).tokens[0].tolist()
    assert lm_ids == ids[0].tolist() and lm_new == hf_new, prompt
    assert trained.tokenizer.decode(lm_new) == hf_tok.decode(hf_new, skip_special_tokens=True)


def test_lm_generate_prints_the_text_transformers_generates_without_bos(llama_dirs):
  import torch
  from transformers import AutoModelForCausalLM, AutoTokenizer
  d, prompt = llama_dirs[False], PROMPTS[0]
  hf_tok, hf_model = AutoTokenizer.from_pretrained(d), AutoModelForCausalLM.from_pretrained(d).eval()
  ids = hf_tok(prompt, return_tensors="pt").input_ids
  with torch.no_grad():  # both stop at EOS (config.json's eos_token_id), as lm.generate does
    out = hf_model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0)
  expected = prompt + hf_tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
  env = child_env()
  cli = subprocess.run([sys.executable, "-m", "lm.generate", f"--workdir={d}", f"--prompt={prompt}", "--temperature=0",
                        "--max_new_tokens=12"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert cli.returncode == 0, cli.stderr[-2000:]
  assert cli.stdout.rstrip("\n") == expected


def test_sft_pairs_and_documents_start_as_the_tokenizer_does(llama_dirs):
  from transformers import AutoTokenizer
  for add_bos, d in llama_dirs.items():
    tok, hf = HFTokenizer(d), AutoTokenizer.from_pretrained(d)
    prompt, completion = "Who delivered this address?", " Lincoln"
    pair = sft_data.tokenize_pair(tok, prompt, completion, seq_len=64)
    p, c = hf(prompt).input_ids, tok.encode(completion)
    assert pair["inputs"].tolist() == p + c  # what transformers gives the model for the prompt, then the completion
    assert pair["targets"].tolist() == p[1:] + c + [tok.eos_id]
    assert pair["loss_mask"].tolist() == [0] * (len(p) - 1) + [1] * (len(c) + 1)
    doc = Document(lambda text: tok.encode(text), tok)(prompt)
    assert doc.tolist() == hf(prompt).input_ids + [tok.eos_id]
  empty = sft_data.tokenize_pair(HFTokenizer(llama_dirs[False]), "", completion, seq_len=64)
  assert empty["inputs"].tolist()[0] == HFTokenizer(llama_dirs[False]).bos_id  # c1 still has a token before it


# ---- lm's own SentencePiece tokenizer, exported ----

def sentencepiece(data_dir, **data):
  cfg = default.get_config().data
  cfg.data_dir = str(data_dir)
  cfg.update(data)
  return data_lib.build_tokenizer(cfg)


def validation_text(n_chars=60_000) -> str:
  rows = sotu.read_corpus()
  return "\n\n".join(r["text"] for r in rows[-3:])[:n_chars]


@pytest.fixture(scope="module")
def default_export(tmp_path_factory):
  """The default model's shape and SentencePiece tokenizer (random weights), exported."""
  tok = sentencepiece(shared_data_dir(tmp_path_factory))
  m = ModelConfig.from_config(default.get_config().model, tok.vocab_size)
  params = init_params(Transformer(m), jax.random.key(0))
  out = str(tmp_path_factory.mktemp("export") / "hf")
  written = exporter.export(m, params, tok, out)
  return tok, m, params, out, written


def test_the_sentencepiece_export_has_a_tokenizer_transformers_reads_with_the_same_ids(default_export):
  from transformers import AutoTokenizer
  tok, _, _, out, written = default_export
  assert {"tokenizer.json", "tokenizer_config.json", "tokenizer.model"} <= set(written)
  hf = AutoTokenizer.from_pretrained(out)
  text = validation_text()
  assert hf(text).input_ids == tok.prompt_ids(text)  # 60K characters of held-out speeches, id for id
  for prompt in PROMPTS:
    assert hf(prompt).input_ids == tok.prompt_ids(prompt)
    assert hf.decode(hf(prompt).input_ids, skip_special_tokens=True) == prompt


def test_lm_reads_its_own_export_and_transformers_generates_what_lm_does(default_export):
  import torch
  from transformers import AutoModelForCausalLM, AutoTokenizer
  tok, m, params, out, _ = default_export
  imported = loading.load(out)
  assert imported.tokenizer.kind == "hf" and imported.tokenizer.start_ids == (tok.bos_id,)
  hf_tok, hf_model = AutoTokenizer.from_pretrained(out), AutoModelForCausalLM.from_pretrained(out).eval()
  prompt = PROMPTS[0]
  ids = tok.prompt_ids(prompt)
  assert imported.tokenizer.prompt_ids(prompt) == ids == hf_tok(prompt).input_ids
  lm_new = decode.generate(Transformer(m), params, [ids], max_new_tokens=16, temperature=0.0).tokens[0].tolist()
  imported_new = decode.generate(imported.model, imported.params, [ids], max_new_tokens=16, temperature=0.0,
                                 mesh=imported.mesh, rules=imported.rules).tokens[0].tolist()
  with torch.no_grad():
    hf_out = hf_model.generate(torch.tensor([ids]), max_new_tokens=16, min_new_tokens=16, do_sample=False,
                               pad_token_id=tok.pad_id)
  assert lm_new == imported_new == hf_out[0, len(ids):].tolist()
  assert tok.decode(lm_new) == hf_tok.decode(lm_new, skip_special_tokens=True)


def test_a_unigram_sentencepiece_exports_with_the_same_ids(tmp_path, tmp_path_factory):
  from transformers import AutoTokenizer
  tok = sentencepiece(shared_data_dir(tmp_path_factory), sp_model_type="unigram", vocab_size=1024)
  from lm.hf.tokenizer import write_sentencepiece_tokenizer
  write_sentencepiece_tokenizer(tok.model_proto, str(tmp_path))
  text = validation_text(20_000)
  assert AutoTokenizer.from_pretrained(str(tmp_path))(text).input_ids == tok.prompt_ids(text)
  assert np.array_equal(HFTokenizer(str(tmp_path)).encode(text), tok.encode(text))
