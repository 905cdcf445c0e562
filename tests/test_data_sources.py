"""The embedded corpus, its TFDS builder, and the errors a bad data config gets."""

import json
import lzma
import re
import subprocess
import sys

from etils import epath
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import base
from lm import schema
from lm.data import validate as data_validate
from lm.errors import ConfigError
from lm.data import make_corpus, sotu, sources
from lm.data import build_tokenizer


class LmTestTiny(tfds.core.GeneratorBasedBuilder):
  """A throwaway dataset: 'blank' has only empty texts, 'small' a few short ones."""
  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="blank"), tfds.core.BuilderConfig(name="small")]

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    return epath.Path(__file__)

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
        {"body": tfds.features.Text(), "n": tfds.features.Scalar(dtype=np.int32)}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(), "validation": self._generate_examples()}

  def _generate_examples(self):
    texts = [""] * 3 if self.builder_config.name == "blank" else ["a few short words here"] * 5
    for i, text in enumerate(texts):
      yield i, {"body": text, "n": i}


@pytest.fixture(scope="module")
def data_cfg(tmp_path_factory):
  cfg = base.get_config().data
  cfg.data_dir = str(tmp_path_factory.getbasetemp() / "lm_data")
  cfg.vocab_size = 512
  return cfg


@pytest.fixture(scope="module")
def tiny_cfg(tmp_path_factory):
  ddir = str(tmp_path_factory.mktemp("tiny"))
  for config in ("blank", "small"):
    tfds.builder(f"lm_test_tiny/{config}", data_dir=ddir).download_and_prepare(file_format="array_record")
  cfg = base.get_config().data
  cfg.data_dir, cfg.text_key, cfg.vocab_size = ddir, "body", 512
  return cfg


def test_corpus_is_clean_and_complete():
  rows = sotu.read_corpus()
  assert len(rows) == 233
  assert (rows[0]["year"], rows[-1]["year"]) == (1790, 2021)
  assert [r["year"] for r in rows] == sorted(r["year"] for r in rows)
  text = " ".join(r["text"] for r in rows)
  assert 10_000_000 < len(text.encode()) < 11_000_000
  assert not re.search(r"[\[(](laughter|applause)", text, re.IGNORECASE)
  assert {"Republican", "Democratic", "Whig", "Federalist"} <= {r["party"] for r in rows}


@pytest.mark.parametrize("raw, clean", [
    ("Thanks. [Applause] Now we go.", "Thanks. Now we go."),
    ("last-maybe-[laughter]-but", "last-maybe--but"),
    ("so -- [laughter]. Next", "so --. Next"),
    ("end. (Applause.)", "end."),
    ("[LAUGHTER] start", "start"),
    ("keep [the States] and applause", "keep [the States] and applause"),
])
def test_marker_cleaning(raw, clean):
  assert make_corpus.clean(raw) == clean


def test_splits_by_speech_deterministic(data_cfg):
  train = sources.open_split(data_cfg, "train_split")
  val = sources.open_split(data_cfg, "eval_split")
  assert (len(train), len(val)) == (210, 23)
  ids = lambda src: {src[i]["id"].decode() for i in range(len(src))}
  assert not ids(train) & ids(val)
  expected_val = {r["id"] for i, r in enumerate(sotu.read_corpus()) if i % 10 == 9}
  assert ids(val) == expected_val
  assert set(val[0]) == {"text", "id", "president", "party", "year"}


def test_default_data_dir_respects_xdg(monkeypatch, tmp_path):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert sources.default_data_dir() == str(tmp_path / "lm" / "tensorflow_datasets")
  monkeypatch.delenv("XDG_CACHE_HOME")
  assert sources.default_data_dir().endswith(".cache/lm/tensorflow_datasets")


@pytest.mark.slow
def test_concurrent_first_use_prepares_once(tmp_path):
  # Two processes start on an empty data_dir at once: both must end with the same data.
  code = ("import sys; from lm.data import sources; "
          "b = sources.prepare_sotu(sys.argv[1]); print(len(b.as_data_source('train')))")
  procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True) for _ in range(2)]
  outs = [p.communicate(timeout=120)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0]
  assert [o.split()[-1] for o in outs] == ["210", "210"]
  assert "".join(outs).count("Preparing the corpus 'sotu'") == 1  # lm says so when it prepares (once)
  assert len(list((tmp_path / "sotu").iterdir())) == 1  # one version folder, no leftovers


