"""Results tables for scaling fits: what N and C mean, loading a table, budgets, noise, provenance.

Definitions (docs/conventions.md, Parameters and FLOPs): every fit states which N and which C it used, and
only consistent pairs fit (DEFINITIONS, PAIRS): C = flops_executed (the default: the
FLOPs that run, lm/flops.py) with either N; flops_6n only with the non-embedding N it is
6x; flops_exact (Appendix F as printed, counting the embedding lookup as a matmul) only
with params_total, Hoffmann et al.'s own convention. Any other pair is refused with the
flags that fix it. Tables made before flops_executed existed get it from their shape
columns (lm/flops.py:flops_executed_column).

The noise of a run's loss comes from seed replicates when the table has them (rows with
the same run but another `seed`) and from the residuals otherwise (`noise`).
"""

from __future__ import annotations

import datetime
import hashlib
import math
import os
import subprocess

import numpy as np
import pandas as pd
from scipy import stats

from lm import flops as flops_lib

PARAMS_COLUMNS = ("params_nonembedding", "params_total")
FLOPS_COLUMNS = flops_lib.FLOPS_DEFINITIONS
DEFAULT_PARAMS, DEFAULT_FLOPS = "params_nonembedding", "flops_executed"
BUDGET_GAP_DECADES = 0.1  # runs whose FLOPs differ by more than this start a new budget
REPLICATE_KEYS = ("N", "D") + flops_lib.SHAPE_COLUMNS + ("lr", "batch_size", "steps")
MIN_REPLICATE_DF = 2  # seed replicates give the noise from this many degrees of freedom up

DEFINITIONS = {
    "params_nonembedding": "non-embedding parameters (Kaplan et al.; an untied output head counts)",
    "params_total": "all parameters, embeddings included (Hoffmann et al.)",
    "flops_executed": "training FLOPs that run: 3x the forward matmuls, the embedding gather excluded, "
                      "the output logits included (lm/flops.py:flops_executed)",
    "flops_exact": "Hoffmann et al. Appendix F as printed: the embedding counted as a 2VD matmul lm does not run "
                   "(lm/flops.py:flops_exact)",
    "flops_6n": "6 x non-embedding parameters per token (Kaplan et al.)",
}
PAIRS = {  # (N, C) -> why they go together
    ("params_nonembedding", "flops_executed"): "C counts the work that runs, N the non-embedding parameters",
    ("params_total", "flops_executed"): "C counts the work that runs, N every parameter",
    ("params_nonembedding", "flops_6n"): "C = 6 N D by definition (Kaplan et al.)",
    ("params_total", "flops_exact"): "both count the embedding (Hoffmann et al.'s convention)",
}
MISMATCH_FIX = {
    ("params_nonembedding", "flops_exact"): "flops_exact counts the embedding lookup as a 2VD matmul per token, but "
        "the non-embedding N leaves the embedding out (the mix the scaling-trust issue found in the committed fits). "
        "Use --flops=flops_executed (what runs), or --params=params_total to compare with Hoffmann et al.",
    ("params_total", "flops_6n"): "flops_6n is 6 x the non-embedding count per token, so N=params_total is not the "
        "N it multiplies. Use --params=params_nonembedding, or --flops=flops_executed.",
}


class FitError(ValueError):
  """A table, a fit or a plan that cannot give an answer; the message says why and the fix."""


def check_definitions(params: str, flops: str) -> None:
  """Refuse an unknown definition or an (N, C) pair that counts different things."""
  if params not in PARAMS_COLUMNS:
    raise FitError(f"--params={params!r}: use one of {PARAMS_COLUMNS}.")
  if flops not in FLOPS_COLUMNS:
    raise FitError(f"--flops={flops!r}: use one of {FLOPS_COLUMNS}.")
  if (params, flops) not in PAIRS:
    raise FitError(f"N={params} with C={flops} mixes definitions: {MISMATCH_FIX[(params, flops)]}")


def pair_flags(flops: str) -> str:
  """The command-line flags of the consistent (N, C) pair with this C."""
  params = next(n for n, c in PAIRS if c == flops)
  return f"--params={params} --flops={flops}"


