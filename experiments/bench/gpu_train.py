"""Training on one GPU: lm's Llama-like models of ~125M, ~350M and ~1B against transformers.

    python -m experiments.bench.gpu_train [--sizes=125m,350m,1b] [--attentions=xla,cudnn]
        [--remats=none,dots] [--peers=eager,compile] [--steps=20] [--batch=16] [--seq_len=1024]

For each size, one process builds lm's train step (AdamW, clipping at 1.0, float32 parameters,
bf16 compute, layers under nn.scan) for every (attention, remat) pair, compiles the first, then
the rest at once in threads (XLA compiles release the GIL, so three compiles cost about one),
then runs each for --warmup + --steps steps, one after another, in order of flops.train_memory's
estimate, so the process's peak_bytes_in_use after a run is that run's own peak (unless the
estimate misorders two). A second process runs the same
architecture in transformers (LlamaForCausalLM, sdpa attention, bf16 autocast over float32
parameters, fused torch.optim.AdamW, the same clipping): eager, then with every decoder layer
compiled by torch.compile (regional compilation, as torchtitan compiles each block: one
layer's graph serves them all, so it compiles in seconds rather than minutes).

Definitions printed with the table:
  N          all parameters, embeddings included (flops.param_counts(cfg).total);
  tokens/s   batch x seq_len / the mean step time over the timed steps (one sync at the end);
  MFU        tokens/s x flops_executed (lm/flops.py: 3x the forward's matmuls, attention over
             the full S^2, no embedding, no recompute) / the device's spec-sheet dense bf16 peak
             (989 TFLOP/s for an H100 or H200); HFU adds remat's recompute (flops_recomputed);
  matmul     an 8192^3 bf16 product timed in the same process, for scale;
  memory     measured: the backend's peak_bytes_in_use (torch: max_memory_allocated); XLA's
             footprint: the compiled step's arguments + outputs - donated + temporaries;
             estimate: flops.train_memory (params, grads, AdamW moments, activations, casts).
The loss of the first and last step is printed: a row whose loss does not fall did not train.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

VOCAB = 32768
SIZES = {  # Llama-like: RoPE, RMSNorm, SwiGLU, multi-head, untied head, no biases
    "125m": dict(n_layers=12, d_model=768, n_heads=12, d_ff=2048),
    "350m": dict(n_layers=24, d_model=1024, n_heads=16, d_ff=2816),
    "1b": dict(n_layers=16, d_model=2048, n_heads=16, d_ff=5632),
    "tiny": dict(n_layers=2, d_model=64, n_heads=4, d_ff=128),  # the CPU test's
}
LLAMA = dict(positions="rope", norm="rmsnorm", mlp="swiglu", use_bias=False, tie_embeddings=False)


def lm_model_config(size: str, args, attention: str, remat: str):
  from lm.model import ModelConfig
  s = SIZES[size]
  return ModelConfig(vocab_size=VOCAB, n_kv_heads=s["n_heads"], max_seq_len=args.seq_len, dtype=args.dtype,
                     attention=attention, remat=remat, scan_layers=args.scan_layers, **s, **LLAMA)


def timed_steps(step, warmup: int, steps: int, sync) -> tuple[float, list]:
  """Mean seconds a step over `steps` steps after `warmup`, one sync at the end; the losses."""
  losses = [step() for _ in range(warmup)]
  sync(losses[-1])
  t0 = time.perf_counter()
  losses += [step() for _ in range(steps)]
  sync(losses[-1])
  return (time.perf_counter() - t0) / steps, losses


def footprint(compiled) -> int | None:
  m = compiled.memory_analysis()
  if m is None:
    return None
  return m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes


def matmul_tflops(dot, x, sync) -> float:
  sync(dot(x))
  t0 = time.perf_counter()
  for _ in range(10):
    y = dot(x)
  sync(y)
  return 10 * 2 * x.shape[0] ** 3 / (time.perf_counter() - t0) / 1e12


def lm_worker(size: str, args) -> None:
  """One row per (attention, remat): lm's train step, compiled in parallel, run one at a time."""
  import concurrent.futures
  import jax
  import jax.numpy as jnp
  import numpy as np
  from configs import base
  from lm import flops, optim, sharding, steps
  from lm.model import Transformer
  device = jax.devices()[0]
  print(json.dumps(dict(side="lm", size=size, device=device.device_kind, version=f"jax {jax.__version__}")), flush=True)
  cfg = base.get_config()
  cfg.optim.warmup_steps = 1
  mesh, rules = sharding.make_mesh(cfg.mesh), sharding.rules(cfg.mesh)
  b, s = args.batch, args.seq_len
  tokens = np.random.default_rng(0).integers(0, VOCAB, (b, s + 1)).astype(np.int32)
  host = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "segment_ids": np.ones((b, s), np.int32),
          "positions": np.tile(np.arange(s, dtype=np.int32), (b, 1))}
  runs = []
  for attention in args.attentions:
    for remat in args.remats:
      run = dict(attention=attention, remat=remat, mcfg=lm_model_config(size, args, attention, remat))
      try:  # tracing the model's init already meets the attention (cuDNN absent, or refusing a shape)
        optimizer, lr = optim.make_optimizer(cfg.optim, 1000)
        run["spec"] = spec = steps.StateSpec(Transformer(run["mcfg"]), optimizer, mesh, rules)
        run["step_fn"] = spec.jit_train_step(steps.make_train_step(spec.model, optimizer, lr),
                                             steps.batch_shardings(mesh, rules, steps.TRAIN_KEYS))
      except Exception as e:  # the row says so, the others run
        run["lowered"] = e
      runs.append(run)
  with steps.in_context(mesh, rules):
    batch = sharding.shard_batch(host, mesh, rules)
    for run in (r for r in runs if "lowered" not in r):
      try:
        run["lowered"] = run["step_fn"].lower(run["spec"].abstract, batch)
      except Exception as e:
        run["lowered"] = e

  def compile_one(run):
    if isinstance(run["lowered"], Exception):
      return run["lowered"], 0.0
    t0 = time.perf_counter()
    try:
      return run["lowered"].compile(), time.perf_counter() - t0
    except Exception as e:
      return e, time.perf_counter() - t0
  # The first alone: its GEMM autotuning times kernels on a quiet GPU and fills XLA's in-process
  # autotuning cache, which the others (the same matmul shapes) then mostly hit.
  compiled = [compile_one(runs[0])]
  with concurrent.futures.ThreadPoolExecutor(max(1, len(runs) - 1) if args.parallel_compile else 1) as pool:
    compiled += list(pool.map(compile_one, runs[1:]))
  estimate = lambda r: flops.train_memory(r["mcfg"], s, b).total  # noqa: E731
  order = sorted(range(len(runs)), key=lambda i: estimate(runs[i]))
  stats = lambda: device.memory_stats() or {}  # noqa: E731 (CPU backends may have none)
  flags = " ".join(f.removeprefix("--xla_gpu_") for f in os.environ.get("XLA_FLAGS", "").split()
                   if f.startswith("--xla_gpu_"))  # a variant's GPU flags name its rows
  for i in order:
    run, (exe, compile_s) = runs[i], compiled[i]
    mcfg = run["mcfg"]
    impl = f"lm {run['attention']} attention, remat {run['remat']}" + (f" [{flags}]" if flags else "")
    row = dict(side="lm", impl=impl, size=size, tokens=b * s,
               attention=run["attention"], remat=run["remat"], params=flops.param_counts(mcfg).total,
               flops_executed=flops.flops_executed(mcfg, s), flops_recomputed=flops.flops_recomputed(mcfg, s),
               estimate_bytes=estimate(run), compile_s=compile_s)
    if isinstance(exe, Exception):
      print(json.dumps({**row, "error": f"{type(exe).__name__}: {str(exe).splitlines()[0][:300]}"}), flush=True)
      continue
    try:
      box = [run["spec"].init(0)]

      def one():
        box[0], metrics = exe(box[0], batch)
        return metrics["train_loss"]
      step_s, losses = timed_steps(one, args.warmup, args.steps, jax.block_until_ready)
      row.update(step_s=step_s, loss_first=float(losses[0]), loss_last=float(losses[-1]),
                 footprint_bytes=footprint(exe), peak_bytes=stats().get("peak_bytes_in_use"))
    except Exception as e:  # out of memory, say: the row says so, the others run
      row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
    box = None  # this run's state freed before the next one's
    print(json.dumps(row), flush=True)
  x = jnp.ones((8192, 8192) if device.platform == "gpu" else (256, 256), jnp.bfloat16)
  peak = matmul_tflops(jax.jit(lambda a: a @ a), x, jax.block_until_ready)
  print(json.dumps(dict(side="lm", size=size, matmul_tflops=peak)), flush=True)


