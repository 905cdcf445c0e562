"""Generate text from a run's latest checkpoint, streaming it as it is produced.

    python -m lm.generate --workdir=DIR --prompt=TEXT [--max_new_tokens=N --temperature=T
                          --top_k=K --top_p=P --seed=S]
    python -m lm.generate --workdir=DIR --prompt_file=PROMPTS.txt     # one prompt a line, as a batch

temperature 0 is greedy. A single prompt streams; a batch prints each continuation when
the batch is done. A prompt starts as its tokenizer starts a text (tokenizer.start_ids: BOS
for lm's own tokenizers and Llama's, nothing for GPT-2's or SmolLM2's), so an HF directory
gets the ids transformers' `tokenizer(prompt)` gives it.
"""

import os
import sys

from absl import app
from absl import flags

from lm.cli import parse_flags, quiet_logs, set_process_defaults
from lm.errors import ConfigError

_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir (its latest checkpoint is used).")
_PROMPT = flags.DEFINE_string("prompt", None, "The text to continue.")
_PROMPT_FILE = flags.DEFINE_string("prompt_file", None, "A file with one prompt per line (a batch).")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 100, "Tokens to generate per prompt (stops early at EOS).")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.8, "Sampling temperature; 0 is greedy.")
_TOP_K = flags.DEFINE_integer("top_k", None, "Sample among the k most likely tokens.")
_TOP_P = flags.DEFINE_float("top_p", None, "Sample from the smallest set of tokens with this total probability.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_CHUNK = flags.DEFINE_integer("chunk_tokens", 8, "Tokens per streamed chunk.")
flags.mark_flag_as_required("workdir")


def read_prompts() -> list[str]:
  if (_PROMPT.value is None) == (_PROMPT_FILE.value is None):
    raise ValueError("pass exactly one of --prompt=TEXT or --prompt_file=FILE (one prompt per line).")
  if _PROMPT.value is not None:
    prompts = [_PROMPT.value]
  else:
    with open(os.path.expanduser(_PROMPT_FILE.value), encoding="utf-8", errors="replace") as f:
      prompts = [line.rstrip("\n") for line in f if line.strip()]
    if not prompts:
      raise ValueError(f"--prompt_file={_PROMPT_FILE.value} has no non-empty lines.")
  if any(not p for p in prompts):
    raise ValueError("the prompt is empty; give some text to continue (--prompt='Fellow citizens').")
  return prompts


class _Printer:
  """Prints the new text of a growing token sequence, holding back a trailing U+FFFD
  (half of a multi-byte character whose other bytes have not been generated yet)."""

  def __init__(self, tokenizer):
    self.tokenizer, self.ids, self.shown = tokenizer, [], ""

  def add(self, ids, final=False):
    self.ids += [int(i) for i in ids]
    text = self.tokenizer.decode(self.ids)
    if not final:
      text = text.rstrip("\ufffd")
    if text.startswith(self.shown):
      sys.stdout.write(text[len(self.shown):])
      sys.stdout.flush()
      self.shown = text


def main(argv):
  del argv
  quiet_logs()
  from lm import decode, loading  # local: after flag parsing (jax starts here)
  try:
    prompts = read_prompts()
    trained = loading.load(_WORKDIR.value)
    tok = trained.tokenizer
    ids = [tok.prompt_ids(p) for p in prompts]
    kw = dict(max_new_tokens=_MAX_NEW.value, temperature=_TEMPERATURE.value, top_k=_TOP_K.value,
              top_p=_TOP_P.value, seed=_SEED.value, eos_id=list(tok.eos_ids), pad_id=tok.pad_id,
              mesh=trained.mesh, rules=trained.rules)
    if len(prompts) == 1:
      printer = _Printer(tok)
      for i, chunk in enumerate(decode.stream(trained.model, trained.params, ids, chunk_tokens=_CHUNK.value, **kw)):
        if i == 0:  # the prompt was accepted
          sys.stdout.write(prompts[0])
        printer.add(chunk.tokens[0, :chunk.lengths[0]])
      printer.add([], final=True)
      sys.stdout.write("\n")
    else:
      out = decode.generate(trained.model, trained.params, ids, **kw)
      for i, (prompt, row) in enumerate(zip(prompts, out.sequences())):
        print(f"[{i + 1}] {prompt}{tok.decode(row)}\n")
  except (ConfigError, FileNotFoundError, ValueError) as e:
    sys.exit(f"Error: {e}")


if __name__ == "__main__":
  set_process_defaults()  # process-wide, before jax starts a backend
  app.run(main, flags_parser=parse_flags)