def definitions(params: str, flops: str, loss: str) -> dict:
  """What a fit's N, C and loss are, in words, for FIT.json, reports and figures."""
  return {"N": params, "C": flops, "loss": loss, "N_means": DEFINITIONS[params], "C_means": DEFINITIONS[flops],
          "pair": PAIRS[(params, flops)]}


def same_definitions(fits, what: str = "compare") -> dict:
  """The definitions the fits share; FitError naming the odd one when they do not."""
  seen = {}
  for f in fits:
    d = f.get("definitions")
    if d is None:
      continue
    key = (d["N"], d["C"], d["loss"])
    seen.setdefault(key, f.get("law"))
  if len(seen) > 1:
    listing = "; ".join(f"{law}: N={k[0]}, C={k[1]}, loss={k[2]}" for k, law in seen.items())
    raise FitError(f"cannot {what} fits made on different definitions ({listing}); refit them all with the same "
                   "--params, --flops and --loss.")
  n, c, loss = next(iter(seen), (None, None, None))
  return {"N": n, "C": c, "loss": loss}


# ---- the results table ----

def read_table(source) -> pd.DataFrame:
  if isinstance(source, pd.DataFrame):
    return source.copy()
  return pd.read_parquet(source) if str(source).endswith(".parquet") else pd.read_csv(source)


def load_results(source, params: str = DEFAULT_PARAMS, flops: str = DEFAULT_FLOPS, loss: str = "eval_loss",
                 status: str | None = "finished") -> pd.DataFrame:
  """The runs of a results table (a path or a DataFrame) as columns N, D, C, loss, budget
  and, where the table has seed replicates, `replicate` (a group id per repeated run).

  `loss` may be any metric column. A table without a flops_executed column gets one from
  its shape columns. A `flops_budget` column (a sweep's nominal budget, in the sweep's
  `flops_definition`) groups IsoFLOP runs; without one, runs are grouped by their C
  (group_budgets). Rows with role 'stable' (a WSD-branching sweep's stable-phase runs,
  experiments/sweep/plan.py) are left out: each of their lengths is a branch's row, and the
  stable run itself ends at a constant LR, not where a schedule of its length would.
  runs.attrs holds the definitions and the table's vocabulary and
  sequence length (the family plans follow).
  """
  check_definitions(params, flops)
  table = read_table(source)
  where = source if isinstance(source, str) else "the table"
  if flops == "flops_executed" and "flops_executed" not in table.columns and "tokens" in table.columns:
    try:
      table["flops_executed"] = flops_lib.flops_executed_column(table)
    except (ValueError, KeyError) as e:
      raise FitError(f"{where} has no flops_executed column and cannot make one: {e}") from None
  missing = [c for c in (params, flops, loss, "tokens") if c not in table.columns]
  if missing:
    raise FitError(f"{where} has no column(s) {missing}; its columns are {list(table.columns)}.")
  if status and "status" in table.columns:
    table = table[table["status"] == status]
  if "role" in table.columns:
    table = table[table["role"] != "stable"]
  runs = pd.DataFrame({"N": table[params], "D": table["tokens"], "C": table[flops], "loss": table[loss]})
  if "flops_budget" in table.columns:
    runs["budget"] = table["flops_budget"]
  for key in REPLICATE_KEYS[2:] + ("seed",):
    if key in table.columns:
      runs[f"_{key}"] = table[key]
  runs = runs.dropna(subset=["N", "D", "C", "loss"])  # an empty budget: a standalone run, grouped below
  runs = runs[(runs[["N", "D", "C", "loss"]] > 0).all(axis=1)].reset_index(drop=True)
  if len(runs) < 3:
    raise FitError(f"{where}: {len(runs)} usable runs (status={status!r}, positive {params}, tokens, {flops}, "
                   f"{loss}); a fit needs at least 3.")
  if "budget" not in runs:
    runs["budget"] = group_budgets(runs["C"].to_numpy())
  elif runs["budget"].isna().any():  # standalone runs collected beside sweep points: grouped by their FLOPs
    free = runs["budget"].isna()
    runs.loc[free, "budget"] = group_budgets(runs.loc[free, "C"].to_numpy())
  if "_seed" in runs:
    keys = ["N", "D"] + [c for c in runs.columns if c.startswith("_") and c != "_seed"]
    groups = runs.groupby(keys, dropna=False)
    runs["replicate"] = groups.ngroup()
    runs.loc[groups["_seed"].transform("nunique") < 2, "replicate"] = -1
  runs = runs.drop(columns=[c for c in runs.columns if c.startswith("_")])
  runs.attrs = {"definitions": definitions(params, flops, loss),
                "source": str(source) if isinstance(source, str) else None, "family": _family(table),
                "sweep_flops_definition": (table["flops_definition"].dropna().unique().tolist()
                                           if "flops_definition" in table.columns else None)}
  return runs


