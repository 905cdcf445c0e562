"""Inference cost: lm's KV-cache decoding against Hugging Face transformers' generate().

    python -m experiments.bench.inference [--sizes=llama-10m,llama-100m,gpt2-10m] [--batches=1,8]
        [--prompt_len=64] [--new_tokens=64] [--repeats=3] [--no_hf] [--dtype=bfloat16 (with --no_hf)]

--dtype=bfloat16 holds lm's weights, compute and KV cache in bf16, as a GPU serves them (half the
bytes a step reads); the transformers side stays float32, so it needs --no_hf. On a device whose
spec-sheet bandwidth lm/flops.py knows (H100, H200, TPUs), "BW spec" is the bytes a step reads x
steps/s over that figure.

For each model size and batch size, in one process:
  * HF: `model.generate(use_cache=True, do_sample=False, min_new_tokens=N)` on a
    LlamaForCausalLM / GPT2LMHeadModel with random weights, float32, torch threads = the
    cores jax sees;
  * lm: `lm.decode.generate` (greedy, float32) on the same architecture holding the same
    weights (`params_from_hf`), so both compute the same function: the "same tok" column
    is the fraction of greedy tokens that agree (a near-tie may flip on float noise).
The two never run at the same time. Both are timed end to end the same way: t(1) = generate 1 new token (prefill + first
token), t(N) = generate N; prefill tokens/s = B * P / t(1), decode tokens/s =
B * (N - 1) / (t(N) - t(1)), ms per output token = (t(N) - t(1)) / (N - 1) (each of the
B sequences gets one token per step). Each is the median over --repeats runs, lm and HF
runs interleaved, so a change of machine load hits both sides alike.

Bandwidth. At small batch a decode step is bound by reading memory: every weight once per
step (the embedding table only B rows of it, unless it is tied to the output head) and
lm's whole KV cache (it attends over all S = P + N - 1 slots, masked). bytes/token = that
/ B. Utilisation = bytes per step x steps/s / the copy bandwidth measured in this run
(jit(x * c) on a donated 512 MiB array: 512 MiB read + 512 MiB written). The read-only
bandwidth (the faster of a sum and a matrix-vector product over the array) is printed too:
decoding mostly reads, so it is the tighter roof. HF's utilisation uses the same byte count (its cache grows instead, so this
slightly overstates it). The timing and byte arithmetic, shared with experiments.studies.quality_vs_cost:
lm/inference_cost.py.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import numpy as np

from lm import flops
from lm.inference_cost import TimedDecoder, costs, measure_bandwidth, step_bytes, timings

SIZES = {
    # Llama family: RoPE, RMSNorm, SwiGLU, grouped-query attention, untied head, no biases.
    "llama-10m": dict(family="llama", n_layers=5, d_model=384, n_heads=6, n_kv_heads=2, d_ff=1024),
    "llama-100m": dict(family="llama", n_layers=14, d_model=768, n_heads=12, n_kv_heads=4, d_ff=2048),
    "llama-350m": dict(family="llama", n_layers=24, d_model=1024, n_heads=16, n_kv_heads=4, d_ff=2816),
    # Llama-3.2-1B's transformer body (32 heads of 64, 8 KV heads, d_ff 8192): 0.99B with this vocabulary.
    "llama-1b": dict(family="llama", n_layers=16, d_model=2048, n_heads=32, n_kv_heads=8, d_ff=8192),
    # GPT-2 family: learned positions, LayerNorm and biases, GELU, multi-head, tied head.
    "gpt2-10m": dict(family="gpt2", n_layers=6, d_model=384, n_heads=6, n_kv_heads=6, d_ff=1536),
    "gpt2-100m": dict(family="gpt2", n_layers=12, d_model=768, n_heads=12, n_kv_heads=12, d_ff=3072),
}
FAMILY = {
    "llama": dict(positions="rope", norm="rmsnorm", mlp="swiglu", use_bias=False, tie_embeddings=False),
    "gpt2": dict(positions="learned", norm="layernorm", mlp="gelu", use_bias=True, tie_embeddings=True),
}
VOCAB = 4096  # the project's SentencePiece vocabulary (data.vocab_size)
MAX_SEQ_LEN = 512


def model_config(size: str, dtype: str = "float32"):
  """The size's architecture; `dtype` is both the weights' and the compute dtype (and the cache's)."""
  from lm.model import ModelConfig
  spec = dict(SIZES[size])
  fam = FAMILY[spec.pop("family")]
  return ModelConfig(vocab_size=VOCAB, head_dim=spec["d_model"] // spec["n_heads"], max_seq_len=MAX_SEQ_LEN,
                     norm_eps=1e-5, dtype=dtype, param_dtype=dtype, **fam, **spec)


def params_from_hf(hf_model, cfg) -> dict:
  """lm parameters holding a transformers Llama / GPT-2 model's weights (float32 numpy),
  through lm's own importer (lm/hf/weights.py), which checks every tensor's shape."""
  from lm.hf.weights import TO_LM
  sd = {k: v.detach().float().numpy() for k, v in hf_model.state_dict().items()}
  return TO_LM["llama" if cfg.positions == "rope" else "gpt2"](sd, cfg)


class HfSide:
  def __init__(self, cfg, threads: int):
    import torch
    import transformers
    torch.set_num_threads(threads)
    self.transformers = transformers
    torch.manual_seed(0)
    self.torch = torch
    common = dict(vocab_size=cfg.vocab_size, tie_word_embeddings=cfg.tie_embeddings, bos_token_id=None,
                  eos_token_id=None)
    if cfg.positions == "rope":
      hf_cfg = transformers.LlamaConfig(
          hidden_size=cfg.d_model, intermediate_size=cfg.d_ff, num_hidden_layers=cfg.n_layers,
          num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.head_dim,
          max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps, **common)
      self.model = transformers.LlamaForCausalLM(hf_cfg)
    else:
      hf_cfg = transformers.GPT2Config(n_embd=cfg.d_model, n_layer=cfg.n_layers, n_head=cfg.n_heads,
                                       n_inner=cfg.d_ff, n_positions=cfg.max_seq_len,
                                       layer_norm_epsilon=cfg.norm_eps, **common)
      self.model = transformers.GPT2LMHeadModel(hf_cfg)
    self.model.eval()
    self.n_params = sum(p.numel() for p in self.model.parameters())
    self.step_s = []  # every decode step's duration, from a stopping criterion that only reads the clock

    class Clock(transformers.StoppingCriteria):
      def __call__(clock, input_ids, scores, **kwargs):
        clock.times.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool)
    self.clock = Clock()

  def run(self, prompts, new_tokens: int) -> float:
    torch = self.torch
    ids = torch.tensor(prompts, dtype=torch.long)
    self.clock.times = []
    t = time.perf_counter()
    with torch.no_grad():
      out = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                min_new_tokens=new_tokens, do_sample=False, use_cache=True, pad_token_id=0,
                                stopping_criteria=self.transformers.StoppingCriteriaList([self.clock]))
    seconds = time.perf_counter() - t
    assert out.shape == (len(prompts), ids.shape[1] + new_tokens)
    self.last_tokens = out[:, ids.shape[1]:].numpy()
    self.step_s += np.diff(self.clock.times).tolist()
    return seconds


