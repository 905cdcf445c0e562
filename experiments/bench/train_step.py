"""Training-step benchmark: lm against Hugging Face transformers (PyTorch), side by side.

    python -m experiments.bench.train_step [--shapes=issue,small] [--steps=5] [--no_torch]
        [--no_compile] [--dtype=bfloat16] [--attention=xla] [--matmuls=auto,einsum]
        [--peer_malloc=default,lm] [--rounds=3]

For each shape and family (GPT-2-like: learned positions, LayerNorm, GELU, biases, tied
head; Llama-like: RoPE, RMSNorm, SwiGLU, untied head), times a full training step
(forward, backward, AdamW update) of lm's jitted train step and of the same architecture
in transformers (GPT2LMHeadModel / LlamaForCausalLM, random weights, torch.optim.AdamW).
The transformers peers run twice: eager, and compiled with torch.compile (TorchInductor,
default mode: the model's forward and, through AOTAutograd, its backward are compiled; the
AdamW step stays eager, foreach). Compilation happens in the warm-up steps, so only
compiled steps are timed; the compile seconds are printed beside the row.
Each peer runs under glibc's default malloc, as torch runs anywhere else, and again under the
malloc settings lm's entry points set (lm/host_memory.py: freed memory is kept, so no step
page-faults its buffers in again), which lm's row always has: those settings speed torch up
too, more than lm (transformers eager GPT-2 2,853 -> 1,675 ms on the 2026-12-03 Xeon), so the
like-for-like comparison is the second.
Every measurement runs in its own process, one after the other, never two at once.
--rounds=N runs each family's list N times, every other round in reverse order, and the
ratios are the medians of each round's ratio (measurements minutes apart, not hours), with
their range: this host drifts 5-10% over minutes (2026-12-03, the same code read 0.91x and 0.99x
of one peer in two runs), more than most changes are worth. Each
process also times a large matmul in its framework (for lm under model.matmul='blas', the
faster of XLA's and OpenBLAS's), so the analytic FLOP rate of the step can be read as a
fraction of what the device can do (an MFU estimate).
The torch side needs the benchmark extra: pip install -e '.[bench]'. On a GPU both sides run
there (torch with autocast in --dtype); --dtype=bfloat16 computes in bf16 with float32
parameters on both sides, and the matmul peak is timed in that dtype.
"""

import json
import os
import statistics
import subprocess
import sys
import time

from absl import app
from absl import flags

SHAPES_FLAG = flags.DEFINE_list("shapes", ["issue"], "Shapes to run: issue, small, wide, gpu.")
FAMILIES_FLAG = flags.DEFINE_list("families", ["gpt2", "llama"], "Model families.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per measurement (after 2 warm-up steps).")
_NO_TORCH = flags.DEFINE_bool("no_torch", False, "Skip the transformers side.")
_NO_COMPILE = flags.DEFINE_bool("no_compile", False, "Skip the torch.compile'd transformers peers.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype (params stay float32).")
_ATTENTION = flags.DEFINE_enum("attention", "reference", ["reference", "xla"], "lm's attention implementation.")
_MATMULS = flags.DEFINE_list("matmuls", ["auto"], "lm rows, one per model.matmul choice (lm/ops.py).")
_PEER_MALLOC = flags.DEFINE_list(
    "peer_malloc", ["default", "lm"], "The transformers rows' malloc: 'default' (glibc's, as torch runs "
    "anywhere else), 'lm' (lm/host_memory.py's settings, which lm's own row always has).")
_ROUNDS = flags.DEFINE_integer("rounds", 1, "Times each family's measurements run, alternating their order.",
                               lower_bound=1)
_WORKER = flags.DEFINE_string("worker", None, "Internal: run one measurement and print JSON.")

