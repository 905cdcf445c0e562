"""A supervised task from the embedded corpus: which president delivered this passage?

    python -m experiments.studies.sft_sotu build --out=runs/sft_sotu      # writes train.jsonl, heldout.jsonl
    python -m experiments.studies.sft_sotu compare --examples=runs/sft_sotu/heldout.jsonl \
        --workdirs=runs/sotu_base,runs/sotu_sft                  # base vs fine-tuned, one table

Each pair: a passage of --words consecutive words from an address, and the president who
delivered it:

    prompt      'Passage: "...the gold reserve in the Treasury ..."\nWho delivered this State of
                 the Union address?\nAnswer:'
    completion  ' Grover Cleveland'

Splits follow the corpus's own (lm/data/sotu.py: every tenth address is validation), so the
held-out passages come from the 23 validation addresses, which neither pretraining
(data.train_split='train') nor fine-tuning ever saw. 22 of their 23 presidents also gave a
training address; Zachary Taylor (1849) did not, so his passages cannot be answered. Train
pairs: a passage every --stride words of every training address; held-out pairs:
--per_speech passages spread evenly over each validation address, in a seeded shuffled order
(so the first N of them, which fine-tuning scores, cover every held-out address).

`compare` prints, for each workdir, the completion loss and exact match (lm.evaluation.sft_evaluate)
and how often the answer is the right president or one of the two in office just before or
after (a measure of the era; an answer that is no president's name counts as wrong), beside
the majority-class baseline: always answering the president with the most training pairs.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import random

QUESTION = "Who delivered this State of the Union address?"


def passages(text: str, words: int, stride: int, count: int | None = None) -> list[str]:
  """Windows of `words` words every `stride` words, or `count` windows spread evenly."""
  w = text.split()
  starts = list(range(0, max(len(w) - words, 0) + 1, stride))
  if count is not None:
    last = max(len(w) - words, 0)
    starts = sorted({round(i * last / max(count - 1, 1)) for i in range(count)})
  return [" ".join(w[s:s + words]) for s in starts]


def pair(passage: str, president: str) -> dict:
  return {"prompt": f'Passage: "{passage}"\n{QUESTION}\nAnswer:', "completion": f" {president}"}


def build(out: str, words: int = 32, stride: int = 96, per_speech: int = 16, seed: int = 0) -> dict:
  from lm.data import sotu
  rows = sotu.read_corpus()
  train, heldout = [], []
  for i, row in enumerate(rows):
    if sotu.split_of(i) == "train":
      train += [pair(p, row["president"]) for p in passages(row["text"], words, stride)]
    else:
      heldout += [pair(p, row["president"]) for p in passages(row["text"], words, stride, per_speech)]
  random.Random(seed).shuffle(train)
  random.Random(seed + 1).shuffle(heldout)
  os.makedirs(out, exist_ok=True)
  for name, pairs in (("train", train), ("heldout", heldout)):
    with open(os.path.join(out, f"{name}.jsonl"), "w") as f:
      f.writelines(json.dumps(p) + "\n" for p in pairs)
  counts = collections.Counter(p["completion"] for p in train)
  majority, _ = counts.most_common(1)[0]
  stats = {"train": len(train), "heldout": len(heldout), "presidents": len(counts), "majority": majority.strip(),
           "majority_heldout_accuracy": sum(p["completion"] == majority for p in heldout) / len(heldout)}
  with open(os.path.join(out, "stats.json"), "w") as f:
    json.dump(stats, f, indent=2)
  return stats


@functools.cache  # within_one asks once per table row; the corpus is decompressed once
def presidents_in_order() -> dict[str, int]:
  """President -> index in order of first address (Grover Cleveland counts once, first term)."""
  from lm.data import sotu
  order: dict[str, int] = {}
  for row in sotu.read_corpus():
    order.setdefault(row["president"], len(order))
  return order


def within_one(pairs: list[dict], answers: list[str]) -> float:
  order = presidents_in_order()
  near = [a.strip() in order and abs(order[a.strip()] - order[p["completion"].strip()]) <= 1
          for p, a in zip(pairs, answers)]
  return sum(near) / len(near)


def compare(examples: str, workdirs: list[str], max_examples: int | None, max_new_tokens: int) -> list[dict]:
  from lm import evaluation, loading
  from lm.data import sft as sft_data
  pairs = sft_data.read_jsonl(examples, field="--examples")[:max_examples]
  train_file = os.path.join(os.path.dirname(examples), "train.jsonl")
  rows = []
  if os.path.isfile(train_file):
    counts = collections.Counter(p["completion"] for p in sft_data.read_jsonl(train_file))
    majority = counts.most_common(1)[0][0]
    rows.append({"model": f"majority class ({majority.strip()})", "completion_loss": None,
                 "exact_match": sum(p["completion"] == majority for p in pairs) / len(pairs),
                 "within_one": within_one(pairs, [majority] * len(pairs))})
  for workdir in workdirs:
    trained = loading.load(workdir)
    result = evaluation.sft_evaluate(trained, pairs, max_new_tokens)
    rows.append({"model": f"{workdir} (step {trained.step})", "completion_loss": result["completion_loss"],
                 "exact_match": result["exact_match"], "within_one": within_one(pairs, result["answers"]),
                 "answers": result["answers"][:5]})
  print(f"{len(pairs)} held-out pairs of {examples}")
  print(f"{'model':<44} {'completion loss':>16} {'exact match':>12} {'within one president':>21}")
  for r in rows:
    loss = f"{r['completion_loss']:.3f}" if r["completion_loss"] is not None else "-"
    print(f"{r['model']:<44} {loss:>16} {r['exact_match']:>12.1%} {r['within_one']:>21.1%}")
  for r in rows:
    if "answers" in r:
      print(f"{r['model']}: first answers {[a.strip() for a in r['answers']]}")
  print(f"expected: {[p['completion'].strip() for p in pairs[:5]]}")
  return rows


def main():
  from lm.cli import set_process_defaults  # the entry point's process-wide settings (XLA flags, malloc), before jax starts
  set_process_defaults()
  parser = argparse.ArgumentParser(prog="python -m experiments.studies.sft_sotu", description=__doc__.split("\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  b = sub.add_parser("build")
  b.add_argument("--out", required=True)
  b.add_argument("--words", type=int, default=32)
  b.add_argument("--stride", type=int, default=96)
  b.add_argument("--per_speech", type=int, default=16)
  c = sub.add_parser("compare")
  c.add_argument("--examples", required=True)
  c.add_argument("--workdirs", required=True, help="comma-separated workdirs")
  c.add_argument("--max_examples", type=int, default=None)
  c.add_argument("--max_new_tokens", type=int, default=16)
  args = parser.parse_args()
  if args.command == "build":
    print(json.dumps(build(args.out, args.words, args.stride, args.per_speech), indent=2))
  else:
    compare(args.examples, args.workdirs.split(","), args.max_examples, args.max_new_tokens)


if __name__ == "__main__":
  main()
