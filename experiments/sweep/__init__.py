"""The sweep machinery: a sweep config -> one lm.main run per point -> one results table.

    python -m experiments.sweep --config=experiments/sweeps/<sweep>.py --sweep_dir=DIR [--dry_run] [--parallel=N]
    python -m experiments.sweep.collect --dir=DIR [--out=TABLE.csv]

  plan.py      a sweep config's fields, and its points (N, D, C, steps, overrides)
  main.py      the command (`python -m experiments.sweep`): relaunches, one point (--point), --plan_json, multi-host
  runner.py    runs the points as processes: signals, core shares, records, heartbeats
  status.py    the files of a sweep directory and each point's state
  cost.py      device-seconds per attempt and point, against the dry run's estimate
  dry_run.py   --dry_run: the plan with times estimated from a short measured probe
  collect.py   a sweep directory, or any folder of runs -> results.csv (docs/conventions.md, Results schema)
"""
