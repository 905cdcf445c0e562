"""The sweep machinery: a sweep config -> one lm.main run per point -> one results table.

    python -m experiments.sweep --config=experiments/sweeps/<sweep>.py --sweep_dir=DIR [--dry_run] [--parallel=N]
    python -m experiments.sweep.collect --sweep_dir=DIR [--out=TABLE.csv]

  plan.py      a sweep config's fields, and its points (N, D, C, steps, overrides)
  runner.py    runs the points as processes, relaunches, signals, multi-host (`python -m experiments.sweep`)
  status.py    the files of a sweep directory and each point's state
  dry_run.py   --dry_run: the plan with times estimated from a short measured probe
  collect.py   a sweep directory -> results.csv (docs/conventions.md, Results schema)
"""
