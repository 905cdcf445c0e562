"""Task evaluation (lm/tasks.py, lm/scoring.py): multiple choice scored by log-likelihood, the
sotu_mc task built from unseen addresses, and the scorer against a plain forward pass."""

import jax
import numpy as np
import pytest

from lm import scoring
from lm import sharding
from lm import tasks
from lm.data import sotu
from lm.data.tokenizers import ByteTokenizer
from lm.model import Transformer
from tests.helpers import tiny_config, tiny_model_config

TOKENIZER = ByteTokenizer()


def model_and_mesh(**overrides):
  cfg = tiny_config()
  model = Transformer(tiny_model_config(vocab_size=TOKENIZER.vocab_size, **overrides))
  return model, sharding.make_mesh(cfg.mesh), sharding.rules(cfg.mesh)


def constant_logits_params(model, mesh, rules, favoured: int | None, gap: float = 30.0):
  """Every layer zero, so the residual stream is the token embedding: with every embedding
  1, the final norm gives 1s at every position and the head's column `favoured` gets logit
  `gap` (log-odds ~30 against each other token), the rest 0. favoured=None: all zero
  parameters, logits 0, a uniform model."""
  params = sharding.init_params(model, mesh, rules, seed=0)

  def set_leaf(path, x):
    name = jax.tree_util.keystr(path)
    if favoured is None:
      return jax.numpy.zeros_like(x)
    if "embedding" in name or "final_norm" in name:
      return jax.numpy.ones_like(x)
    if "head" in name:
      return jax.numpy.zeros_like(x).at[:, favoured].set(gap / model.cfg.d_model)
    return jax.numpy.zeros_like(x)
  return jax.tree_util.tree_map_with_path(set_leaf, params)


def equal_length_items():
  """8 items, 4 choices of 5 characters each; the answer (" aaaa") in each position twice."""
  items = []
  for i in range(8):
    gold = i % 4
    distractors = [" bcde", " fghi", " jklm"]
    items.append({"context": f"Item {i}: pick one", "gold": gold,
                  "choices": distractors[:gold] + [" aaaa"] + distractors[gold:]})
  return items


def test_far_more_likely_answer_scores_one_and_a_uniform_model_scores_chance():
  model, mesh, rules = model_and_mesh(tie_embeddings=False)
  scorer = scoring.Scorer(model, mesh, rules, batch_size=8)
  task = tasks.MultipleChoice("toy", equal_length_items(), TOKENIZER, scorer)
  a = TOKENIZER.encode("a")[0]
  favoured = task(constant_logits_params(model, mesh, rules, favoured=a))
  assert favoured == {"task_toy_acc": 1.0, "task_toy_acc_norm": 1.0}
  uniform = task(constant_logits_params(model, mesh, rules, favoured=None))
  # every choice has the same log-likelihood; ties go to the first choice, which holds the answer in 2 of 8
  assert uniform == {"task_toy_acc": 0.25, "task_toy_acc_norm": 0.25}


def test_acc_norm_divides_by_the_choice_length_in_characters():
  items = [{"choices": ["ab", "abcdefghij"], "gold": 1}, {"choices": ["a", "bb"], "gold": 0}]
  lls = [[-10.0, -12.0], [-1.0, -3.0]]  # item 0: -10/2 = -5 < -12/10 = -1.2; item 1: -1/1 > -3/2
  assert tasks.choice_metrics(items, lls) == {"acc": 0.5, "acc_norm": 1.0}


def test_scorer_equals_a_plain_forward_pass_row_by_row():
  model, mesh, rules = model_and_mesh()
  params = sharding.init_params(model, mesh, rules, seed=3)
  rng = np.random.default_rng(0)
  rows = [scoring.continuation_row([1] + rng.integers(3, 259, n).tolist(), rng.integers(3, 259, k).tolist(), 16)
          for n, k in [(3, 2), (20, 4), (1, 16), (7, 30), (5, 1)]]
  assert len(rows[1].inputs) == 16 and rows[3].first == 0  # cut from the left; a long continuation fills the row
  got = scoring.Scorer(model, mesh, rules, batch_size=8, bucket=4)(params, rows)
  host = jax.device_get(params)
  for row, (logprob, greedy) in zip(rows, got):
    logits = model.apply({"params": host}, np.asarray([row.inputs]))[0]
    logp = jax.nn.log_softmax(logits, axis=-1)
    scored = range(row.first, len(row.targets))
    want = sum(float(logp[i, row.targets[i]]) for i in scored)
    assert logprob == pytest.approx(want, rel=1e-5, abs=1e-4)
    assert greedy == all(int(np.argmax(logits[i])) == row.targets[i] for i in scored)


def test_document_rows_are_lm_evaluates_windows_without_the_eos():
  rows = scoring.document_rows(list(range(10, 20)), 4, bos=1)
  assert rows == [scoring.Row([1, 10, 11, 12], [10, 11, 12, 13], 0), scoring.Row([13, 14, 15, 16], [14, 15, 16, 17], 0),
                  scoring.Row([17, 18], [18, 19], 0)]


def test_sotu_mc_items_come_from_validation_addresses_with_balanced_answers():
  items = tasks.sotu_continuations(40)
  assert items == tasks.sotu_continuations(40)  # deterministic
  assert np.bincount([it["gold"] for it in items]).tolist() == [10, 10, 10, 10]
  rows = sotu.read_corpus()
  validation = [r["text"] for i, r in enumerate(rows) if sotu.split_of(i) == "validation"]
  train = [r["text"] for i, r in enumerate(rows) if sotu.split_of(i) == "train"]
  for it in items:
    answer = it["choices"][it["gold"]]
    source = [t for t in validation if it["context"] + answer in t]  # the answer follows the context
    assert len(source) == 1 and not any(it["context"] in t for t in train)
    assert len(it["context"]) <= tasks.CONTEXT_CHARS and len(it["choices"]) == 4
    for j, choice in enumerate(it["choices"]):
      assert choice.startswith(" ") and len(choice.split()) == tasks.CONTINUATION_WORDS
      if j != it["gold"]:  # a distractor comes from another unseen address
        assert choice[1:] not in source[0] and any(choice[1:] in t for t in validation)
