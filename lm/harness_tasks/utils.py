"""Datasets of lm's local lm-eval tasks (the YAML files beside this one), read offline.

    lm_sotu_mc    multiple choice: sotu_mc.jsonl, 100 items of lm/tasks.py's task (seed 0)
    lm_sotu_gen   generation: sotu_gen.jsonl, "The State of the Union address of YEAR was
                  delivered by President" -> the president, for the 23 validation addresses
    lm_heldout    rolling log-likelihood (bits per byte) of the 8 documents of the shipped
                  held-out set (lm/data/heldout.py)

The YAMLs name these functions as `custom_dataset: !function utils.NAME`; lm-eval imports
this file by its path when it builds the task, so the JSONL paths are found beside it
whatever the working directory. `python lm/harness_tasks/utils.py` rewrites the two JSONL
files from the corpus (deterministic).
"""

import json
import os

import datasets

HERE = os.path.dirname(os.path.abspath(__file__))
MC_ITEMS = 100


def _jsonl(name: str) -> datasets.DatasetDict:
  return datasets.load_dataset("json", data_files={"test": os.path.join(HERE, name)})


def sotu_mc(**metadata) -> datasets.DatasetDict:
  return _jsonl("sotu_mc.jsonl")


def sotu_gen(**metadata) -> datasets.DatasetDict:
  return _jsonl("sotu_gen.jsonl")


def heldout(**metadata) -> datasets.DatasetDict:
  from lm.data import heldout as heldout_lib  # local: lm is imported only by the task that reads it
  rows = [{"domain": r["domain"], "id": r["id"], "text": r["text"]} for r in heldout_lib.read()]
  return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def write() -> None:
  from lm import tasks  # local: writing the files is a maintenance step, not part of a task
  from lm.data import sotu
  with open(os.path.join(HERE, "sotu_mc.jsonl"), "w", encoding="utf-8") as f:
    for item in tasks.sotu_continuations(MC_ITEMS):
      f.write(json.dumps(item, ensure_ascii=False) + "\n")
  with open(os.path.join(HERE, "sotu_gen.jsonl"), "w", encoding="utf-8") as f:
    for i, row in enumerate(sotu.read_corpus()):
      if sotu.split_of(i) == "validation":
        f.write(json.dumps({"prompt": f"The State of the Union address of {row['year']} was delivered by President",
                            "answer": row["president"]}, ensure_ascii=False) + "\n")


if __name__ == "__main__":
  write()