def torch_worker(size: str, args) -> None:
  """transformers' LlamaForCausalLM at the same shape: eager, then with its layers compiled."""
  import torch
  import transformers
  from lm import flops
  sz = SIZES[size]
  device = "cuda" if torch.cuda.is_available() else "cpu"
  torch.manual_seed(0)
  config = transformers.LlamaConfig(
      hidden_size=sz["d_model"], intermediate_size=sz["d_ff"], num_hidden_layers=sz["n_layers"],
      num_attention_heads=sz["n_heads"], num_key_value_heads=sz["n_heads"], vocab_size=VOCAB,
      max_position_embeddings=args.seq_len, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0,
      pad_token_id=0, attn_implementation="sdpa")
  kind = torch.cuda.get_device_name() if device == "cuda" else "cpu"
  print(json.dumps(dict(side="transformers", size=size, device=kind)), flush=True)
  with torch.device(device):  # initialised in place on the GPU: seconds, not a minute of CPU init
    model = transformers.LlamaForCausalLM(config)
  model.train()
  fused = {"fused": True} if device == "cuda" else {}
  opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1, betas=(0.9, 0.95), **fused)
  ids = torch.randint(0, VOCAB, (args.batch, args.seq_len), device=device)
  dtype = getattr(torch, args.dtype)
  sync = (lambda _: torch.cuda.synchronize()) if device == "cuda" else (lambda _: None)

  def one():
    with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
      loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.detach()
  mcfg = lm_model_config(size, args, "xla", "none")
  base = dict(side="transformers", size=size, tokens=args.batch * args.seq_len,
              version=f"transformers {transformers.__version__}, torch {torch.__version__}",
              params=sum(p.numel() for p in model.parameters()),
              flops_executed=flops.flops_executed(mcfg, args.seq_len), flops_recomputed=0.0,
              estimate_bytes=flops.train_memory(mcfg, args.seq_len, args.batch).total)
  for mode in args.peers:
    if device == "cuda":
      torch.cuda.reset_peak_memory_stats()
    compile_s = 0.0
    if mode == "compile":
      for layer in model.model.layers:
        layer.compile()
      t0 = time.perf_counter()
      sync(one())  # the layers' forward and backward graphs are built here
      compile_s = time.perf_counter() - t0
    step_s, losses = timed_steps(one, args.warmup, args.steps, sync)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
    print(json.dumps({**base, "impl": f"transformers {mode}", "mode": mode, "step_s": step_s, "compile_s": compile_s,
                      "loss_first": float(losses[0]), "loss_last": float(losses[-1]), "peak_bytes": peak}), flush=True)
  n = 8192 if device == "cuda" else 256  # bf16 products are slow on CPUs without bf16 units
  x = torch.ones(n, n, device=device, dtype=torch.bfloat16)
  print(json.dumps(dict(side="transformers", size=size, matmul_tflops=matmul_tflops(lambda a: a @ a, x, sync))),
        flush=True)


