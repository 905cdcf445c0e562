"""Evaluate a run's latest checkpoint on plain text.

    python -m lm.evaluate --workdir=DIR --text=FILE_OR_DIR [--json]
    python -m lm.evaluate --workdir=DIR --text=heldout     # the shipped multi-domain set

Prints the loss in nats/token and bits per byte over every token of the text (a file, or
every .txt under a folder), packed like the validation split. A folder is also broken down
by domain (each sub-folder and each .txt directly in it: lm/domains.py), with the micro and
macro averages; the folder's own loss and bits per byte are the micro average. --json
prints one JSON object, with null for a number that is not finite (the loss of a diverged
model). A damaged latest checkpoint is skipped for the newest intact one, with a warning
(lm/checkpoint.py).
"""

import json
import os
import sys

from absl import app
from absl import flags

from lm.cli import parse_flags, quiet_logs, set_process_defaults
from lm.errors import ConfigError

_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir (its latest checkpoint is used).")
_TEXT = flags.DEFINE_string("text", None, "A plain-text file, or a folder searched for *.txt files (one domain per "
                            "sub-folder or file); 'heldout' is the shipped multi-domain set.")
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object instead of text.")
_BATCH = flags.DEFINE_integer("batch_size", None, "Rows per batch (default: the run's train.batch_size).")
flags.mark_flags_as_required(["workdir", "text"])


def main(argv):
  del argv
  from lm import domains, evaluation, loading  # local: after flag parsing (jax starts here)
  quiet_logs()
  try:
    trained = loading.load(_WORKDIR.value)
    text = domains.resolve(_TEXT.value)
    if os.path.isdir(os.path.expanduser(text)):  # one row per domain, the folder's numbers are the micro average
      result = domains.domain_losses(trained, text, _BATCH.value)
      result.update({k: result["micro"][k] for k in ("loss", "bits_per_byte", "tokens", "bytes")},
                    perplexity=evaluation.perplexity(result["micro"]["loss"]))
    else:
      result = evaluation.text_file_loss(trained, text, _BATCH.value)
  except (ConfigError, FileNotFoundError) as e:
    sys.exit(f"Error: {e}")
  result = {"workdir": _WORKDIR.value, **result}
  if _JSON.value:
    from lm.metrics import json_safe  # local, like the imports above: jax loads after flag parsing
    print(json.dumps(json_safe(result), allow_nan=False))  # NaN / inf (a diverged model) as null
  elif "domains" in result:
    print(f"{result['text']}: {len(result['domains'])} domains, checkpoint step {result['step']}\n"
          f"{domains.table(result)}")
  else:
    print(f"{result['text']}: {result['tokens']:,} tokens, {result['bytes']:,} bytes, checkpoint step "
          f"{result['step']}\nloss {result['loss']:.4f} nats/token, {result['bits_per_byte']:.4f} bits/byte, "
          f"perplexity {result['perplexity']:.2f}")


if __name__ == "__main__":
  set_process_defaults()  # process-wide, before jax starts a backend
  app.run(main, flags_parser=parse_flags)