# (n_layers, d_model, n_heads, d_ff, vocab, seq_len, batch)
SHAPES = {
    "issue": (4, 512, 8, 2048, 8192, 256, 16),   # the shape issue 2 names
    "small": (4, 256, 4, 1024, 4096, 256, 16),
    "wide": (2, 1024, 16, 4096, 8192, 128, 8),
    "gpu": (12, 1024, 16, 4096, 32768, 1024, 16),  # ~220M parameters, 16K tokens a step
}
FAMILIES = {
    "gpt2": dict(positions="learned", norm="layernorm", mlp="gelu", use_bias=True, tie_embeddings=True),
    "llama": dict(positions="rope", norm="rmsnorm", mlp="swiglu", use_bias=False, tie_embeddings=False),
}


def model_config(shape: str, family: str):
  from configs import base
  from lm.model import ModelConfig
  n_layers, d, h, f, v, s, _ = SHAPES[shape]
  m = base.get_config().model
  m.update(n_layers=n_layers, d_model=d, n_heads=h, n_kv_heads=h, d_ff=f, max_seq_len=s,
           attention=_ATTENTION.value, dtype=_DTYPE.value, matmul=_MATMULS.value[0], **FAMILIES[family])
  return m, ModelConfig.from_config(m, v)


def median_step_seconds(step, steps: int) -> float:
  for _ in range(2):
    step()
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    step()
    times.append(time.perf_counter() - t0)
  return sorted(times)[len(times) // 2]


def matmul_gflops(matmul, n: int) -> float:
  seconds = median_step_seconds(matmul, 5)
  return 2 * n ** 3 / seconds / 1e9


def matmul_size() -> int:
  import jax
  return 8192 if jax.devices()[0].platform == "gpu" else 4096


def lm_setup(shape: str, family: str):
  """(jitted train step, state, batch, mesh, rules, ModelConfig) of lm at this shape; the
  profiler (experiments/bench/profile_train_step.py) times the same step."""
  import numpy as np
  from configs import base
  from lm import optim, sharding, steps
  from lm.model import Transformer
  _, mcfg = model_config(shape, family)
  _, _, _, _, v, s, b = SHAPES[shape]
  cfg = base.get_config()
  cfg.optim.warmup_steps = 1
  optimizer, lr = optim.make_optimizer(cfg.optim, 100)
  mesh, rules = sharding.make_mesh(cfg.mesh), sharding.rules(cfg.mesh)
  spec = steps.StateSpec(Transformer(mcfg), optimizer, mesh, rules)
  state = spec.init(0)
  step_fn = spec.jit_train_step(steps.make_train_step(spec.model, optimizer, lr),
                                steps.batch_shardings(mesh, rules, steps.TRAIN_KEYS))
  tokens = np.random.default_rng(0).integers(0, v, (b, s + 1)).astype(np.int32)
  host = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "segment_ids": np.ones((b, s), np.int32),
          "positions": np.tile(np.arange(s, dtype=np.int32), (b, 1))}
  with steps.in_context(mesh, rules):
    batch = sharding.shard_batch(host, mesh, rules)
  return step_fn, state, batch, mesh, rules, mcfg


def lm_worker(shape: str, family: str) -> dict:
  import jax
  import jax.numpy as jnp
  from lm import flops, ops, steps
  step_fn, state, batch, mesh, rules, mcfg = lm_setup(shape, family)
  s = SHAPES[shape][5]
  with steps.in_context(mesh, rules):
    box = [state]

    def one():
      box[0], metrics = step_fn(box[0], batch)
      jax.block_until_ready(metrics)
    seconds = median_step_seconds(one, _STEPS.value)
  n = matmul_size()
  x = jnp.ones((n, n), _DTYPE.value)
  mm = jax.jit(lambda a: a @ a)
  peak = matmul_gflops(lambda: mm(x).block_until_ready(), n)
  counts = flops.param_counts(mcfg)
  matmul = ops.resolve_matmul(mcfg.matmul)
  from lm import cpu_gemm
  if matmul == "blas" and _DTYPE.value == "float32":  # lm's products run through the kernel's BLAS: its peak too
    gemm = jax.jit(cpu_gemm.gemm)
    peak = max(peak, matmul_gflops(lambda: gemm(x, x).block_until_ready(), n))
  if matmul == "blas":
    matmul = f"blas: {cpu_gemm.linked_blas()}"  # OpenBLAS, or MKL where the mkl extra is installed
  return {"impl": f"lm (jax {jax.__version__}, {_ATTENTION.value} attention, {matmul})", "params": counts.total, "step_s": seconds,
          "flops_6n": flops.flops_6n(mcfg), "flops_exact": flops.flops_exact(mcfg, s), "matmul_gflops": peak}


