"""Evaluation: one loop that sums a model's loss over batches, and what training evaluates.

    loss_over(eval_step, params, batches, mesh, rules) -> {"loss", "bits_per_byte", "tokens", "bytes"}
        the loop behind `lm.evaluate` (text_file_loss), SFT's completion loss (below)
        and every evaluation during training (Evaluation)
    Evaluation(cfg, spec, tokenizer, tasks)(params) -> {"eval_loss", "eval_bpb", "eval_tokens", ...}
        chosen once per run from data.format: the held-out split ('text'), or the held-out
        pairs' completion loss plus exact match by greedy generation ('sft'); then the
        train.eval_tasks (lm/tasks.py: task_* metrics), when given

Supervised fine-tuning (data.format='sft'; `python -m lm.evaluate_sft` for any model):
  completion loss: nats per token over the completion tokens and the EOS that ends them, the
      prompt given (teacher forcing) -- what fine-tuning minimises; bits per completion byte
      beside it. Pairs are packed as in training (lm/data/sft.py, same truncation rule).
  exact match: greedy generation (lm.decode.generate) from the prompt, started as its
      tokenizer starts a text (tokenizer.prompt_ids: [BOS] + prompt for lm's own), until EOS or
      max_new_tokens; the answer is that text cut at its first newline when the expected
      completion has none; a match when answer.strip() == completion.strip(). A prompt too long
      for the context keeps its last tokens (max_seq_len - max_new_tokens - 1 of them).

Sums are accumulated on the host in float64 (the batch sums come off the device in float32),
so a long text does not lose precision; bits per byte divide by the UTF-8 bytes behind the
counted targets (data/tokenizers.py: token_bytes).
"""

from __future__ import annotations

import itertools
import math
from typing import Iterable

import grain
import jax

from lm import data as data_lib
from lm import decode
from lm import sharding
from lm import steps
from lm.data import sft as sft_data


def loss_over(eval_step, params, batches: Iterable[dict], mesh, rules) -> dict:
  """Summed nll / tokens / bytes of eval_step over the batches (host batches are placed on
  the mesh; batches already on it are used as they are) -> loss and bits per byte."""
  keys = steps.EVAL_KEYS + steps.OPTIONAL_KEYS
  total = {"sum_nll": 0.0, "tokens": 0, "bytes": 0}
  with steps.in_context(mesh, rules):
    for batch in batches:
      batch = {k: v for k, v in batch.items() if k in keys}
      if not all(isinstance(v, jax.Array) for v in batch.values()):
        batch = sharding.shard_batch(batch, mesh, rules)
      out = jax.device_get(eval_step(params, batch))
      total["sum_nll"] += float(out["sum_nll"])
      total["tokens"] += int(out["tokens"])
      total["bytes"] += int(out["bytes"])
  nll, tokens, nbytes = total["sum_nll"], total["tokens"], total["bytes"]
  return {"loss": nll / max(tokens, 1), "bits_per_byte": nll / math.log(2) / max(nbytes, 1),
          "tokens": tokens, "bytes": nbytes}


