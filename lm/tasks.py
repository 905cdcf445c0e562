"""Task evaluations run inside training (every train.eval_every steps and at the end), beside
the held-out loss: named in `train.eval_tasks`, a comma-separated list.

    sotu_mc    "Which of four continuations of a passage from an unseen address is the real
               one?" -- multiple choice scored by log-likelihood (below)
    heldout    bits per byte on each domain of the shipped held-out set (lm/data/heldout.py)
    PATH       a .txt file or a folder of them: bits per byte per domain (lm/domains.py)

Metric names (metrics.jsonl, TensorBoard, summary.json, and so the sweep tables' columns):
    task_<name>_acc, task_<name>_acc_norm                 multiple choice
    task_<name>_<domain>_bpb, task_<name>_bpb (micro), task_<name>_bpb_macro    text sets
where <name> is the task's name, or a path's base name, with anything outside [A-Za-z0-9_]
turned into "_".

Multiple choice, as lm-evaluation-harness scores it: each choice's log-likelihood
log p(choice | context) is summed over its tokens (lm/scoring.py); `acc` is the share of
items whose right choice has the highest log-likelihood, `acc_norm` the same with each
log-likelihood divided by the choice's length in characters. Ties go to the first choice
(numpy argmax), so a uniform model on equal-length choices scores the share of items whose
answer is first -- exactly 1/4 here, where every position holds the answer equally often.
The context is [BOS] + its tokens (as lm/generate.py builds prompts; lm.harness does the same).

sotu_mc is built from the validation addresses (lm/data/sotu.py: every tenth address,
unseen in training), deterministically (seed 0): an item is ~CONTEXT_CHARS of an address
ending at a word, its next CONTINUATION_WORDS words (the answer), and the same number of
words from three other validation addresses at random word positions (the distractors),
each choice written as " " + its words. Chance is 0.25. A model that follows the passage
(grammar across the cut, the address's era and subject) scores above it; on the default run
accuracy rises during training (experiments/results/eval/README.md).
"""

from __future__ import annotations

import os
import re

import numpy as np

from lm import data as data_lib
from lm import domains
from lm import evaluation
from lm import scoring
from lm import sharding
from lm import steps
from lm.data import heldout
from lm.data import sotu
from lm.errors import ConfigError

SOTU_MC = "sotu_mc"
CHOICES = 4
CONTEXT_CHARS = 400        # ~95 SentencePiece tokens at vocab 4096: context + answer fit seq_len 128
CONTINUATION_WORDS = 12


def metric_name(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9_]", "_", name)


def names(spec: str) -> list[str]:
  return [n.strip() for n in (spec or "").split(",") if n.strip()]


def validate(t) -> None:
  """train.eval_tasks: known names or existing text paths (checked before anything runs)."""
  for name in names(t.eval_tasks):
    if name not in (SOTU_MC, heldout.NAME) and not os.path.exists(os.path.expanduser(name)):
      raise ConfigError(f"train.eval_tasks: {name!r} is neither a task ({SOTU_MC!r}, {heldout.NAME!r}) nor an "
                        "existing .txt file or folder; fix the name or the path.")
  if int(t.eval_task_examples) < CHOICES:
    raise ConfigError(f"train.eval_task_examples={t.eval_task_examples} must be at least {CHOICES}.")


# ---- multiple choice ----

def sotu_continuations(n_items: int, seed: int = 0, context_chars: int = CONTEXT_CHARS,
                       continuation_words: int = CONTINUATION_WORDS) -> list[dict]:
  """[{"context", "choices" (4 strings), "gold" (index)}] from the validation addresses."""
  texts = [r["text"] for i, r in enumerate(sotu.read_corpus()) if sotu.split_of(i) == "validation"]
  words = [[m.span() for m in re.finditer(r"\S+", t)] for t in texts]
  rng = np.random.default_rng(seed)
  golds = rng.permutation(np.arange(n_items) % CHOICES)  # each position holds the answer equally often
  k = continuation_words

  def span_text(a: int, first: int) -> str:
    return " " + texts[a][words[a][first][0]:words[a][first + k - 1][1]]

  items = []
  for gold in golds:
    a = int(rng.integers(len(texts)))
    lo = next(i for i, (s, _) in enumerate(words[a]) if s >= context_chars)  # room for a whole context
    w = int(rng.integers(lo, len(words[a]) - k))
    end = words[a][w - 1][1]
    start = next(s for s, _ in words[a] if s >= end - context_chars)
    others = rng.choice([b for b in range(len(texts)) if b != a], size=CHOICES - 1, replace=False)
    distractors = [span_text(int(b), int(rng.integers(1, len(words[b]) - k))) for b in others]
    choices = distractors[:gold] + [span_text(a, w)] + distractors[gold:]
    items.append({"context": texts[a][start:end], "choices": choices, "gold": int(gold)})
  return items