def torch_worker(shape: str, family: str, compiled: bool = False) -> dict:
  import torch
  import transformers
  from lm import flops
  n_layers, d, h, f, v, s, b = SHAPES[shape]
  torch.manual_seed(0)
  torch.set_num_threads(os.cpu_count())
  if family == "gpt2":
    config = transformers.GPT2Config(n_layer=n_layers, n_embd=d, n_head=h, n_inner=f, vocab_size=v, n_positions=s,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config)
  else:
    config = transformers.LlamaConfig(hidden_size=d, intermediate_size=f, num_hidden_layers=n_layers,
                                      num_attention_heads=h, num_key_value_heads=h, vocab_size=v,
                                      max_position_embeddings=s, tie_word_embeddings=False, bos_token_id=0,
                                      eos_token_id=0, pad_token_id=0)
    model = transformers.LlamaForCausalLM(config)
  device = "cuda" if torch.cuda.is_available() else "cpu"
  dtype = getattr(torch, _DTYPE.value)
  model.to(device).train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
  forward = torch.compile(model) if compiled else model
  ids = torch.randint(0, v, (b, s), device=device)
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

  def one():
    with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
      loss = forward(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    sync()
  t0 = time.perf_counter()
  one()  # the compiled forward and backward are built here (and run once)
  first_s = time.perf_counter() - t0
  seconds = median_step_seconds(one, _STEPS.value)
  n = 8192 if device == "cuda" else 4096
  x = torch.ones(n, n, device=device, dtype=dtype)
  peak = matmul_gflops(lambda: (x @ x, sync()), n)
  _, mcfg = model_config(shape, family)
  mode = "torch.compile" if compiled else "eager"
  compile_s = {"compile_s": first_s - seconds} if compiled else {}  # the first step, less a timed one
  return {"impl": f"transformers {transformers.__version__} {mode} (torch {torch.__version__})", **compile_s,
          "params": sum(p.numel() for p in model.parameters()), "step_s": seconds,
          "flops_6n": flops.flops_6n(mcfg), "flops_exact": flops.flops_exact(mcfg, s), "matmul_gflops": peak}


def measure(kind: str, shape: str, family: str, matmul: str = "auto", malloc: str = "lm") -> dict | None:
  cmd = [sys.executable, "-m", "experiments.bench.train_step", f"--worker={kind}:{shape}:{family}",
         f"--steps={_STEPS.value}", f"--dtype={_DTYPE.value}", f"--attention={_ATTENTION.value}",
         f"--matmuls={matmul}"]
  # Every worker starts through set_process_defaults (below), so 'default' opts out of lm's malloc settings.
  env = {**os.environ, "LM_KEEP_HOST_MEMORY": "0"} if malloc == "default" else None
  out = subprocess.run(cmd, capture_output=True, text=True, env=env)
  rows = [line for line in out.stdout.splitlines() if line.startswith("{")]
  if out.returncode or not rows:
    print(f"  {kind} {shape} {family} failed:\n{out.stderr[-1500:]}", file=sys.stderr)
    return None
  return json.loads(rows[-1])


PEER_NAMES = {"torch": "eager", "compiled": "torch.compile", "torch+lm": "eager (lm malloc)",
              "compiled+lm": "torch.compile (lm malloc)"}


def peer_kinds() -> tuple[str, ...]:
  if _NO_TORCH.value:
    return ()
  return ("torch",) if _NO_COMPILE.value else ("torch", "compiled")


def _ratio(ours: dict, theirs: dict) -> str:
  """lm's tokens/s over a peer's: the median of the rounds' ratios, and their range if several."""
  by_round = {r: ours[r] / theirs[r] for r in ours if r in theirs}
  if not by_round:
    return "n/a"
  text = f"{statistics.median(by_round.values()):.2f}x"
  if len(by_round) > 1:
    text += f" ({min(by_round.values()):.2f}-{max(by_round.values()):.2f})"
  if len(by_round) < _ROUNDS.value:  # a measurement failed (its error went to stderr)
    text += f" [{len(by_round)} of {_ROUNDS.value} rounds]"
  return text


def main(argv):
  del argv
  if _WORKER.value:
    kind, shape, family = _WORKER.value.split(":")
    workers = {"lm": lm_worker, "torch": torch_worker, "compiled": lambda *a: torch_worker(*a, compiled=True)}
    row = workers[kind](shape, family)
    print(json.dumps(row))
    return
  print(f"load average before: {os.getloadavg()[0]:.2f}  ({os.cpu_count()} CPUs); compute dtype {_DTYPE.value}")
  header = (f"{'shape':6} {'family':6} {'implementation':66} {'params':>11} {'step ms':>8} {'tokens/s':>9} "
            f"{'6N GF/s':>8} {'exact GF/s':>10} {'matmul GF/s':>11} {'MFU':>6} {'compile s':>9}")
  print(header)
  results, rows, peaks = {}, [], []  # peaks: each process's own matmul GFLOP/s
  runs = [("lm", m, "lm") for m in _MATMULS.value] + [(k, "auto", a) for k in peer_kinds() for a in _PEER_MALLOC.value]
  for shape in SHAPES_FLAG.value:
    *_, s, b = SHAPES[shape]
    for family in FAMILIES_FLAG.value:
      for kind, matmul, malloc, round_ in [(*run, i) for i in range(_ROUNDS.value) for run in (runs if i % 2 == 0 else runs[::-1])]:
        r = measure(kind, shape, family, matmul, malloc)
        if r is None:
          continue
        tps = b * s / r["step_s"]
        exact = tps * r["flops_exact"] / 1e9
        label = kind if kind != "lm" or len(_MATMULS.value) == 1 else f"lm matmul={matmul}"
        if kind != "lm" and malloc == "lm":
          label, r["impl"] = f"{label}+lm", f"{r['impl']}, lm malloc"
        results.setdefault((shape, family, label), {})[round_] = tps
        rows.append((shape, family, r["impl"], exact))
        compile_s = f"{r['compile_s']:>9.0f}" if "compile_s" in r else f"{'':>9}"
        print(f"{shape:6} {family:6} {r['impl']:66} {r['params']:>11,} {r['step_s'] * 1e3:>8.0f} {tps:>9.0f} "
              f"{tps * r['flops_6n'] / 1e9:>8.1f} {exact:>10.1f} {r['matmul_gflops']:>11.1f} "
              f"{exact / r['matmul_gflops']:>6.1%} {compile_s}", flush=True)
        peaks.append(r["matmul_gflops"])
  if rows:
    peak = max(peaks)
    print(f"\nexact GFLOP/s as a fraction of the best matmul any process of this run timed ({peak:.1f} GF/s):")
    for shape, family, impl, exact in rows:
      print(f"  {shape} {family} {impl:66} {exact / peak:>6.1%}")
  if peer_kinds():
    print("\nlm tokens/s relative to transformers (>1: lm is faster):")
    for shape in SHAPES_FLAG.value:
      for family in FAMILIES_FLAG.value:
        peers = {name: results.get((shape, family, key)) for key, name in PEER_NAMES.items()}
        peers = {name: t for name, t in peers.items() if t}
        best = max(peers.values(), key=lambda t: statistics.median(t.values()), default=None)  # by median tokens/s over rounds
        for label in [k for (sh, f, k) in results if sh == shape and f == family and k.startswith("lm")]:
          ours = results[(shape, family, label)]
          parts = [f"{_ratio(ours, t)} {name}" for name, t in peers.items()]
          parts.append(f"{_ratio(ours, best)} the fastest peer" if best else None)
          print(f"  {shape} {family} {label}: " + ", ".join(p for p in parts if p))
  print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
  from lm.cli import set_process_defaults  # the entry point's process-wide settings (XLA flags, malloc), before jax starts
  set_process_defaults()
  app.run(main)
