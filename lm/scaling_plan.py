"""Compute-optimal plans from a fit: N_opt, D_opt, the ladder rung to train, how far it extrapolates.

    python -m lm.scaling plan --fit=FIT.json (--flops=C | --device_hours=H --device=h100 [--mfu=0.4 --mfu_flops=...])

A budget is in the fit's own FLOP definition (FIT.json "definitions"). Every rung turns
the budget into tokens with its own FLOPs per token, D = C / flops_per_token(rung), at
the fit's vocabulary and sequence length (lm/ladder.py's rule), never with one median
FLOPs per parameter-token: on the CPU ladder that ratio runs from 8 to 18. A device-hour
budget multiplies an MFU, and an MFU is a ratio of FLOPs counted one way: one measured on
another definition than the fit's is refused (--mfu_flops names the one it used).

A plan says how many decades of C and of N it lies beyond the runs the fit saw and warns
beyond EXTRAPOLATION_WARN_DECADES: Hoffmann et al. planned Chinchilla 1.5 decades of C
beyond their largest IsoFLOP budget, and beyond about a decade the bands, not the central
line, are the statement.
"""

from __future__ import annotations

import math

import numpy as np

from lm import flops as flops_lib
from lm import ladder, scaling
from lm.scaling import FitError

EXTRAPOLATION_WARN_DECADES = 1.0


def _rungs(fit_json: dict) -> list[dict]:
  fam = fit_json.get("family") or {}
  return ladder.rungs(fam.get("vocab_size"), fam.get("seq_len"))


def _definitions(fit_json: dict) -> dict:
  d = fit_json.get("definitions")
  if not d:  # FIT.json files written before definitions were recorded
    n, c = fit_json.get("params_column"), fit_json.get("flops_column")
    if n is None or c is None:
      raise FitError("this FIT.json does not say which N and which C it used; refit it with `python -m lm.scaling fit`.")
    scaling.check_definitions(n, c)
    d = scaling.definitions(n, c, fit_json.get("loss_column", "eval_loss"))
  return d


def extrapolation(fit_json: dict, flops: float, n_opt: float) -> dict:
  """Decades of C and of N beyond the largest fitted run (negative: inside the range)."""
  r = fit_json.get("fitted_range") or {}
  out = {}
  if "C" in r:
    out["C_decades"] = math.log10(flops / r["C"][1])
  if "N" in r:
    out["N_decades"] = math.log10(n_opt / r["N"][1])
  far = {k: v for k, v in out.items() if v > EXTRAPOLATION_WARN_DECADES}
  out["warning"] = (f"extrapolating {' and '.join(f'{v:.1f} decades of {k[0]}' for k, v in far.items())} beyond the "
                    f"fitted runs (C up to {r['C'][1]:.3g}, N up to {ladder.human(r['N'][1])}); read the intervals"
                    if far else None)
  return out


def plan(fit_json: dict, flops: float) -> dict:
  """N_opt, D_opt and tokens per parameter (with their bands), the rung to train and its
  tokens at this budget, the predicted loss (L(N, D) fits), and the extrapolation."""
  d = _definitions(fit_json)
  n, dd = (float(x) for x in scaling.optimal_allocation(fit_json, flops))
  out = {"flops": flops, "definitions": {k: d[k] for k in ("N", "C", "loss")}, "N_opt": n, "D_opt": dd,
         "tokens_per_param": dd / n}
  band = scaling.allocation_band(fit_json, flops)
  if band is not None:
    lo_n, hi_n, lo_d, hi_d = (float(x) for x in band)
    out.update(N_interval=[lo_n, hi_n], D_interval=[lo_d, hi_d])
  elif fit_json.get("refused"):
    out["interval_refused"] = fit_json["refused"]
  loss = scaling.predicted_loss(fit_json, n, dd)
  if loss is not None:
    out["loss"] = float(loss)
    interval = scaling.prediction_interval(fit_json, n, dd)
    if interval is not None:
      out["loss_interval"] = interval
  rungs = _rungs(fit_json)
  for r in rungs:
    r["tokens"] = flops / r[f"{d['C']}_per_token"]
    r["tokens_per_param"] = r["tokens"] / r[d["N"]]
  nearest = min(rungs, key=lambda r: abs(math.log(r[d["N"]] / n)))
  keep = ("name", "config", "params_nonembedding", "params_total", "vocab_size", "seq_len", "tokens",
          "tokens_per_param", f"{d['C']}_per_token")
  out["rung"] = {k: nearest[k] for k in keep}
  if fit_json["law"] == "chinchilla":
    for r in rungs:
      r["loss"] = float(scaling.predicted_loss(fit_json, r[d["N"]], r["tokens"]))
    best = min(rungs, key=lambda r: r["loss"])
    out["best_rung"] = {**{k: best[k] for k in keep}, "loss": best["loss"],
                        "loss_interval": scaling.prediction_interval(fit_json, best[d["N"]], best["tokens"])}
  out["extrapolation"] = extrapolation(fit_json, flops, n)
  return out


