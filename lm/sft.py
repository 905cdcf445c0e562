"""A model on (prompt, completion) pairs: completion loss and exact-match accuracy.

    evaluate(trained, pairs)   # lm.loading.Trained; the library behind `python -m lm.evaluate_sft`
    train_metrics(...)         # what fine-tuning (data.format='sft') adds to every evaluation

Fine-tuning reports the two numbers as eval_loss and eval_exact_match.

completion loss: nats per token over the completion tokens and the EOS that ends them, the
    prompt given (teacher forcing) -- what fine-tuning minimises; bits per completion byte
    beside it. Pairs are packed as in training (lm/data/sft.py, same truncation rule).
exact match: greedy generation (lm.decode.generate) from [BOS] + prompt until EOS or
    max_new_tokens; the answer is that text cut at its first newline when the expected
    completion has none; a match when answer.strip() == completion.strip(). A prompt too long
    for the context keeps its last tokens (max_seq_len - max_new_tokens - 1 of them).
"""

from __future__ import annotations


def answer_text(generated: str, expected: str) -> str:
  return generated.split("\n", 1)[0] if "\n" not in expected.strip() else generated


def generate_answers(model, params, tokenizer, pairs: list[dict], max_new_tokens: int, mesh=None, rules=None,
                     batch_size: int = 64) -> list[str]:
  """Greedy answers to each prompt (text up to EOS, or max_new_tokens tokens)."""
  from lm import decode
  keep = max(1, model.cfg.max_seq_len - max_new_tokens - 1)
  eos_ids = list(tokenizer.eos_ids)
  answers = []
  for start in range(0, len(pairs), batch_size):
    chunk = pairs[start:start + batch_size]
    prompts = [[tokenizer.bos_id] + tokenizer.encode(p["prompt"])[-keep:] for p in chunk]
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
  import grain
  import jax
  from lm import sharding, steps
  from lm.data import sft as sft_data
  n = jax.device_count()
  batch = -(-batch_size // n) * n
  keys = steps.EVAL_KEYS + steps.OPTIONAL_KEYS
  eval_step = jax.jit(steps.make_eval_step(model))
  sums = {"sum_nll": 0.0, "tokens": 0, "bytes": 0}
  it = sft_data.packed_batches(grain.MapDataset.source(pairs), tokenizer, seq_len, batch, seed=None, finite=True,
                               process_index=0, process_count=1)
  with steps.in_context(mesh, rules):
    for host_batch in it:
      out = jax.device_get(eval_step(params, sharding.shard_batch({k: host_batch[k] for k in keys}, mesh, rules)))
      for k in sums:
        sums[k] += out[k].item()
  m = steps.eval_metrics(sums)
  return {"loss": m["eval_loss"], "bits_per_byte": m["eval_bpb"], "tokens": sums["tokens"], "bytes": sums["bytes"]}


def evaluate(trained, pairs: list[dict], max_new_tokens: int = 16, batch_size: int | None = None) -> dict:
  """Both numbers for a loaded model (lm.loading.Trained) on the pairs."""
  cfg = trained.cfg
  loss = completion_loss(trained.model, trained.params, trained.tokenizer, pairs, cfg.data.seq_len,
                         batch_size or cfg.train.batch_size, trained.mesh, trained.rules)
  answers = generate_answers(trained.model, trained.params, trained.tokenizer, pairs, max_new_tokens,
                             trained.mesh, trained.rules)
  return {"examples": len(pairs), "completion_loss": loss["loss"], "completion_bpb": loss["bits_per_byte"],
          "completion_tokens": loss["tokens"], "exact_match": exact_match(pairs, answers),
          "answers": [answer_text(a, p["completion"]) for p, a in zip(pairs, answers)]}


def train_metrics(model, params, tokenizer, pairs: list[dict], data_cfg, mesh, rules) -> dict:
  """What fine-tuning adds to each evaluation: eval_exact_match on data.sft_eval_examples pairs."""
  pairs = pairs[:int(data_cfg.get("sft_eval_examples", 128))]
  answers = generate_answers(model, params, tokenizer, pairs, int(data_cfg.get("sft_max_new_tokens", 16)), mesh, rules)
  return {"eval_exact_match": exact_match(pairs, answers)}