def text_file_loss(trained, path: str, batch_size: int | None = None) -> dict:
  """A loaded model (lm.loading.Trained) on a text file or a folder of .txt files, packed like
  the validation split: what `python -m lm.evaluate` prints."""
  cfg = trained.cfg
  n = jax.device_count()
  batch = -(-(batch_size or cfg.train.batch_size) // n) * n  # a multiple of the devices
  eval_step = jax.jit(steps.make_eval_step(trained.model))
  batches = data_lib.text_iterator(path, trained.tokenizer, cfg.data.seq_len, batch)
  out = loss_over(eval_step, trained.params, batches, trained.mesh, trained.rules)
  return {"text": path, "step": trained.step, "loss": out["loss"], "bits_per_byte": out["bits_per_byte"],
          "perplexity": perplexity(out["loss"]), "tokens": out["tokens"], "bytes": out["bytes"]}


def perplexity(loss: float) -> float:
  """exp(loss), inf where that overflows (a loss above ~709 nats, from a diverged model)."""
  return math.exp(loss) if loss < 709 else float("inf")


class Evaluation:
  """What a training run evaluates at every train.eval_every steps and at the end.

  The held-out batches (train.eval_steps of them, the same in every evaluation) are read and
  placed on the mesh once. With data.format='sft' they are the held-out pairs, eval_loss is
  the completion loss, and eval_exact_match is added (below).
  """

  def __init__(self, cfg, spec: steps.StateSpec, tokenizer, tasks=None):
    self.spec, self.tokenizer, self.data_cfg, self.tasks = spec, tokenizer, cfg.data, tasks
    keys = steps.EVAL_KEYS + (steps.OPTIONAL_KEYS if cfg.data.format == "sft" else ())
    self.eval_step = spec.jit_eval_step(steps.make_eval_step(spec.model),
                                        steps.batch_shardings(spec.mesh, spec.rules, keys))
    held_out = data_lib.eval_iterator(cfg.data, tokenizer, cfg.train.batch_size)
    self.batches = [sharding.shard_batch({k: b[k] for k in keys}, spec.mesh, spec.rules)
                    for b in itertools.islice(held_out, cfg.train.eval_steps)]
    self.pairs = sft_data.read_examples(cfg.data, "eval") if cfg.data.format == "sft" else None

  def __call__(self, params) -> dict:
    out = loss_over(self.eval_step, params, self.batches, self.spec.mesh, self.spec.rules)
    metrics = {"eval_loss": out["loss"], "eval_bpb": out["bits_per_byte"], "eval_tokens": out["tokens"]}
    if self.pairs is not None:
      metrics.update(sft_train_metrics(self.spec.model, params, self.tokenizer, self.pairs, self.data_cfg,
                                            self.spec.mesh, self.spec.rules))
    if self.tasks:  # lm/tasks.py: multiple choice and held-out text sets (train.eval_tasks)
      metrics.update(self.tasks(params))
    return metrics


# ---- supervised fine-tuning: completion loss and exact match ----

def answer_text(generated: str, expected: str) -> str:
  return generated.split("\n", 1)[0] if "\n" not in expected.strip() else generated


def generate_answers(model, params, tokenizer, pairs: list[dict], max_new_tokens: int, mesh=None, rules=None,
                     batch_size: int = 64) -> list[str]:
  """Greedy answers to each prompt (text up to EOS, or max_new_tokens tokens)."""
  room = max(2, model.cfg.max_seq_len - max_new_tokens)  # the start and >= 1 prompt token
  eos_ids = list(tokenizer.eos_ids)
  answers = []
  for start in range(0, len(pairs), batch_size):
    chunk = pairs[start:start + batch_size]
    prompts = [tokenizer.prompt_ids(p["prompt"], max_len=room) for p in chunk]
    out = decode.generate(model, params, prompts, max_new_tokens=max_new_tokens, eos_id=eos_ids,
                          pad_id=tokenizer.pad_id, mesh=mesh, rules=rules)
    for seq in out.sequences():
      if seq and seq[-1] in eos_ids:
        seq = seq[:-1]
      answers.append(tokenizer.decode(seq))
  return answers


def exact_match(pairs: list[dict], answers: list[str]) -> float:
  hits = [answer_text(a, p["completion"]).strip() == p["completion"].strip() for p, a in zip(pairs, answers)]
  return sum(hits) / max(len(hits), 1)


def completion_loss(model, params, tokenizer, pairs: list[dict], seq_len: int, batch_size: int, mesh, rules) -> dict:
  """{"loss": nats/token, "bits_per_byte", "tokens", "bytes"} over the completions (+ EOS)."""
  n = jax.device_count()
  batch = -(-batch_size // n) * n  # a multiple of the devices
  batches = sft_data.packed_batches(grain.MapDataset.source(pairs), tokenizer, seq_len, batch, seed=None,
                                    finite=True, process_index=0, process_count=1)
  return loss_over(jax.jit(steps.make_eval_step(model)), params, batches, mesh, rules)


def sft_evaluate(trained, pairs: list[dict], max_new_tokens: int = 16, batch_size: int | None = None) -> dict:
  """Both numbers for a loaded model (lm.loading.Trained) on the pairs."""
  cfg = trained.cfg
  loss = completion_loss(trained.model, trained.params, trained.tokenizer, pairs, cfg.data.seq_len,
                         batch_size or cfg.train.batch_size, trained.mesh, trained.rules)
  answers = generate_answers(trained.model, trained.params, trained.tokenizer, pairs, max_new_tokens,
                             trained.mesh, trained.rules)
  return {"examples": len(pairs), "completion_loss": loss["loss"], "completion_bpb": loss["bits_per_byte"],
          "completion_tokens": loss["tokens"], "exact_match": exact_match(pairs, answers),
          "answers": [answer_text(a, p["completion"]) for p, a in zip(pairs, answers)]}


def sft_train_metrics(model, params, tokenizer, pairs: list[dict], data_cfg, mesh, rules) -> dict:
  """What fine-tuning adds to each evaluation: eval_exact_match on data.sft_eval_examples pairs."""
  pairs = pairs[:int(data_cfg.sft_eval_examples)]
  answers = generate_answers(model, params, tokenizer, pairs, int(data_cfg.sft_max_new_tokens), mesh, rules)
  return {"eval_exact_match": exact_match(pairs, answers)}
