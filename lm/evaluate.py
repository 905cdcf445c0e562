"""Evaluate a run's latest checkpoint on plain text.

    python -m lm.evaluate --workdir=DIR --text=FILE_OR_DIR [--json]

Prints the loss in nats/token and bits per byte over every token of the text (a file, or
every .txt under a folder), packed like the validation split.
"""

import json
import math
import sys

from absl import app
from absl import flags

from lm.cli import parse_flags, set_xla_flags

_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir (its latest checkpoint is used).")
_TEXT = flags.DEFINE_string("text", None, "A plain-text file, or a folder searched for *.txt files.")
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object instead of text.")
_BATCH = flags.DEFINE_integer("batch_size", None, "Rows per batch (default: the run's train.batch_size).")
flags.mark_flags_as_required(["workdir", "text"])


def evaluate_text(trained, path: str, batch_size: int | None = None) -> dict:
  import jax
  from lm import data as data_lib, sharding, steps
  cfg = trained.cfg
  n = jax.device_count()
  batch = batch_size or cfg.train.batch_size
  batch = -(-batch // n) * n  # a multiple of the devices
  eval_step = jax.jit(steps.make_eval_step(trained.model))
  sums = {"sum_nll": 0.0, "tokens": 0, "bytes": 0}
  with steps.in_context(trained.mesh, trained.rules):
    for host_batch in data_lib.text_iterator(path, trained.tokenizer, cfg.data.seq_len, batch):
      out = jax.device_get(eval_step(trained.params, sharding.shard_batch(
          {k: host_batch[k] for k in steps.EVAL_KEYS}, trained.mesh, trained.rules)))
      for k in sums:
        sums[k] += out[k].item()
  result = steps.eval_metrics(sums)
  return {"workdir": None, "text": path, "step": trained.step, "loss": result["eval_loss"],
          "bits_per_byte": result["eval_bpb"], "perplexity": math.exp(result["eval_loss"]),
          "tokens": sums["tokens"], "bytes": sums["bytes"]}


def main(argv):
  del argv
  from lm import loading
  from lm.config import ConfigError
  from lm.cli import quiet_logs
  quiet_logs()
  try:
    trained = loading.load(_WORKDIR.value)
    result = evaluate_text(trained, _TEXT.value, _BATCH.value)
  except (ConfigError, FileNotFoundError) as e:
    sys.exit(f"Error: {e}")
  result["workdir"] = _WORKDIR.value
  if _JSON.value:
    print(json.dumps(result))
  else:
    print(f"{result['text']}: {result['tokens']:,} tokens, {result['bytes']:,} bytes, checkpoint step "
          f"{result['step']}\nloss {result['loss']:.4f} nats/token, {result['bits_per_byte']:.4f} bits/byte, "
          f"perplexity {result['perplexity']:.2f}")


if __name__ == "__main__":
  set_xla_flags()  # process-wide, before jax starts a backend
  app.run(main, flags_parser=parse_flags)
