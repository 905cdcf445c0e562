"""A fake SLURM for the launcher tests: `sbatch`, `squeue`, `sacct`, `scontrol` and `scancel`
on the PATH, all this one file (run as `python3 fake_slurm.py <command> ARGS`), sharing one state
file. It reads a batch script's #SBATCH lines the way sbatch does and runs its tasks as local
processes, at most %N of an array at once; a scripted requeue signals one task and runs it again.

Only what the launchers use: `sbatch --parsable SCRIPT` (--array, --job-name, --output,
--comment), `squeue --noheader --format=%i|%j|%T|%k -u USER` style queries answered from the
state, `sacct` (id, state, elapsed, AllocTRES), `scontrol requeue`, `scancel`.
"""

from __future__ import annotations


def sbatch_arguments(line: str) -> list[str]:
  """The arguments sbatch reads from the text after '#SBATCH', a port of _get_argument in
  SLURM's src/sbatch/opt.c: whitespace separates them, single or double quotes group text
  (the quotes are dropped), a backslash escapes the next character, an unquoted '#' ends the line."""
  args, i, n = [], 0, len(line)
  while True:
    while i < n and line[i].isspace():
      i += 1
    if i >= n:
      return args
    arg, quote, escape = [], None, False
    while i < n and (quote or not line[i].isspace()) and line[i] != "\n":
      c = line[i]
      i += 1
      if escape:
        escape = False
      elif c == "\\":
        escape = True
        continue
      elif quote:
        if c == quote:
          quote = None
          continue
      elif c in "\"'":
        quote = c
        continue
      elif c == "#":
        return args + (["".join(arg)] if arg else [])
      arg.append(c)
    args.append("".join(arg))


def sbatch_options(script: str) -> list[str]:
  """Every argument of the #SBATCH lines of a batch script, up to its first command (as sbatch)."""
  out = []
  for line in script.splitlines()[1:]:
    if line.startswith("#SBATCH"):
      out += sbatch_arguments(line[len("#SBATCH"):])
    elif line.strip() and not line.startswith("#"):
      break
  return out
