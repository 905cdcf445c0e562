"""Supervised fine-tuning: the loss mask, packing that keeps pairs whole, the truncation rule,
JSONL and TFDS sources, and a fine-tune from a Hugging Face directory through train()."""

import json
import os

from etils import epath
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import finetune, tiny
from lm import steps
from lm import train as train_lib
from lm.errors import ConfigError
from lm.data import sft
from lm.data.tokenizers import ByteTokenizer
from lm.hf import exporter, importer
from lm.metrics import read_jsonl
from lm.model import Transformer, init_params
from tests.helpers import tiny_model_config

TOK = ByteTokenizer()
BOS, EOS = TOK.bos_id, TOK.eos_id


def _pairs(n, seed=0, max_len=30):
  rng = np.random.default_rng(seed)
  letters = list("abcdefghij ")
  word = lambda k: "".join(rng.choice(letters, k))
  return [{"prompt": word(rng.integers(0, max_len)), "completion": word(rng.integers(1, 8))} for _ in range(n)]


def _write_jsonl(path, pairs):
  with open(path, "w") as f:
    f.writelines(json.dumps(p) + "\n" for p in pairs)
  return str(path)


def _data_cfg(train_file, eval_file, seq_len=32):
  d = tiny.get_config().data
  d.update(format="sft", sft_train=train_file, sft_eval=eval_file, seq_len=seq_len)
  return d


def test_a_pair_is_bos_prompt_completion_eos_with_loss_on_the_completion():
  out = sft.tokenize_pair(TOK, "ab", "cd", 16)
  a, b, c, d = TOK.encode("abcd")
  assert out["inputs"].tolist() == [BOS, a, b, c, d]
  assert out["targets"].tolist() == [a, b, c, d, EOS]
  assert out["loss_mask"].tolist() == [0, 0, 1, 1, 1]


def test_truncation_keeps_the_completion_and_the_end_of_the_prompt():
  out = sft.tokenize_pair(TOK, "0123456789", "xyz", 8)      # 10 + 3 + 1 = 14 > 8
  assert len(out["targets"]) == 8 and out["inputs"][0] == BOS
  assert TOK.decode(out["targets"][:4]) == "6789" and TOK.decode(out["targets"][4:7]) == "xyz"
  assert out["targets"][-1] == EOS and out["loss_mask"].tolist() == [0] * 4 + [1] * 4
  long = sft.tokenize_pair(TOK, "prompt", "0123456789", 8)  # the completion alone does not fit
  assert TOK.decode(long["targets"]) == "01234567" and EOS not in long["targets"].tolist()
  assert long["loss_mask"].tolist() == [1] * 8 and long["inputs"].tolist()[:2] == [BOS, TOK.encode("0")[0]]


def test_packing_keeps_every_pair_whole_in_one_row(tmp_path):
  pairs = _pairs(300)
  cfg = _data_cfg(_write_jsonl(tmp_path / "t.jsonl", pairs), _write_jsonl(tmp_path / "e.jsonl", pairs[:20]))
  by_inputs = {}
  for p in pairs:
    ex = sft.tokenize_pair(TOK, p["prompt"], p["completion"], 32)
    by_inputs[tuple(ex["inputs"])] = ex
  it = sft.train_iterator(cfg, TOK, 8, seed=0, process_index=0, process_count=1)
  seen = 0
  for _ in range(6):
    batch = next(it)
    assert set(batch) == {"inputs", "targets", "segment_ids", "positions", "loss_mask", "target_bytes"}
    assert np.all(batch["loss_mask"][batch["segment_ids"] == 0] == 0)
    for r in range(8):
      seg = batch["segment_ids"][r]
      for s in set(seg[seg > 0].tolist()):
        idx = np.flatnonzero(seg == s)
        assert np.all(np.diff(idx) == 1), "a pair is split within its row"
        assert batch["positions"][r, idx].tolist() == list(range(len(idx)))
        ex = by_inputs[tuple(batch["inputs"][r, idx])]  # exactly one pair's tokens
        np.testing.assert_array_equal(batch["targets"][r, idx], ex["targets"])
        np.testing.assert_array_equal(batch["loss_mask"][r, idx], ex["loss_mask"])
        seen += 1
    counted = (batch["segment_ids"] > 0) & (batch["loss_mask"] > 0)
    np.testing.assert_array_equal(batch["target_bytes"], np.where(counted, TOK.token_bytes[batch["targets"]], 0).sum(1))
  assert seen > 6 * 8  # several pairs a row
  state = it.get_state()
  after = next(it)
  again = sft.train_iterator(cfg, TOK, 8, seed=0, process_index=0, process_count=1)
  again.set_state(state)
  jax.tree.map(np.testing.assert_array_equal, next(again), after)


