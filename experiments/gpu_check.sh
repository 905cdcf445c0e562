#!/usr/bin/env bash
# Deprecated name of experiments/bench/gpu_check.sh (same environment, same $OUT).
echo "experiments/gpu_check.sh is deprecated; use bash experiments/bench/gpu_check.sh" >&2
exec bash "$(dirname "$0")/bench/gpu_check.sh" "$@"
