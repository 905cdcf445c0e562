"""What a finished run prints: loss against the unigram baseline, and sampled text."""

from __future__ import annotations

import os

import jax

from lm import decode
from lm import flops
from lm.evaluation import perplexity
from lm.workdir import atomic_write


def print_summary(s: dict) -> None:
  if jax.process_index() != 0:
    return
  lines = [f"status {s['status']} after {s['steps']} steps, {s['tokens']:,} tokens, {s['wall_s']:.0f} s"
           + (f", {s['tokens_per_s']:,.0f} tokens/s" if s.get("tokens_per_s") else "")
           + (f", MFU {s['mfu']:.1%}" if s.get("mfu") else "")]
  if s.get("eval_loss") is not None:
    line = f"validation loss {s['eval_loss']:.4f} nats/token, {s['eval_bpb']:.4f} bits/byte"
    if s.get("unigram_loss"):
      line += (f" (unigram baseline {s['unigram_loss']:.4f} nats/token, {s['unigram_bpb']:.4f} bits/byte: "
               f"{s['eval_loss'] / s['unigram_loss']:.0%} of its loss, perplexity {perplexity(s['eval_loss']):.1f} "
               f"vs {perplexity(s['unigram_loss']):.1f})")
    lines.append(line)
  if (s.get("mfu") or 0) > 1 and s.get("peak_flops_measured"):
    lines.append(stale_peak_warning(s))
  print("\n".join(lines), flush=True)


def stale_peak_warning(s: dict) -> str:
  """MFU above 100% means the matmul peak is too low: a peak timed while other work shared
  the device (only ever an underestimate)."""
  achieved = s["mfu"] * s["peak_flops_measured"]
  return (f"warning: MFU above 100%: this run computed {achieved / 1e9:,.1f} GFLOP/s (flops_executed), more than the "
          f"peak of {s['peak_flops_measured'] / 1e9:,.1f} GFLOP/s measured as it started (load average "
          f"{s.get('peak_load_avg') or float('nan'):.1f}), so other work loaded the machine then; "
          + (f"against the cached quiet peak x its core share, MFU is {s['mfu_cached_share']:.1%}."
             if s.get("mfu_cached_share") else
             f"to have a quiet figure beside it, measure on a quiet machine: python -c \"from lm import flops; "
             f"flops.peak_flops('{s.get('dtype') or 'float32'}', refresh=True)\" (cache: {flops.default_cache_file()})"))


def print_samples(result, prompts, workdir: str, max_new_tokens: int = 48, temperature: float = 0.8,
                  top_p: float = 0.95, seed: int = 0) -> list[str]:
  """Sampled continuations of fixed prompts; also written to WORKDIR/samples.txt.

  They fit any model: a context of model.max_seq_len tokens gets at most half of it as new
  tokens, and a longer prompt keeps its last tokens (shown after "..."), with a note."""
  tok, context = result.tokenizer, result.model.cfg.max_seq_len
  new = min(max_new_tokens, context // 2)
  if new < 1:
    print(f"\nNo samples: the model's context (model.max_seq_len={context}) has no room for a prompt and a "
          "continuation.", flush=True)
    return []
  ids = [tok.prompt_ids(p, max_len=context - new) for p in prompts]
  trimmed = [len(i) < len(tok.prompt_ids(p)) for i, p in zip(ids, prompts)]
  out = decode.generate(result.model, result.state["params"], ids, max_new_tokens=new, temperature=temperature,
                        top_p=top_p, seed=seed, eos_id=list(tok.eos_ids), pad_id=tok.pad_id)
  texts = []
  for prompt, prompt_ids, cut, gen, n in zip(prompts, ids, trimmed, out.tokens, out.lengths):
    shown = "..." + tok.decode(prompt_ids) if cut else prompt
    texts.append(shown + tok.decode([int(i) for i in gen[:n]]))
  if jax.process_index() == 0:
    body = "\n\n".join(f"[{i + 1}] {t}" for i, t in enumerate(texts))
    note = (f" (fitted to model.max_seq_len={context}: prompts cut to their last {context - new} tokens, "
            f"{new} new tokens)" if any(trimmed) or new < max_new_tokens else "")
    print(f"\nSamples (temperature {temperature}, top-p {top_p}, seed {seed}){note}:\n{body}\n", flush=True)
    atomic_write(os.path.join(workdir, "samples.txt"), body + "\n")
  return texts
