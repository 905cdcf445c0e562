"""lm as a model of EleutherAI's lm-evaluation-harness (`pip install 'lm[eval]'`, lm-eval 0.4.13).

    python -m lm.harness run --model lm --model_args workdir=RUN --batch_size 64 --tasks hellaswag arc_easy
    python -m lm.harness run --model lm --model_args workdir=RUN --batch_size 64 \\
        --include_path lm/harness_tasks --tasks lm_sotu_mc lm_sotu_gen lm_heldout     # offline

`python -m lm.harness ARGS` is lm_eval's own command line (`lm_eval ARGS`) with lm's model
registered under the name "lm" first. lm-eval 0.4.13 has no plugin hook that would let a bare
`lm_eval --model lm` find a model outside its source tree: its registry is filled from its
own table (lm_eval/models/__init__.py), `--include_path` only indexes task YAMLs, and a
task's `!function` modules are imported after the model is built. (Entry-point plugins were
merged upstream later, EleutherAI/lm-evaluation-harness#4013.) From Python, pass the model
itself: `lm_eval.simple_evaluate(model=LMHarness(workdir=RUN), tasks=[...])`.

model_args: workdir (an lm workdir, its latest checkpoint, or a Hugging Face directory: what
lm.loading.load reads), max_gen_toks (cap on generated tokens, default 256), mesh ('run': the
run's mesh config where it fits the devices present, else all devices on `data`; 'data').
Rows per forward pass come from the harness's own `--batch_size N` (its default is 1: pass
64 or so; 'auto' means 32); lm-eval hands it to the model beside model_args.

The three request types, through lm's own forward pass (lm/scoring.py) and KV-cache decoding
(lm/decode.py), batched on the mesh:
  loglikelihood(context, continuation)  context and continuation tokenized separately (the
      context's trailing whitespace moved to the continuation, as the harness does), the
      context as [BOS] + its tokens (as lm/generate.py builds prompts; rel-14 adds a Tokenizer
      method for it), cut from the left to fit max_seq_len; (sum log p, all-greedy).
  loglikelihood_rolling(text)  the windows lm.evaluate scores a document in, without its EOS:
      the number lm.evaluate gives for the text, less the EOS term (tests/test_harness.py).
  generate_until(context, gen_kwargs)  greedy (or sampled, with do_sample and temperature)
      up to max_gen_toks tokens or EOS, cut at the first `until` string.

Runs in one process on all of its devices (the harness's rank 0 of 1); requests are not split
between processes.
"""

from __future__ import annotations

import json

from absl import logging as absl_logging
import numpy as np
from lm_eval.__main__ import cli_evaluate
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from lm import checkpoint as checkpoint_lib
from lm import decode
from lm import loading
from lm import scoring
from lm import sharding
from lm.cli import set_process_defaults
from lm.errors import ConfigError
from lm.hf import files as hf_files

NAME = "lm"


def _mesh_cfg(workdir: str, choice: str):
  """The run's mesh config when it fits the devices here (choice 'run'), else None (loading's
  default: all devices on `data`)."""
  if choice not in ("run", "data"):
    raise ConfigError(f"model_args mesh={choice!r} is not 'run' or 'data'.")
  if choice == "data" or hf_files.is_hf_dir(workdir):
    return None
  import jax  # local: a mesh needs the devices; importing this module must not start them
  cfg = checkpoint_lib.load_config(workdir)
  try:
    sharding.mesh_shape(cfg.mesh, jax.device_count())
  except ConfigError:
    return None
  return cfg.mesh


@register_model(NAME)
class LMHarness(LM):
  """An lm checkpoint behind lm-eval's LM interface."""

  def __init__(self, workdir: str, batch_size: int | str = 32, max_gen_toks: int = 256, mesh: str = "run",
               **harness_args):
    super().__init__()
    del harness_args  # device, max_batch_size, ...: lm places the model on every device present
    self.trained = loading.load(workdir, mesh_cfg=_mesh_cfg(workdir, mesh))
    self.tokenizer = self.trained.tokenizer
    self.max_length = self.trained.model.cfg.max_seq_len
    self.batch_size = 32 if str(batch_size).startswith("auto") else int(batch_size)
    self.max_gen_toks = int(max_gen_toks)
    self.scorer = scoring.Scorer(self.trained.model, self.trained.mesh, self.trained.rules, self.batch_size)
    self.workdir = workdir

  @property
  def tokenizer_name(self) -> str:
    return f"lm:{self.tokenizer.kind}:{self.tokenizer.vocab_size}"

  def _context(self, text: str) -> list[int]:
    return [self.tokenizer.bos_id] + self.tokenizer.encode(text)  # BOS as lm/generate.py (rel-14: prompt method)

  def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
    rows = []
    for context, continuation in (r.args for r in requests):
      spaces = len(context) - len(context.rstrip())
      if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
      rows.append(scoring.continuation_row(self._context(context), self.tokenizer.encode(continuation),
                                           self.max_length))
    out = self.scorer(self.trained.params, rows)
    for r, o in zip(requests, out):
      self.cache_hook.add_partial("loglikelihood", r.args, o)
    return out

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
    rows, owner = [], []
    for i, (text, *_) in enumerate(r.args for r in requests):
      doc = scoring.document_rows(self.tokenizer.encode(text), self.max_length, self.tokenizer.bos_id)
      rows += doc
      owner += [i] * len(doc)
    scores = self.scorer(self.trained.params, rows)
    totals = np.zeros(len(requests), np.float64)
    for i, (logprob, _) in zip(owner, scores):
      totals[i] += logprob
    out = [float(t) for t in totals]
    for r, o in zip(requests, out):
      self.cache_hook.add_partial("loglikelihood_rolling", r.args, o)
    return out

  def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
    out: list[str | None] = [None] * len(requests)
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(requests):  # one decode call per distinct gen_kwargs and batch
      groups.setdefault(json.dumps(r.args[1], sort_keys=True, default=str), []).append(i)
    for key, members in groups.items():
      kw = dict(json.loads(key))
      until = kw.pop("until", None) or []
      until = [until] if isinstance(until, str) else list(until)
      max_new = max(1, min(int(kw.pop("max_gen_toks", self.max_gen_toks)), self.max_gen_toks, self.max_length - 1))
      temperature = float(kw.pop("temperature", 0.0)) if kw.pop("do_sample", False) else 0.0
      keep = self.max_length - max_new
      for start in range(0, len(members), self.batch_size):
        chunk = members[start:start + self.batch_size]
        prompts = [self._context(requests[i].args[0])[-keep:] for i in chunk]
        result = decode.generate(self.trained.model, self.trained.params, prompts, max_new_tokens=max_new,
                                 temperature=temperature, seed=int(kw.get("seed", 0)),
                                 eos_id=list(self.tokenizer.eos_ids), pad_id=self.tokenizer.pad_id,
                                 mesh=self.trained.mesh, rules=self.trained.rules)
        for i, seq in zip(chunk, result.sequences()):
          text = self.tokenizer.decode(t for t in seq if t not in self.tokenizer.eos_ids)
          for stop in until:
            text = text.split(stop, 1)[0] if stop else text
          out[i] = text
          self.cache_hook.add_partial("generate_until", requests[i].args, text)
    return out


def main() -> None:
  """lm_eval's command line, with the "lm" model registered (importing this module did it)."""
  set_process_defaults()  # process-wide, before jax starts a backend
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every restore at INFO
  cli_evaluate()


if __name__ == "__main__":
  main()
