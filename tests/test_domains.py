"""Multi-domain bits per byte (lm/domains.py) and the shipped held-out set (lm/data/heldout.py)."""

import json
import lzma
import math
import os

import pytest

from lm import domains
from lm import evaluation
from lm import loading
from lm import sharding
from lm.data import heldout
from lm.data.tokenizers import ByteTokenizer
from lm.model import Transformer
from tests.helpers import tiny_config, tiny_model_config


@pytest.fixture(scope="module")
def trained():
  cfg = tiny_config()
  cfg.data.tokenizer = "bytes"
  tok = ByteTokenizer()
  model = Transformer(tiny_model_config(vocab_size=tok.vocab_size))
  mesh, rules = sharding.make_mesh(cfg.mesh), sharding.rules(cfg.mesh)
  return loading.Trained(cfg, model, sharding.init_params(model, mesh, rules, seed=1), tok, mesh, rules, step=0)


def write_domains(root):
  texts = {"news/a.txt": "Congress met today. It adjourned.", "news/deep/b.txt": "Prices rose by 3% in May.",
           "code.txt": "def f(x):\n    return x * 2\n", "poem.txt": "Ünïcödé — lines\nof verse"}
  for rel, text in texts.items():
    os.makedirs(os.path.dirname(root / rel), exist_ok=True)
    (root / rel).write_text(text, encoding="utf-8")
  (root / "notes.md").write_text("not a .txt: ignored")
  return texts


def test_micro_and_macro_averages_equal_hand_computations(tmp_path, trained):
  texts = write_domains(tmp_path)
  result = domains.domain_losses(trained, str(tmp_path))
  rows = {r["domain"]: r for r in result["domains"]}
  assert list(rows) == ["code", "news", "poem"]
  nbytes = {"code": len(texts["code.txt"].encode()), "poem": len(texts["poem.txt"].encode()),
            "news": len(texts["news/a.txt"].encode()) + len(texts["news/deep/b.txt"].encode())}
  docs = {"code": 1, "poem": 1, "news": 2}
  for name, r in rows.items():
    assert r["bytes"] == nbytes[name] and r["tokens"] == nbytes[name] + docs[name]  # a byte a token, + EOS
    alone = evaluation.text_file_loss(trained, str(tmp_path / (name if name == "news" else name + ".txt")))
    assert r["loss"] == pytest.approx(alone["loss"], rel=1e-6)
  nll = {n: r["loss"] * r["tokens"] for n, r in rows.items()}
  assert result["micro"]["bits_per_byte"] == pytest.approx(sum(nll.values()) / math.log(2) / sum(nbytes.values()),
                                                           rel=1e-12)
  assert result["micro"]["loss"] == pytest.approx(sum(nll.values()) / sum(r["tokens"] for r in rows.values()),
                                                  rel=1e-12)
  assert result["macro"]["bits_per_byte"] == pytest.approx(
      (nll["code"] / nbytes["code"] + nll["news"] / nbytes["news"] + nll["poem"] / nbytes["poem"]) / math.log(2) / 3,
      rel=1e-12)
  # each document is cut into windows of its own, so the micro average is the whole folder's number
  assert result["micro"]["loss"] == pytest.approx(evaluation.text_file_loss(trained, str(tmp_path))["loss"], rel=1e-5)
  table = domains.table(result)
  assert table.splitlines()[0].split() == ["domain", "bits/byte", "nats/token", "tokens", "bytes"]
  assert f"{result['macro']['bits_per_byte']:.4f}" in table.splitlines()[-1]


def test_one_file_is_one_domain(tmp_path, trained):
  (tmp_path / "only.txt").write_text("just one file")
  result = domains.domain_losses(trained, str(tmp_path / "only.txt"))
  assert [r["domain"] for r in result["domains"]] == ["only"]
  assert result["micro"]["bits_per_byte"] == pytest.approx(result["macro"]["bits_per_byte"], rel=1e-12)


def test_the_heldout_set_unpacks_every_document_of_every_domain(tmp_path):
  path = heldout.folder(str(tmp_path))
  assert heldout.folder(str(tmp_path)) == path  # written once, then reused
  rows = heldout.read()
  assert heldout.domains() == ["debian_docs", "hacker_jargon", "licences", "python_code", "satire_1911"]
  assert [d for d, _ in domains.domain_paths(path)] == heldout.domains()
  for row in rows:
    with open(os.path.join(path, row["domain"], row["id"] + ".txt"), encoding="utf-8", newline="") as f:
      assert f.read() == row["text"]
    assert row["source"] and row["license"] and len(row["text"].encode()) <= 64_000
  with lzma.open(os.path.join(os.path.dirname(heldout.__file__), "heldout", heldout.ARCHIVE), "rt") as f:
    assert [json.loads(line) for line in f] == rows


def test_heldout_shares_no_passage_with_the_training_corpus():
  from lm.data import sotu
  corpus = " ".join(r["text"] for r in sotu.read_corpus())
  for row in heldout.read():
    lines = [ln.strip() for ln in row["text"].splitlines() if len(ln.strip()) > 60]
    assert not any(ln in corpus for ln in lines[::10]), row["id"]