def run_worker(kind: str, size: str, argv: list[str], timeout: float) -> list[dict]:
  cmd = [sys.executable, "-m", "experiments.bench.gpu_train", f"--worker={kind}:{size}", *argv]
  try:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired as e:
    stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
    print(f"  {kind} {size}: stopped after {timeout:.0f} s", file=sys.stderr)
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
  rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
  if out.returncode:
    print(f"  {kind} {size} exited {out.returncode}:\n{out.stderr[-2000:]}", file=sys.stderr)
  return rows


def gib(x) -> str:
  return f"{x / 2**30:.1f}" if x else "-"


def print_table(records: list[dict], peak_flops: float | None, args) -> None:
  matmul = {(r["side"], r["size"]): r["matmul_tflops"] for r in records if "matmul_tflops" in r}
  rows = [r for r in records if "impl" in r]
  w = max([34] + [len(r["impl"]) for r in rows])
  head = (f"{'size':5} {'implementation':{w}} {'N':>13} {'step ms':>8} {'tokens/s':>9} {'MFU':>6} {'HFU':>6} "
          f"{'matmul TF/s':>11} {'peak GiB':>8} {'XLA GiB':>7} {'est GiB':>7} {'compile s':>9} {'loss':>13}")
  print(head)
  print("-" * len(head))
  for r in rows:
    if "error" in r or "step_s" not in r:
      print(f"{r['size']:5} {r['impl']:{w}} {r['params']:>13,} {r.get('error', 'did not finish')}")
      continue
    tps = r["tokens"] / r["step_s"]
    mfu = hfu = "-"
    if peak_flops:
      mfu = f"{tps * r['flops_executed'] / peak_flops:.1%}"
      hfu = f"{tps * (r['flops_executed'] + r['flops_recomputed']) / peak_flops:.1%}"
    mm = matmul.get((r["side"], r["size"]))
    print(f"{r['size']:5} {r['impl']:{w}} {r['params']:>13,} {r['step_s'] * 1e3:>8.1f} {tps:>9,.0f} {mfu:>6} {hfu:>6} "
          f"{mm or 0:>11.0f} {gib(r.get('peak_bytes')):>8} {gib(r.get('footprint_bytes')):>7} "
          f"{gib(r['estimate_bytes']):>7} {r['compile_s']:>9.1f} {r['loss_first']:>6.2f}->{r['loss_last']:<6.2f}")
  print("\nlm tokens/s relative to transformers (>1: lm is faster):")
  for size in args.sizes:
    done = [r for r in rows if r["size"] == size and "step_s" in r]
    ours = {r["impl"]: r["step_s"] for r in done if r["side"] == "lm"}
    peers = {r["mode"]: r["step_s"] for r in done if r["side"] == "transformers"}
    if not ours or not peers:
      continue
    best = min(ours, key=ours.get)
    parts = [f"{peers[m] / ours[best]:.2f}x {m}" for m in peers]
    print(f"  {size}: fastest lm row ({best}) " + ", ".join(parts))
    if "eager" in peers:
      print("    every lm row / eager: " + ", ".join(f"{k.removeprefix('lm ')} {peers['eager'] / v:.2f}x"
                                                   for k, v in ours.items()))


