"""Where text comes from: TFDS datasets prepared as array_record, read without TensorFlow.

`open_split(data_cfg, split)` checks everything cheap first (dataset present and prepared
as array_record, split and text feature exist, some text present) and raises a
`ConfigError` naming the field and the fix, before any tokenizing or training. The embedded
corpus ("sotu") is prepared on first use under a file lock, so processes that start at
once prepare it once.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import sys
from typing import Iterator

import tensorflow_datasets as tfds

from lm.cache import cache_root
from lm.errors import ConfigError
from lm.data import sotu

_ARRAY_RECORD = "array_record"
_PROBE = 1000  # examples read to check that a split holds any text at all


def default_data_dir() -> str:
  """~/.cache/lm/tensorflow_datasets, or $XDG_CACHE_HOME/lm/tensorflow_datasets."""
  return os.path.join(cache_root(), "tensorflow_datasets")


def data_dir(data_cfg) -> str:
  return os.path.expanduser(data_cfg.data_dir) if data_cfg.data_dir else default_data_dir()


def is_local(path: str) -> bool:
  return "://" not in path


@contextlib.contextmanager
def file_lock(path: str):
  """An exclusive advisory lock held by one process at a time (no-op on remote paths)."""
  if not is_local(path):
    yield
    return
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _base_name(dataset: str) -> str:
  return dataset.split("/")[0].split(":")[0]


def prepare_sotu(ddir: str) -> tfds.core.DatasetBuilder:
  """Prepares the embedded corpus as array_record on first use; safe under concurrency."""
  builder = sotu.Sotu(data_dir=ddir)
  if builder.is_prepared():
    return builder
  with file_lock(os.path.join(ddir, f".{sotu.NAME}.lock")):
    builder = sotu.Sotu(data_dir=ddir)  # another process may have finished meanwhile
    if not builder.is_prepared():
      print(f"Preparing the corpus {sotu.NAME!r}, which ships inside lm (nothing is downloaded), as array_record "
            f"in {ddir} (first use only).", flush=True)
      # TFDS announces "Downloading and preparing dataset Unknown size" and draws bars for a
      # download that does not happen: keep its output unless it fails.
      out = io.StringIO()
      try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
          builder.download_and_prepare(file_format=_ARRAY_RECORD)
      except BaseException:
        print(out.getvalue(), end="", file=sys.stderr)
        raise
  return sotu.Sotu(data_dir=ddir)


def get_builder(data_cfg) -> tfds.core.DatasetBuilder:
  """The prepared builder named by data.dataset, or a ConfigError that says how to get one."""
  name, ddir = data_cfg.dataset, data_dir(data_cfg)
  if not name:
    raise ConfigError("data.dataset is empty; set it to a TFDS name (default 'sotu', the embedded corpus).")
  if _base_name(name) == sotu.NAME:
    return prepare_sotu(ddir)
  how = (f"prepare it with `tfds build {_base_name(name)} --file_format=array_record "
         f"--data_dir={ddir}`, or point --config.data.data_dir at the folder that holds it, "
         f"or use --config.data.dataset=sotu (the embedded corpus)")
  try:
    builder = tfds.builder(name, data_dir=ddir)
  except tfds.core.registered.DatasetNotFoundError:
    raise ConfigError(f"data.dataset={name!r}: no such TFDS dataset, and none prepared under "
                      f"data.data_dir={ddir}; check the spelling, or {how}.") from None
  if not builder.is_prepared():
    raise ConfigError(f"data.dataset={name!r} is not prepared under data.data_dir={ddir}; {how}.")
  fmt = getattr(builder.info.file_format, "value", builder.info.file_format)
  if fmt != _ARRAY_RECORD:
    raise ConfigError(
        f"data.dataset={name!r} under {ddir} is prepared as {fmt}, which needs TensorFlow to read; "
        f"prepare it again with `tfds build {_base_name(name)} --file_format=array_record "
        f"--data_dir={ddir}`.")
  return builder


def check_split(builder, split: str, field: str) -> None:
  # "train[:90%]" slices the split "train"; "train+validation" joins two
  bases = [part.split("[")[0].strip() for part in split.split("+")]
  if not all(base in builder.info.splits for base in bases):
    raise ConfigError(f"{field}={split!r} is not a split of {builder.info.full_name}; its splits are "
                      f"{sorted(builder.info.splits.keys())}: set --config.{field} to one of them.")


def check_text_key(builder, key: str) -> None:
  features = builder.info.features
  texts = sorted(k for k, f in features.items() if isinstance(f, tfds.features.Text))
  if key not in features or not isinstance(features[key], tfds.features.Text):
    raise ConfigError(f"data.text_key={key!r} is not a text feature of {builder.info.full_name} (its "
                      f"text features: {texts}); set --config.data.text_key to one of them.")


def open_split(data_cfg, split_field: str = "train_split"):
  """A random-access source (len, [i], __getitems__) over the split named by data.<split_field>."""
  builder = get_builder(data_cfg)
  split = data_cfg[split_field]
  check_split(builder, split, f"data.{split_field}")
  check_text_key(builder, data_cfg.text_key)
  where = f"split {split!r} (data.{split_field}) of {builder.info.full_name}"
  try:
    source = builder.as_data_source(split=split)
  except ValueError as e:  # array_record refuses a split slice with no files ("train[:0]")
    if "0 length" not in str(e):
      raise
    source = []
  if len(source) == 0:
    raise ConfigError(f"The {where} is empty; point data.{split_field} at a split with examples.")
  key = data_cfg.text_key
  if not any(source[i][key] for i in range(min(len(source), _PROBE))):
    raise ConfigError(f"The {where} holds no text in feature {key!r} (first {min(len(source), _PROBE)} "
                      f"examples empty); set data.text_key to the feature with the text, or use another split.")
  return source


def decode_text(value) -> str:
  """TFDS text comes back as bytes; TFDS stores valid UTF-8, 'replace' guards the rest."""
  return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def iter_texts(source, key: str, max_bytes: int | None = None) -> Iterator[str]:
  """Texts of a source in its order, stopping once max_bytes of UTF-8 have been yielded."""
  seen = 0
  for i in range(len(source)):
    text = decode_text(source[i][key])
    yield text
    seen += len(text.encode("utf-8"))
    if max_bytes is not None and seen >= max_bytes:
      return


def split_fingerprint(data_cfg, split_field: str = "train_split") -> dict:
  """What identifies a split's content cheaply, from the prepared dataset's metadata."""
  builder = get_builder(data_cfg)
  split = data_cfg[split_field]
  info = builder.info.splits[split]
  return dict(dataset=builder.info.full_name, split=split, text_key=data_cfg.text_key,
              num_examples=int(info.num_examples), num_bytes=int(info.num_bytes))