def test_missing_dataset_names_the_fix(data_cfg):
  cfg = data_cfg.copy_and_resolve_references()
  cfg.dataset = "no_such_dataset_xyz"
  with pytest.raises(ConfigError, match=r"data.dataset='no_such_dataset_xyz'.*tfds build"):
    build_tokenizer(cfg)


def test_unprepared_dataset_names_the_fix(data_cfg):
  cfg = data_cfg.copy_and_resolve_references()
  cfg.dataset = "lm1b"  # a real TFDS dataset, not prepared here
  with pytest.raises(ConfigError, match=r"not prepared.*tfds build lm1b --file_format=array_record"):
    sources.open_split(cfg)


def test_missing_split_lists_the_splits(data_cfg):
  cfg = data_cfg.copy_and_resolve_references()
  cfg.eval_split = "test"
  with pytest.raises(ConfigError, match=r"data.eval_split='test'.*\['train', 'validation'\]"):
    sources.open_split(cfg, "eval_split")


@pytest.mark.parametrize("field,split", [("train_split", "train[:0]"), ("eval_split", "validation[:0]")])
def test_an_empty_split_slice_is_one_clear_error(data_cfg, field, split):
  cfg = data_cfg.copy_and_resolve_references()
  cfg[field] = split
  with pytest.raises(ConfigError, match=rf"The split '{re.escape(split)}' \(data.{field}\) of sotu/1.0.0 is empty"):
    sources.open_split(cfg, field)


def test_missing_text_key_lists_text_features(data_cfg):
  cfg = data_cfg.copy_and_resolve_references()
  cfg.text_key = "body"
  with pytest.raises(ConfigError, match=r"data.text_key='body'.*'id', 'party', 'president', 'text'"):
    build_tokenizer(cfg)
  cfg.text_key = "year"  # exists, but is not text
  with pytest.raises(ConfigError, match="not a text feature"):
    sources.open_split(cfg)


def test_empty_corpus_names_the_fix(tiny_cfg):
  cfg = tiny_cfg.copy_and_resolve_references()
  cfg.dataset = "lm_test_tiny/blank"
  with pytest.raises(ConfigError, match=r"holds no text.*data.text_key"):
    build_tokenizer(cfg)


def test_vocab_too_large_for_corpus(tiny_cfg):
  cfg = tiny_cfg.copy_and_resolve_references()
  cfg.dataset = "lm_test_tiny/small"
  with pytest.raises(ConfigError, match=r"data.vocab_size=512 is too large.*at most \d+"):
    build_tokenizer(cfg)


def test_other_dataset_is_a_config_change(tiny_cfg):
  cfg = tiny_cfg.copy_and_resolve_references()
  cfg.dataset, cfg.tokenizer = "lm_test_tiny/small", "bytes"
  source = sources.open_split(cfg)
  assert [sources.decode_text(source[i]["body"]) for i in range(len(source))] == ["a few short words here"] * 5


def test_validate_data():
  cfg = base.get_config().data
  data_validate(cfg)
  for field, value, match in [("tokenizer", "bpe", "data.tokenizer"),
                              ("sp_model_type", "wordpiece", "data.sp_model_type"),
                              ("seq_len", 0, "data.seq_len"), ("dataset", "", "data.dataset")]:
    bad = cfg.copy_and_resolve_references()
    bad[field] = value
    with pytest.raises(ConfigError, match=match):
      data_validate(bad)


def test_provenance_matches_corpus():
  note = (epath.resource_path("lm.data") / "corpus" / "PROVENANCE.md").read_text()
  raw = (epath.resource_path("lm.data") / "corpus" / sotu.CORPUS).read_bytes()
  import hashlib
  assert hashlib.sha256(raw).hexdigest() in note
  rows = [json.loads(l) for l in lzma.decompress(raw).decode().splitlines()]
  assert f"{sum(len(r['text'].encode()) for r in rows):,} bytes" in note
