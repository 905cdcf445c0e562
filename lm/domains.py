"""Bits per byte on several held-out domains: one row per domain, and their averages.

    python -m lm.evaluate --workdir=RUN --text=DIR       # a table; --json for one object
    python -m lm.evaluate --workdir=RUN --text=heldout   # the shipped set (lm/data/heldout.py)

A domain is each sub-folder of DIR (every .txt under it, recursively) and each .txt file
directly in DIR; a single file is one domain. Each domain is packed and scored exactly as
`lm.evaluate --text` scores a text (lm/evaluation.py: text_file_loss), with one compiled
eval step for all of them.

    micro: sum over domains of nll / (ln 2 * sum of bytes)   -- every byte weighs the same
    macro: the mean of the domains' bits per byte              -- every domain weighs the same
(and the same two for nats per token). Bits per byte divide by the UTF-8 bytes of the text
behind the scored tokens, so they compare across tokenizers; the micro average is dominated
by the largest domains, the macro average is the one Paloma-style reports compare.
"""

from __future__ import annotations

import math
import os

import jax

from lm import data as data_lib
from lm import evaluation
from lm import steps
from lm.data import heldout
from lm.data import text_files
from lm.errors import ConfigError


def resolve(path: str) -> str:
  """`heldout` names the shipped set (written once to the cache); anything else is a path."""
  return heldout.folder() if path == heldout.NAME and not os.path.exists(path) else path


def domain_paths(path: str) -> list[tuple[str, str]]:
  """[(domain name, file or folder)] under `path`, sorted by name."""
  path = os.path.expanduser(path)
  if os.path.isfile(path):
    return [(os.path.splitext(os.path.basename(path))[0], path)]
  text_files.text_files(path)  # a ConfigError naming the fix when there is no text at all
  found = []
  for name in sorted(os.listdir(path)):
    full = os.path.join(path, name)
    if os.path.isdir(full) and any(f.endswith(".txt") for _, _, fs in os.walk(full) for f in fs):
      found.append((name, full))
    elif os.path.isfile(full) and name.endswith(".txt"):
      found.append((name[:-4], full))
  return found


def averages(rows: list[dict]) -> dict:
  """Micro and macro averages of rows with loss, bits_per_byte, tokens and bytes."""
  nll = sum(r["loss"] * r["tokens"] for r in rows)
  tokens, nbytes = sum(r["tokens"] for r in rows), sum(r["bytes"] for r in rows)
  return {"micro": {"loss": nll / max(tokens, 1), "bits_per_byte": nll / math.log(2) / max(nbytes, 1),
                    "tokens": tokens, "bytes": nbytes},
          "macro": {"loss": sum(r["loss"] for r in rows) / len(rows),
                    "bits_per_byte": sum(r["bits_per_byte"] for r in rows) / len(rows)}}


def domain_losses(trained, path: str, batch_size: int | None = None) -> dict:
  """{"text", "step", "domains": [{domain, loss, bits_per_byte, tokens, bytes}], "micro", "macro"}."""
  cfg = trained.cfg
  n = jax.device_count()
  batch = -(-(batch_size or cfg.train.batch_size) // n) * n  # a multiple of the devices
  eval_step = jax.jit(steps.make_eval_step(trained.model))
  rows = []
  for name, where in domain_paths(path):
    try:
      batches = data_lib.text_iterator(where, trained.tokenizer, cfg.data.seq_len, batch)
    except ConfigError as e:  # e.g. a domain of empty files: named, not skipped
      raise ConfigError(f"domain {name!r}: {e}") from None
    out = evaluation.loss_over(eval_step, trained.params, batches, trained.mesh, trained.rules)
    rows.append({"domain": name, "loss": out["loss"], "bits_per_byte": out["bits_per_byte"],
                 "tokens": out["tokens"], "bytes": out["bytes"]})
  return {"text": path, "step": trained.step, "domains": rows, **averages(rows)}


def table(result: dict) -> str:
  """The rows and both averages as aligned text."""
  width = max([len(r["domain"]) for r in result["domains"]] + [len("macro average")])
  lines = [f"{'domain':{width}s} {'bits/byte':>9s} {'nats/token':>10s} {'tokens':>9s} {'bytes':>10s}"]
  for r in result["domains"]:
    lines.append(f"{r['domain']:{width}s} {r['bits_per_byte']:9.4f} {r['loss']:10.4f} {r['tokens']:9,d} "
                 f"{r['bytes']:10,d}")
  mi, ma = result["micro"], result["macro"]
  lines.append(f"{'micro average':{width}s} {mi['bits_per_byte']:9.4f} {mi['loss']:10.4f} {mi['tokens']:9,d} "
               f"{mi['bytes']:10,d}")
  lines.append(f"{'macro average':{width}s} {ma['bits_per_byte']:9.4f} {ma['loss']:10.4f}")
  return "\n".join(lines)