def test_eval_iterator_holds_every_pair_once(tmp_path):
  pairs = _pairs(50, seed=1)
  cfg = _data_cfg(_write_jsonl(tmp_path / "t.jsonl", pairs), _write_jsonl(tmp_path / "e.jsonl", pairs))
  batches = list(sft.eval_iterator(cfg, TOK, 8, process_index=0, process_count=1))
  segments = sum(len(set(b["segment_ids"][r][b["segment_ids"][r] > 0].tolist())) for b in batches for r in range(8))
  assert segments == 50
  assert sum(int(b["loss_mask"].sum()) for b in batches) == sum(len(p["completion"].encode()) + 1 for p in pairs)


def test_loss_counts_only_masked_targets_and_is_unchanged_without_a_mask():
  model = Transformer(tiny_model_config(vocab_size=259))
  params = init_params(model, jax.random.key(0))
  rng = np.random.default_rng(0)
  batch = {"inputs": rng.integers(3, 259, (2, 16)), "targets": rng.integers(3, 259, (2, 16)),
           "segment_ids": np.ones((2, 16), np.int32), "positions": np.tile(np.arange(16), (2, 1))}
  batch = {k: jnp.asarray(v, jnp.int32) for k, v in batch.items()}
  mask = jnp.asarray(rng.integers(0, 2, (2, 16)), jnp.int32)

  @jax.jit
  def masked(b):  # (summed loss, tokens counted, per-token nll of the same batch unmasked)
    total, aux = steps.summed_loss(model, 0.0, params, b)
    return total, aux["tokens"], steps.token_losses(model, params, {k: v for k, v in b.items() if k != "loss_mask"})[0]

  total, tokens, nll = masked({**batch, "loss_mask": mask})
  assert float(total) == pytest.approx(float(jnp.sum(nll * mask)), rel=1e-6) and int(tokens) == int(mask.sum())
  plain = jax.jit(lambda b: steps.summed_loss(model, 0.0, params, b)[0])(batch)
  assert float(plain) == pytest.approx(float(masked({**batch, "loss_mask": jnp.ones_like(mask)})[0]), rel=1e-6)
  # a prompt (unmasked) target never changes the loss
  changed = {**batch, "loss_mask": mask, "targets": jnp.where(mask == 0, 5, batch["targets"])}
  assert float(masked(changed)[0]) == float(total)


@pytest.mark.parametrize("line,match", [
    ('{"prompt": "a"}', r"line 1: no field 'completion'"),
    ('{"prompt": "a", "completion": 3}', r"line 1: field 'completion' must be a string"),
    ('not json', r"line 1: not valid JSON"),
    ('{"prompt": "a", "completion": ""}', r"line 1: the completion .* is empty"),
])
def test_bad_jsonl_lines_are_named(tmp_path, line, match):
  path = tmp_path / "bad.jsonl"
  path.write_text(line + "\n")
  with pytest.raises(ConfigError, match=match):
    sft.read_jsonl(str(path))
  with pytest.raises(ConfigError, match=r"data.sft_train=.*does not exist"):
    sft.read_jsonl(str(tmp_path / "missing.jsonl"))


class SftPairsForTest(tfds.core.GeneratorBasedBuilder):
  """Ten question/answer pairs with two text features."""
  VERSION = tfds.core.Version("1.0.0")

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(__file__)

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
        {"question": tfds.features.Text(), "answer": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(range(8)), "test": self._generate_examples(range(8, 10))}

  def _generate_examples(self, ids):
    for i in ids:
      yield str(i), {"question": f"{i}+1=", "answer": str(i + 1)}


def test_pairs_from_a_tfds_builder(tmp_path):
  SftPairsForTest(data_dir=str(tmp_path)).download_and_prepare(file_format="array_record")
  cfg = tiny.get_config().data
  cfg.update(format="sft", data_dir=str(tmp_path), sft_dataset="sft_pairs_for_test", sft_train="train",
             sft_eval="test", prompt_key="question", completion_key="answer")
  assert sorted(p["completion"] for p in sft.read_examples(cfg, "eval")) == ["10", "9"]
  assert len(sft.read_examples(cfg, "train")) == 8
  cfg.completion_key = "label"
  with pytest.raises(ConfigError, match=r"data.completion_key='label'.*\['answer', 'question'\]"):
    sft.read_examples(cfg, "train")