def parse_sizes(parser: argparse.ArgumentParser, text: str) -> list[str]:
  """--sizes as a list, or the parser's error naming the unknown ones and the choices."""
  sizes = text.split(",")
  unknown = [s for s in sizes if s not in SIZES]
  if unknown:
    parser.error(f"unknown --sizes {unknown}; choose from {list(SIZES)}")
  return sizes


def main():
  p = argparse.ArgumentParser(prog="python -m experiments.bench.inference", description=__doc__.split("\n")[0])
  p.add_argument("--sizes", default="llama-10m,llama-100m,gpt2-10m", help=f"comma-separated, of {list(SIZES)}")
  p.add_argument("--batches", default="1,8")
  p.add_argument("--prompt_len", type=int, default=64)
  p.add_argument("--new_tokens", type=int, default=64)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--no_hf", action="store_true", help="lm only (no torch / transformers needed)")
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                 help="lm's weights, compute and cache (bfloat16 needs --no_hf: the HF side is float32)")
  args = p.parse_args()
  sizes = parse_sizes(p, args.sizes)
  if args.dtype != "float32" and not args.no_hf:
    p.error("--dtype=bfloat16 compares nothing against transformers' float32 generate(); add --no_hf")
  cores = len(os.sched_getaffinity(0))
  load0 = os.getloadavg()
  bw = measure_bandwidth()
  P, N = args.prompt_len, args.new_tokens
  spec_bw = flops.spec_memory_bandwidth(jax.devices()[0].device_kind)
  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} ({cores} cores); {args.dtype}, greedy; prompt "
        f"{P} tokens, {N} new tokens; medians of {args.repeats} runs")
  print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; torch threads {cores}")
  print(f"measured bandwidth: copy {bw['copy']:.1f} GB/s (read+write), read {bw['read']:.1f} GB/s"
        + (f"; spec sheet {spec_bw / 1e9:,.0f} GB/s (column BW spec)" if spec_bw else ""))
  print(f"load average at start {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}\n")
  head = (f"{'model':<11} {'params':>7} {'B':>2} {'side':<4} {'prefill tok/s':>13} {'decode tok/s':>12} "
          f"{'ms/tok':>7} {'KV MB':>6} {'weights MB':>10} {'MB/tok':>7} {'BW util':>7} {'BW spec':>7} {'lm/HF':>6} "
          f"{'same tok':>8}")
  print(head)
  print("-" * len(head))
  rng = np.random.default_rng(0)
  steady = []  # lm/HF against HF's median single step: robust to bursts of other load (which slow torch most)
  for size in sizes:
    cfg = model_config(size, args.dtype)
    hf = None if args.no_hf else HfSide(cfg, cores)
    params = hf and jax.tree.map(jax.numpy.asarray, params_from_hf(hf.model, cfg))
    sides = {"lm": TimedDecoder(cfg, params)}  # HF's random weights, so both compute the same function
    step_lm = None
    if hf:
      sides["HF"] = hf
      assert hf.n_params == sides["lm"].n_params, (size, hf.n_params, sides["lm"].n_params)
    lm = sides["lm"]
    for batch in (int(b) for b in args.batches.split(",")):
      prompts = rng.integers(0, VOCAB, (batch, P)).tolist()
      if hf:
        hf.step_s = []
      runs = timings(sides, prompts, N, args.repeats)
      times = {name: (statistics.median(r[1]), statistics.median(r[N])) for name, r in runs.items()}
      kv, per_step = step_bytes(lm, batch, P + N - 1)
      decode_tps = {}
      for name, (t1, tn) in times.items():
        c = costs(t1, tn, batch, P, N)
        step_s = c["ms_per_token"] / 1e3
        decode_tps[name] = c["decode_tok_s"]
        step_lm = step_s if name == "lm" else step_lm
        ratio = same = ""
        if name == "HF":  # greedy tokens of the last run: equal unless float noise flips a near-tie
          ratio = f"{decode_tps['lm'] / decode_tps['HF']:>5.2f}x"
          same = f"{np.mean(lm.last_tokens == sides['HF'].last_tokens):.0%}"
          hf_step = statistics.median(sides["HF"].step_s)
          steady.append(f"{size} B={batch} {hf_step * 1e3:.2f} ms -> {hf_step / step_lm:.2f}x")
        print(f"{size:<11} {lm.n_params / 1e6:>6.1f}M {batch:>2} {name:<4} {c['prefill_tok_s']:>13,.0f} "
              f"{decode_tps[name]:>12,.1f} {1e3 * step_s:>7.2f} {kv / 1e6:>6.2f} {lm.weight_bytes / 1e6:>10.1f} "
              f"{per_step / batch / 1e6:>7.1f} {per_step / step_s / 1e9 / bw['copy']:>6.0%} "
              f"{f'{per_step / step_s / spec_bw:.0%}' if spec_bw else '-':>7} {ratio:>6} {same:>8}")
  if steady:
    print("\nHF's median decode step (timed inside generate), and lm/HF against it: " + ", ".join(steady))
  load1 = os.getloadavg()
  print(f"load average at end {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}; BW util = bytes per step x steps/s "
        f"/ copy bandwidth ({bw['copy']:.1f} GB/s); against read bandwidth multiply by "
        f"{bw['copy'] / bw['read']:.2f}")


if __name__ == "__main__":
  from lm.cli import set_process_defaults  # the entry point's process-wide settings (XLA flags, malloc), before jax starts
  set_process_defaults()
  main()
