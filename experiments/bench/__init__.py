"""Benchmarks: each prints a table, and where a peer is compared, measures both in one run.

    python -m experiments.bench.train_step   lm's training step against transformers (each side in its own process)
    python -m experiments.bench.inference    lm's KV-cache decoding against transformers' generate()
    python -m experiments.bench.data         the input pipeline on one core against training
    bash experiments/bench/gpu_check.sh      the GPU checks in one pass (the default run, both benchmarks above)

Measured tables, with their commands, machine and load: experiments/results/.
"""