@pytest.mark.slow
def test_finetune_a_hugging_face_directory_through_train(tmp_path):
  """configs/finetune.py:HF_DIR -> train(): init_from the directory, its tokenizer, SFT batches;
  the completion loss falls from ln(259) = 5.56 and exact match is reported."""
  model_cfg = tiny_model_config(vocab_size=259, max_seq_len=32)
  params = init_params(Transformer(model_cfg), jax.random.key(0))
  exporter.export(model_cfg, params, TOK, str(tmp_path / "hf"))
  rng = np.random.default_rng(0)
  def pairs(n):
    return [{"prompt": f"{a}+{b}=", "completion": str((a + b) % 10)} for a, b in rng.integers(0, 10, (n, 2))]
  cfg = finetune.get_config(str(tmp_path / "hf"))
  assert cfg.train.init_from == str(tmp_path / "hf") and cfg.data.tokenizer == "hf" and cfg.model.d_model == 32
  cfg.data.update(sft_train=_write_jsonl(tmp_path / "t.jsonl", pairs(200)),
                  sft_eval=_write_jsonl(tmp_path / "e.jsonl", pairs(16)), seq_len=32, sft_max_new_tokens=2)
  cfg.train.update(steps=12, eval_every=6, checkpoint_every=12, log_every=6, eval_steps=1)
  cfg.optim.update(lr=1e-2, warmup_steps=2)
  cfg.logging.progress = False
  summary = train_lib.train(cfg, str(tmp_path / "ft")).summary
  evals = [r for r in read_jsonl(os.path.join(tmp_path, "ft", "metrics.jsonl")) if "eval_loss" in r]
  assert [r["step"] for r in evals] == [6, 12] and all("eval_exact_match" in r for r in evals)
  assert summary["status"] == "finished" and 0 <= summary["eval_exact_match"] <= 1
  assert summary["eval_loss"] < 3.0 and "unigram_loss" not in summary


def test_finetune_config_copies_a_runs_model_and_tokenizer(tmp_path):
  base = tiny.get_config()
  base.model.update(d_model=48, n_heads=6, rope_theta=500.0)
  base.data.update(tokenizer="sentencepiece", vocab_size=1000, train_split="train[:5]")
  (tmp_path / "config.json").write_text(base.to_json())
  cfg = finetune.get_config(str(tmp_path))
  assert (cfg.model.d_model, cfg.model.n_heads, cfg.model.rope_theta) == (48, 6, 500.0)
  assert (cfg.data.vocab_size, cfg.data.train_split, cfg.data.format) == (1000, "train[:5]", "sft")
  assert cfg.train.init_from == str(tmp_path)


def test_finetune_config_without_a_run_is_the_default_model_with_its_sequence_length():
  from configs import default
  from lm import schema
  cfg = finetune.get_config()
  cfg.train.init_from = "runs/default"
  cfg.data.sft_train, cfg.data.sft_eval = "train.jsonl", "heldout.jsonl"  # what the command line gives
  assert cfg.model.to_dict() == default.get_config().model.to_dict()
  assert cfg.data.seq_len == default.get_config().data.seq_len
  schema.validate(cfg, 1)  # the default's 128-token positions hold the data's rows


def test_non_utf8_jsonl_is_one_clear_error(tmp_path):
  path = tmp_path / "latin1.jsonl"
  path.write_bytes(b'{"prompt": "a", "completion": "b"}\n{"prompt": "caf\xe9", "completion": "c"}\n')
  with pytest.raises(ConfigError, match=r"latin1.jsonl, line 2: not valid UTF-8 \(byte 15 is b'\\xe9'\)"):
    sft.read_jsonl(str(path))


def test_a_prompt_that_fits_is_kept_whole():
  prompt, completion = "x" * 40, "yy"  # 1 + 40 + 2 inputs of 64: nothing to cut
  pair = sft.tokenize_pair(TOK, prompt, completion, seq_len=64)
  assert pair["inputs"].tolist() == [TOK.bos_id] + TOK.encode(prompt) + TOK.encode(completion)
  cut = sft.tokenize_pair(TOK, prompt, completion, seq_len=30)  # the prompt keeps its last 27 tokens
  assert cut["inputs"].tolist() == [TOK.bos_id] + TOK.encode(prompt)[-27:] + TOK.encode(completion)