def parse(argv=None):
  p = argparse.ArgumentParser(prog="python -m experiments.bench.gpu_train", description=__doc__.split("\n")[0])
  p.add_argument("--sizes", default="125m,350m,1b", type=lambda v: v.split(","), help=f"of {list(SIZES)}")
  p.add_argument("--attentions", default="xla,cudnn", type=lambda v: v.split(","))
  p.add_argument("--remats", default="none,dots", type=lambda v: v.split(","))
  p.add_argument("--peers", default="eager,compile", type=lambda v: [x for x in v.split(",") if x],
                 help="transformers modes, in this order; empty for none")
  p.add_argument("--steps", type=int, default=20, help="timed steps, after --warmup")
  p.add_argument("--warmup", type=int, default=5)
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--seq_len", type=int, default=1024)
  p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="compute dtype")
  p.add_argument("--scan_layers", default=True, action=argparse.BooleanOptionalAction)
  p.add_argument("--parallel_compile", default=True, action=argparse.BooleanOptionalAction)
  p.add_argument("--timeout", type=float, default=240, help="seconds a worker process may take")
  p.add_argument("--json_out", default=None, help="also write every record here, one JSON per line")
  p.add_argument("--from_json", default=None, help="print the table of a --json_out file, run nothing")
  p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  bad = [s for s in args.sizes if s not in SIZES] + [m for m in args.peers if m not in ("eager", "compile")]
  if bad:
    p.error(f"unknown size or peer mode {bad}: sizes are {list(SIZES)}, peers eager and compile")
  return args


def main(argv=None):
  args = parse(argv)
  if args.worker:
    kind, size = args.worker.split(":")
    (lm_worker if kind == "lm" else torch_worker)(size, args)
    return
  if args.from_json:
    with open(args.from_json) as f:
      records = [json.loads(line) for line in f if line.strip()]
    args.sizes = list(dict.fromkeys(r["size"] for r in records))
  else:
    # The parent never starts a jax backend: on a GPU that would take 75% of its memory from the workers.
    print(f"{args.batch} x {args.seq_len} tokens a step, compute {args.dtype}, params float32, AdamW; "
          f"{args.warmup} warm-up + {args.steps} timed steps; lm's layers scanned: {args.scan_layers}", flush=True)
    passed = sys.argv[1:] if argv is None else argv  # the workers read their flags, --json_out unused
    records = []
    for size in args.sizes:
      for kind in ["lm"] + (["torch"] if args.peers else []):
        t0 = time.perf_counter()
        got = run_worker(kind, size, passed, args.timeout)
        print(f"  {kind} {size}: {len(got)} records in {time.perf_counter() - t0:.0f} s", flush=True)
        records += got
        if args.json_out:
          with open(args.json_out, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in got)
  from lm import flops
  kinds = sorted({r["device"] for r in records if "device" in r})
  peak_flops = flops.spec_peak_flops(kinds[0], "bfloat16") if kinds else None
  versions = sorted({r["version"] for r in records if "version" in r})
  print(f"\n{', '.join(kinds)}: spec dense bf16 peak {peak_flops / 1e12 if peak_flops else float('nan'):.0f} "
        f"TFLOP/s; {'; '.join(versions)}")
  print_table(records, peak_flops, args)


if __name__ == "__main__":
  main()
