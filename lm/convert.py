"""Convert checkpoints between Hugging Face and lm, in either direction.

    python -m lm.convert --from_hf=HF_DIR --to=WORKDIR [--seq_len=N] [--param_dtype=float32]
    python -m lm.convert --from=WORKDIR --to_hf=HF_DIR [--dtype=float32] [--max_shard_mb=N]

Import reads a local LlamaForCausalLM or GPT2LMHeadModel directory (config.json,
*.safetensors sharded or not, tokenizer.json) and writes an lm workdir: config.json,
tokenizer/ and a parameters-only checkpoint at step 0. Then:

    python -m lm.generate --workdir=WORKDIR --prompt=...        (also --workdir=HF_DIR directly)
    python -m lm.evaluate --workdir=WORKDIR --text=...
    python -m lm.main --config=configs/finetune.py:WORKDIR --workdir=FT ...   (fine-tune it)

Export writes the latest checkpoint of an lm workdir as a directory transformers loads with
AutoModelForCausalLM.from_pretrained (Llama-style lm models as LlamaForCausalLM, GPT-2-style
as GPT2LMHeadModel) and the tokenizer files lm has for it. Nothing is downloaded.
"""

import sys

from absl import app
from absl import flags

from lm.cli import parse_flags, quiet_logs, set_process_defaults
from lm.errors import ConfigError

_FROM_HF = flags.DEFINE_string("from_hf", None, "A Hugging Face checkpoint directory to import.")
_TO = flags.DEFINE_string("to", None, "The lm workdir to write (import).")
_FROM = flags.DEFINE_string("from", None, "An lm workdir to export (its latest checkpoint).")
_TO_HF = flags.DEFINE_string("to_hf", None, "The Hugging Face directory to write (export).")
_SEQ_LEN = flags.DEFINE_integer("seq_len", None, "Import: data.seq_len of the workdir (default min(context, 1024)).")
_PARAM_DTYPE = flags.DEFINE_enum("param_dtype", "float32", ["float32", "bfloat16", "float16"],
                                 "Import: the dtype lm keeps the parameters in.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16", "float16"], "Export: the safetensors dtype.")
_MAX_SHARD_MB = flags.DEFINE_integer("max_shard_mb", None, "Export: split the weights into shards of at most "
                                     "this many MB (with model.safetensors.index.json).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}.")
  quiet_logs()
  importing = _FROM_HF.value is not None or _TO.value is not None
  exporting = _FROM.value is not None or _TO_HF.value is not None
  if importing == exporting or (importing and not (_FROM_HF.value and _TO.value)) or (
      exporting and not (_FROM.value and _TO_HF.value)):
    sys.exit("Error: pass --from_hf=HF_DIR --to=WORKDIR (import) or --from=WORKDIR --to_hf=HF_DIR (export).")
  from lm.hf import exporter, importer  # local: after flag parsing (jax starts here)
  try:
    if importing:
      out = importer.import_to_workdir(_FROM_HF.value, _TO.value, _SEQ_LEN.value, _PARAM_DTYPE.value)
      print(f"Imported {_FROM_HF.value} ({out['experiment']}, {out['params']:,} parameters, vocabulary "
            f"{out['vocab_size']:,} rows / {out['tokenizer_vocab_size']:,} tokenizer ids, seq_len {out['seq_len']}) "
            f"into {out['workdir']}.")
    else:
      shard = _MAX_SHARD_MB.value * 2**20 if _MAX_SHARD_MB.value else None
      written = exporter.export_workdir(_FROM.value, _TO_HF.value, _DTYPE.value, shard)
      print(f"Exported {_FROM.value} to {_TO_HF.value}: {', '.join(written)}.")
  except (ConfigError, FileNotFoundError, FileExistsError) as e:
    sys.exit(f"Error: {e}")


if __name__ == "__main__":
  set_process_defaults()  # process-wide, before jax starts a backend
  app.run(main, flags_parser=parse_flags)