def _family(table) -> dict | None:
  """{vocab_size, seq_len} when every run shares them (plans follow lm/ladder.py's rule
  there); None when the table lacks them or mixes several."""
  values = {k: table[k].dropna().unique() for k in ("vocab_size", "seq_len") if k in table.columns}
  if len(values) < 2 or any(len(v) != 1 for v in values.values()):
    return None
  return {k: int(v[0]) for k, v in values.items()}


def group_budgets(c: np.ndarray) -> np.ndarray:
  """A budget label per run: runs whose FLOPs lie within BUDGET_GAP_DECADES of the next
  smaller run share one; the label is the group's geometric-mean FLOPs."""
  order = np.argsort(c)
  log_c = np.log10(c[order])
  group = np.concatenate([[0], np.cumsum(np.diff(log_c) > BUDGET_GAP_DECADES)])
  labels = np.empty(len(c))
  for g in np.unique(group):
    labels[order[group == g]] = 10 ** log_c[group == g].mean()
  return labels


def pure_error(runs: pd.DataFrame) -> tuple[float, int] | None:
  """(sum of squared relative deviations from each replicate group's mean, degrees of
  freedom) over the seed replicates, or None when the table has none."""
  if "replicate" not in runs or not (runs["replicate"] >= 0).any():
    return None
  reps = runs[runs["replicate"] >= 0]
  ss, df = 0.0, 0
  for _, g in reps.groupby("replicate"):
    y = g["loss"].to_numpy()
    ss += float((((y - y.mean()) / y.mean()) ** 2).sum())
    df += len(y) - 1
  return ss, df


def noise(runs: pd.DataFrame, s_min: float, n_params: int) -> dict:
  """The noise variance of a relative residual and its degrees of freedom.

  From the seed replicates (pure error) when they give at least MIN_REPLICATE_DF degrees
  of freedom and the law fits within that noise (lack-of-fit F test at 5%); otherwise from
  the residuals, S_min / (n - p), which also holds any lack of fit.
  """
  df_res = len(runs) - n_params
  if df_res < 1:
    raise FitError(f"{len(runs)} runs for {n_params} parameters leave no degrees of freedom for the noise; "
                   "run more sizes or budgets.")
  out = {"s2": s_min / df_res, "df": df_res, "source": "residuals"}
  pe = pure_error(runs)
  if pe and pe[1] >= MIN_REPLICATE_DF:
    ss_pure, df_pure = pe
    out.update(replicate_s2=ss_pure / df_pure, replicate_df=df_pure)
    df_lof = df_res - df_pure
    if df_lof >= 1 and ss_pure > 0:
      f = ((s_min - ss_pure) / df_lof) / (ss_pure / df_pure)
      out["lack_of_fit_p"] = float(stats.f.sf(f, df_lof, df_pure))
      if out["lack_of_fit_p"] >= 0.05:
        out.update(s2=ss_pure / df_pure, df=df_pure, source="seed replicates")
      else:
        out["source"] = "residuals (the law misses the runs by more than the seeds scatter)"
  out["sigma"] = math.sqrt(out["s2"])
  return out


def provenance(results) -> dict:
  """Where a fit came from: the table (path, SHA-256) and the code (git commit, dirty or not)."""
  out = {"results": str(results), "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
  if isinstance(results, str) and os.path.exists(results):
    with open(results, "rb") as fh:
      out["results_sha256"] = hashlib.sha256(fh.read()).hexdigest()
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "lm"], cwd=os.path.dirname(here),
                           capture_output=True, text=True, timeout=10)
    if commit.returncode == 0:
      out.update(code_commit=commit.stdout.strip(), code_dirty=bool(dirty.stdout.strip()))
  except (OSError, subprocess.SubprocessError):
    out["code_commit"] = None
  return out