def choice_metrics(items: list[dict], lls: list[list[float]]) -> dict:
  """acc and acc_norm from each item's choice log-likelihoods (harness semantics)."""
  acc = [int(np.argmax(ll)) == it["gold"] for it, ll in zip(items, lls)]
  norm = [int(np.argmax(np.asarray(ll) / [max(len(c), 1) for c in it["choices"]])) == it["gold"]
          for it, ll in zip(items, lls)]
  return {"acc": float(np.mean(acc)), "acc_norm": float(np.mean(norm))}


class MultipleChoice:
  """A multiple-choice task: its rows are tokenized once, scored at every evaluation."""

  def __init__(self, name: str, items: list[dict], tokenizer, scorer: scoring.Scorer):
    self.name, self.items, self.scorer = metric_name(name), items, scorer
    self.rows, self.sizes = [], []
    for it in items:
      context = [tokenizer.bos_id] + tokenizer.encode(it["context"])  # BOS as lm/generate.py (rel-14: prompt method)
      self.rows += [scoring.continuation_row(context, tokenizer.encode(c), scorer.max_len) for c in it["choices"]]
      self.sizes.append(len(it["choices"]))

  def __call__(self, params) -> dict:
    scores = [s for s, _ in self.scorer(params, self.rows)]
    bounds = np.cumsum([0] + self.sizes)
    lls = [scores[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    return {f"task_{self.name}_{k}": v for k, v in choice_metrics(self.items, lls).items()}


# ---- held-out text sets ----

class TextSet:
  """Bits per byte on each domain of a text folder; batches read and placed on the mesh once."""

  def __init__(self, name: str, path: str, eval_step, tokenizer, data_cfg, batch_size: int, mesh, rules):
    self.name, self.eval_step, self.mesh, self.rules = metric_name(name), eval_step, mesh, rules
    self.domains = []
    for domain, where in domains.domain_paths(path):
      host = data_lib.text_iterator(where, tokenizer, data_cfg.seq_len, batch_size)
      batches = [sharding.shard_batch({k: b[k] for k in steps.EVAL_KEYS}, mesh, rules) for b in host]
      self.domains.append((metric_name(domain), batches))

  def __call__(self, params) -> dict:
    rows = []
    for domain, batches in self.domains:
      out = evaluation.loss_over(self.eval_step, params, batches, self.mesh, self.rules)
      rows.append({"domain": domain, **out})
    avg = domains.averages(rows)
    metrics = {f"task_{self.name}_{r['domain']}_bpb": r["bits_per_byte"] for r in rows}
    metrics[f"task_{self.name}_bpb"] = avg["micro"]["bits_per_byte"]
    metrics[f"task_{self.name}_bpb_macro"] = avg["macro"]["bits_per_byte"]
    return metrics


class Tasks:
  """Every task of train.eval_tasks, run one after another; their metrics in one dict.
  lm/evaluation.py:Evaluation calls it after the held-out loss (train.py hands it over)."""

  def __init__(self, cfg, spec: steps.StateSpec, tokenizer):
    t = cfg.train
    self.tasks = []
    eval_step = None
    for name in names(t.eval_tasks):
      if name == SOTU_MC:
        scorer = scoring.Scorer(spec.model, spec.mesh, spec.rules, batch_size=2 * t.batch_size)
        self.tasks.append(MultipleChoice(name, sotu_continuations(int(t.eval_task_examples)), tokenizer, scorer))
        continue
      path = heldout.folder() if name == heldout.NAME else os.path.expanduser(name)
      label = name if name == heldout.NAME else os.path.splitext(os.path.basename(os.path.normpath(path)))[0]
      if eval_step is None:
        eval_step = spec.jit_eval_step(steps.make_eval_step(spec.model),
                                       steps.batch_shardings(spec.mesh, spec.rules, steps.EVAL_KEYS))
      self.tasks.append(TextSet(label, path, eval_step, tokenizer, cfg.data, t.batch_size, spec.mesh, spec.rules))

  def __bool__(self) -> bool:
    return bool(self.tasks)

  def __call__(self, params) -> dict:
    metrics = {}
    for task in self.tasks:
      metrics.update(task(params))
    return metrics
