#!/usr/bin/env bash
# GPU checks in one pass, for a machine with jax[cuda] (and torch + transformers for the
# side-by-side): the default experiment end to end, the training step against transformers
# in bf16, and KV-cache decoding with its bandwidth utilisation. Writes each table to
# $OUT (default ./gpu_check_out). Packages the machine lacks can sit as wheels in .whl/.
#
#     bash experiments/bench/gpu_check.sh
set -uo pipefail
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv;
  python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"; } \
  2>&1 | tee "$OUT/gpu.txt"

# 1. The default experiment, end to end (data prep, tokenizer training, 600 steps, samples).
SECONDS=0
timeout 200 python3 -m lm.main --config=configs/default.py --workdir=/tmp/lm_default 2>&1 \
  | grep -av "step/s\|examples/s" | tail -25 | tee "$OUT/default.txt"
echo "wall ${SECONDS}s" | tee -a "$OUT/default.txt"
cp /tmp/lm_default/summary.json "$OUT/default_summary.json" 2>/dev/null

# 2. Training step, ~220M Llama-like model, bf16 compute: lm (both attentions) and transformers.
{ timeout 150 python3 -m experiments.bench.train_step --shapes=gpu --families=llama --dtype=bfloat16 --attention=xla --no_compile;
  timeout 80 python3 -m experiments.bench.train_step --shapes=gpu --families=llama --dtype=bfloat16 --no_torch; } \
  2>&1 | grep -av "^W0\|^I0" | tee "$OUT/train_step.txt"

# 3. Decoding (float32, greedy): tokens/s, ms/token and bandwidth use at batch 1 and 64.
timeout 100 python3 -m experiments.bench.inference --no_hf --sizes=llama-100m,gpt2-100m --batches=1,64 \
  --new_tokens=128 2>&1 | grep -av "^W0\|^I0" | tee "$OUT/inference.txt"
