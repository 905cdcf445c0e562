"""Evaluate a model on (prompt, completion) pairs: completion loss and exact-match accuracy.

    python -m lm.evaluate_sft --workdir=DIR --examples=FILE.jsonl [--max_examples=N]
                              [--max_new_tokens=16] [--show=5] [--json]

`--workdir` is anything lm.generate takes: a training run, an imported workdir, or a Hugging
Face checkpoint directory. The definitions of both numbers are in lm/evaluation.py.
"""

import json
import sys

from absl import app
from absl import flags

from lm.cli import parse_flags, quiet_logs, set_process_defaults
from lm.errors import ConfigError

_WORKDIR = flags.DEFINE_string("workdir", None, "A run, an imported workdir, or a Hugging Face checkpoint directory.")
_EXAMPLES = flags.DEFINE_string("examples", None, "JSONL file of {\"prompt\": ..., \"completion\": ...} lines.")
_MAX_EXAMPLES = flags.DEFINE_integer("max_examples", None, "Use only the first N pairs.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 16, "Tokens generated per answer.")
_SHOW = flags.DEFINE_integer("show", 5, "Print this many (prompt, expected, answer) triples.")
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object.")
flags.mark_flags_as_required(["workdir", "examples"])


def main(argv):
  del argv
  quiet_logs()
  from lm import evaluation, loading  # local: after flag parsing (jax starts here)
  from lm.data import sft as sft_data  # local, with the two above: lm.data imports jax
  try:
    pairs = sft_data.read_jsonl(_EXAMPLES.value, field="--examples")[:_MAX_EXAMPLES.value]
    trained = loading.load(_WORKDIR.value)
    result = evaluation.sft_evaluate(trained, pairs, _MAX_NEW.value)
  except (ConfigError, FileNotFoundError, ValueError) as e:
    sys.exit(f"Error: {e}")
  result.update(workdir=_WORKDIR.value, examples_file=_EXAMPLES.value, step=trained.step)
  if _JSON.value:
    from lm.metrics import json_safe  # local, like the imports above: jax loads after flag parsing
    print(json.dumps(json_safe(result), allow_nan=False))  # NaN / inf (a diverged model) as null
    return
  print(f"{_WORKDIR.value} (step {trained.step}) on {result['examples']} pairs of {_EXAMPLES.value}:\n"
        f"completion loss {result['completion_loss']:.4f} nats/token ({result['completion_bpb']:.4f} bits/byte, "
        f"perplexity {evaluation.perplexity(result['completion_loss']):.2f}), exact match {result['exact_match']:.1%}")
  for p, a in list(zip(pairs, result["answers"]))[:_SHOW.value]:
    print(f"  prompt ...{p['prompt'][-60:]!r}\n    expected {p['completion'].strip()!r}  got {a.strip()!r}")


if __name__ == "__main__":
  set_process_defaults()  # process-wide, before jax starts a backend
  app.run(main, flags_parser=parse_flags)
