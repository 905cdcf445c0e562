"""The old names of commands that moved into experiments' sub-packages (issue 11, 2026-12).

Each old module (experiments/collect.py, launch_slurm.py, launch_tpu.py, bench_*.py,
quality_vs_cost.py, sft_sotu.py) is one call of `forward`, so that

    python -m experiments.collect --sweep_dir=DIR

still runs `python -m experiments.sweep.collect --sweep_dir=DIR` (same arguments, same output),
after one line on stderr naming the new command; and `import experiments.collect` still gives
the moved module (with a DeprecationWarning). The list, old -> new: experiments/README.md.
Standard library only: the launchers' old names run on a login node's system python3 too.
"""

import importlib
import runpy
import sys
import warnings


def forward(old: str, new: str, name: str) -> None:
  """In the old module `old`, whose __name__ is `name`: run `new` as the program, or become it."""
  if name == "__main__":
    print(f"python -m {old} is deprecated; use python -m {new} (same arguments).", file=sys.stderr, flush=True)
    runpy.run_module(new, run_name="__main__", alter_sys=True)
  else:
    warnings.warn(f"{old} is deprecated; import {new}.", DeprecationWarning, stacklevel=3)
    sys.modules[old] = importlib.import_module(new)  # what `import old` hands back
