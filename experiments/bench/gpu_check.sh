#!/usr/bin/env bash
# GPU checks in one pass (about 9 minutes on one H200), most important first, each part capped so
# that a slow one cannot starve the rest; everything lands in $OUT (default ./gpu_check_out):
#   gpu.txt         the device, driver and versions, and the seconds each part started at
#   packed.txt      a packed document equals the document alone, for every attention implementation,
#                   forward and gradient (experiments/bench/packed_attention.py)
#   train_log.txt   the training runs' output (experiments/bench/gpu_train.py): ~1B first, xla and
#                   cuDNN attention x remat none and dots, against transformers eager and torch.compile;
#                   then ~350M and ~125M; then, time allowing, the 1B rows under another XLA flag
#   train.jsonl     every training record; train.txt is the table of all of them
#   decode.txt      KV-cache decoding of llama-1b in bf16 at batch 1, 8 and 64: bandwidth use
#   decode_f32.txt  the same with float32 weights, time allowing
# Packages the machine lacks can sit as wheels in .whl/ (installed with --no-deps). The CUDA image
# of 2026-11 had jax, flax, optax, orbax, torch and transformers but not these (cp312 wheels, ~11 MB):
#   ml_collections==1.1.0 tensorflow-datasets==4.9.10 tensorflow-metadata==1.21.0 grain==0.2.18
#   array_record==0.8.6 immutabledict==4.3.1 portpicker==1.6.0 toml==0.10.2 dm-tree==0.1.10
#   tensorboardX==2.6.5 termcolor==3.3.0 googleapis-common-protos==1.76.0 promise==2.3
# fetched with `pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
# --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d .whl NAME==VERSION` (promise has
# only an sdist: `pip wheel --no-deps -w .whl promise==2.3`).
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
SECONDS=0
part() {  # part CAP_SECONDS FILE COMMAND...: run it for at most CAP seconds, its output to $OUT/FILE
  local cap=$1 file=$2
  shift 2
  echo "== [${SECONDS}s] $* (at most ${cap}s)" | tee -a "$OUT/$file" >>"$OUT/gpu.txt"
  timeout --kill-after=10 "$cap" "$@" 2>&1 | grep -av "^W0\|^I0\|^E0000" | tee -a "$OUT/$file"
}
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c "import jax, flax, optax, torch, transformers; print('jax', jax.__version__, 'flax', flax.__version__,
  'torch', torch.__version__, 'transformers', transformers.__version__)"; } 2>&1 | tee "$OUT/gpu.txt"

part 60 packed.txt python3 -m experiments.bench.packed_attention --dtypes=bfloat16
part 230 train_log.txt python3 -m experiments.bench.gpu_train --sizes=1b --timeout=120 --json_out="$OUT/train.jsonl"
part 90 decode.txt python3 -m experiments.bench.inference --no_hf --sizes=llama-1b --batches=1,8,64 \
  --new_tokens=128 --dtype=bfloat16
part 210 train_log.txt python3 -m experiments.bench.gpu_train --sizes=350m,125m --timeout=100 \
  --json_out="$OUT/train.jsonl"
if (( SECONDS < 420 )); then  # cuBLAS for every product instead of XLA's autotuned choice with Triton's
  XLA_FLAGS=--xla_gpu_enable_triton_gemm=false part 90 train_log.txt python3 -m experiments.bench.gpu_train \
    --sizes=1b --attentions=cudnn,xla --remats=none --peers= --timeout=85 --json_out="$OUT/train.jsonl"
fi
python3 -m experiments.bench.gpu_train --from_json="$OUT/train.jsonl" 2>&1 | tee "$OUT/train.txt"
if (( SECONDS < 500 )); then
  part 60 decode_f32.txt python3 -m experiments.bench.inference --no_hf --sizes=llama-1b --batches=1,8,64 \
    --new_tokens=128 --dtype=float32
fi
echo "gpu_check: ${SECONDS}s" | tee -a "$OUT/gpu.txt"