def budget_from_device_hours(fit_json: dict, hours: float, device: str, mfu: float, mfu_flops: str,
                             dtype: str = "bfloat16") -> float:
  """hours x 3600 s x the device's spec-sheet peak x the MFU, refused unless the MFU counts
  FLOPs the way the fit's C does."""
  c = _definitions(fit_json)["C"]
  if mfu_flops != c:
    raise FitError(f"--mfu={mfu} counts {mfu_flops} FLOPs but the fit's C counts {c}: the budget would be off by their "
                   f"ratio. Give the MFU measured on {c} (--mfu_flops={c}), or refit with --flops={mfu_flops}.")
  peak = flops_lib.spec_peak_flops(device, dtype)
  if peak is None:
    raise FitError(f"no spec-sheet peak for device {device!r} in {dtype}; known devices: "
                   f"{', '.join(flops_lib.SPEC_PEAK_FLOPS)}.")
  return hours * 3600 * peak * mfu


def format_plan(p: dict) -> str:
  human = ladder.human
  iv = lambda key: f" ({human(p[key][0])}-{human(p[key][1])})" if key in p else ""
  d = p["definitions"]
  lines = [f"compute      {p['flops']:.3g} FLOPs (C = {d['C']}, N = {d['N']})",
           f"N_opt        {human(p['N_opt'])} parameters{iv('N_interval')}",
           f"D_opt        {human(p['D_opt'])} tokens{iv('D_interval')}",
           f"tokens/param {p['tokens_per_param']:.3g}"]
  if "interval_refused" in p:
    lines.append(f"intervals    none: {p['interval_refused']}")
  if "loss" in p:
    pi = (f" [{p['loss_interval'][0]:.4g}, {p['loss_interval'][1]:.4g}], the prediction interval of one run"
          if "loss_interval" in p else "")
    lines.append(f"{d['loss']:12} {p['loss']:.4g} (predicted){pi}")
  r = p["rung"]
  per_token = r[f"{d['C']}_per_token"]
  lines.append(f"nearest rung {r['name']} ({human(r['params_nonembedding'])} non-embedding, {human(r['params_total'])} "
               f"total; {human(per_token)} FLOPs a token at vocab {r['vocab_size']}, seq {r['seq_len']}): "
               f"{human(r['tokens'])} tokens at this budget, {r['tokens_per_param']:.3g} per parameter; "
               f"--config={r['config']}")
  if "best_rung" in p:
    b = p["best_rung"]
    pi = f" [{b['loss_interval'][0]:.4g}, {b['loss_interval'][1]:.4g}]" if b.get("loss_interval") else ""
    lines.append(f"best rung    {b['name']}: predicted {b['loss']:.4g}{pi} on {human(b['tokens'])} tokens")
  e = p["extrapolation"]
  lines.append("extrapolates " + ", ".join(f"{e[k]:+.1f} decades of {k[0]}" for k in ("C_decades", "N_decades") if k in e)
               + " beyond the fitted runs")
  if e.get("warning"):
    lines.append(f"warning: {e['warning']}")
  return "\n".join(lines)


def rung_frontier(fit_json: dict, flops) -> np.ndarray:
  """The predicted loss of the best rung at each budget (L(N, D) fits): the staircase a
  sweep on the ladder can reach."""
  d = _definitions(fit_json)
  rungs = _rungs(fit_json)
  c = np.asarray(flops, float)
  losses = [scaling.predicted_loss(fit_json, r[d["N"]], c / r[f"{d['C']}_per_token"]) for r in rungs]
  return np.min(np.stack(losses), axis=0)
