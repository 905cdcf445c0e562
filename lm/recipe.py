"""The ladder's hyperparameter recipe: LR, warmup, Adam beta2 and weight decay (and the batch
it would choose) as functions of the model size N, the training tokens D and the batch B.

    hp = hyperparameters(n_params=N, tokens=D, batch=B, d_model=d)   # B in tokens a step
    apply(cfg, hp)            # cfg.recipe, cfg.optim.{lr, warmup_steps, b2, weight_decay}, model fields
    MODEL_FIELDS              # the parameterization every rung gets (lm/ladder.py's model_config uses it)
    batch_tokens(N, D)        # DeepSeek's optimal batch, reported beside the tier's batch

configs/ladder.py applies the recipe to every rung; a --config field given on the command
line is applied after it and wins (the other values stay as the recipe computed them for the
rung's own N, D and B). The values land in the run's config and so in summary.json and the
sweep's results table (lm/metrics.py:summary_row: recipe, lr, warmup_steps, b2, weight_decay,
parameterization, base_width).

N is Kaplan's non-embedding count (what the rung names mean), D = steps x B. Recipe
"transfer" (RECIPE), each rule with its source:

  | value        | rule                                              | source |
  |--------------|---------------------------------------------------|--------|
  | parameterization | PARAMETERIZATION: the one whose optimum was identifiable and moved less (widths 32-128) | measured: experiments/results/lr_transfer (README there) |
  | LR           | BASE_LR (d_model / 32)^LR_WIDTH_EXPONENT, 4.0e-3 (d / 32)^-0.45 | the same study's SP optima (see BASE_LR); Llama-3-8B's 3e-4 and 70B's 1.5e-4 against this rule's 4.5e-4 and 3.3e-4 |
  | batch        | the tier's (lm/ladder.py); B_opt = 0.292 C^0.3271 tokens, C = 6 N D, is reported | DeepSeek LLM (Bi et al. 2024), sec. 3.1, fitted with AdamW on their data |
  | warmup       | min(N, D / 10) tokens, in steps, at least 1       | Porian et al. 2024, sec. 3.3: warmup of N tokens (Kaplan's fixed 3000 steps are too long for small models); D / 10, lm's earlier default, caps it for rungs trained on fewer tokens than parameters |
  | Adam beta2   | 0.95^(B / 2^19), within [0.95, 0.999]             | the second moment's half-life held at a fixed number of tokens (Marek et al. 2025, "Small batch size training for language models"); 0.95 at 0.5M-token batches (Llama, DeepSeek); Porian et al. 2024, sec. 4: beta2 0.99-0.999 matters at small batches |
  | weight decay | lambda = B / (lr tau D), tau = TAU                | the AdamW timescale tau = B / (lr lambda D), a fraction of the run, held fixed (Wang & Aitchison 2024, "How to set AdamW's weight decay as you scale model and dataset size"); Bergsma et al. 2025 ("Power Lines") find lambda_opt ~ B at fixed N, D and tau_opt falling as a power law in D / N: TAU_TPP_EXPONENT carries that exponent, 0 until it is measured on lm's ladder |

Why not µP: in experiments/results/lr_transfer (widths 32-128, 300 steps) µP's loss curves
agree across widths up to LR 2^-9, as µP intends, but every LR above that stalls on the
unigram plateau and leaves it at a step that zigzags with the LR, so µP's optimum is not
identifiable (grid optima 2^-6, 2^-5, 2^-4 at widths 32, 64, 128) and its best loss at width
128 is 0.47 nats above SP's (2.29 against 1.82). SP's curves at 64 and 128 are convex, with
optima 2.9e-3 and 2.2e-3 (vertices; grid 2^-8 at both). What is measured and what is not:
the LR rule rests on those two optima (widths 64 and 128, seed 0; since then width 16 zigzags
with no identifiable optimum either way, and a second seed moved 64's SP optimum to 1.9e-3, a
two-seed mean of 2.2e-3, while single losses moved by up to 0.48 nats between seeds) on bytes, 2 layers, 300 steps of 1024 tokens; the ladder's rungs are deeper, use a 4096-piece vocabulary, and
the accelerator rungs are up to 64x wider than it measured; the LR's dependence on batch
(DeepSeek's lr ~ C^-0.125) and beta2 0.999 at the CPU tier's batch are not measured on lm.
"""

from __future__ import annotations

import dataclasses

RECIPE = "transfer"
BASE_WIDTH, BASE_HEAD_DIM = 32, 16   # configs/ladder.py's p50k, the narrowest rung
# From experiments/results/lr_transfer (README there): SP's optimum moved less than µP's.
PARAMETERIZATION = "sp"
MODEL_FIELDS = (dict(parameterization="mup", base_width=BASE_WIDTH, base_head_dim=BASE_HEAD_DIM)
                if PARAMETERIZATION == "mup" else dict(parameterization="sp"))
# lr* = BASE_LR (d_model / BASE_WIDTH)^LR_WIDTH_EXPONENT through SP's two identifiable optima
# (vertices 2.94e-3 at width 64, 2.15e-3 at 128): exponent log2(2.15 / 2.94) = -0.45, and
# BASE_LR = 2.94e-3 x 2^0.45 = 4.0e-3 at 32, where the curve itself is flat from 2^-9 to 2^-4.
BASE_LR = 4.0e-3
LR_WIDTH_EXPONENT = -0.45
REFERENCE_BATCH_TOKENS = 2 ** 19     # beta2 0.95 at this batch
# tau such that p50k at its ladder setting (1000 steps of 2048 tokens) keeps lm's long-standing
# decay 0.1: tau = B / (lr lambda D) = 1 / (lr x 0.1 x 1000 steps).
BASE_RUN_STEPS, BASE_WEIGHT_DECAY = 1000, 0.1
TAU = 1.0 / (BASE_LR * BASE_WEIGHT_DECAY * BASE_RUN_STEPS)
TAU_TPP_EXPONENT = 0.0               # tau ~ (D/N)^exponent (Power Lines' form); 0: Wang & Aitchison's constant


@dataclasses.dataclass(frozen=True)
class Hyperparameters:
  recipe: str
  lr: float
  warmup_steps: int
  batch_tokens: int      # the batch the values were computed for (the tier's)
  batch_tokens_opt: float  # DeepSeek's B_opt for this N and D, for comparison
  b2: float
  weight_decay: float


def batch_tokens(n_params: float, tokens: float) -> float:
  """DeepSeek LLM's optimal batch in tokens, B = 0.292 C^0.3271, for C = 6 N D FLOPs."""
  return 0.292 * (6.0 * n_params * tokens) ** 0.3271


def beta2(batch: float) -> float:
  """0.95 at 2^19 tokens a batch, the same half-life in tokens at any batch, in [0.95, 0.999]."""
  return min(0.999, max(0.95, 0.95 ** (batch / REFERENCE_BATCH_TOKENS)))


def warmup_steps(n_params: float, tokens: float, batch: float) -> int:
  """min(N, D / 10) tokens in steps of B tokens, at least 1 and fewer than the run's steps."""
  steps = max(1, round(tokens / batch))
  return max(1, min(steps - 1, round(min(n_params, tokens / 10) / batch)))


def weight_decay(lr: float, batch: float, tokens: float, n_params: float) -> float:
  """lambda = B / (lr tau D) with tau = TAU (D/N)^TAU_TPP_EXPONENT."""
  tau = TAU * (tokens / n_params) ** TAU_TPP_EXPONENT
  return batch / (lr * tau * tokens)


def learning_rate(d_model: int) -> float:
  """BASE_LR (d_model / BASE_WIDTH)^LR_WIDTH_EXPONENT."""
  return BASE_LR * (d_model / BASE_WIDTH) ** LR_WIDTH_EXPONENT


def hyperparameters(n_params: float, tokens: float, batch: float, d_model: int) -> Hyperparameters:
  """The recipe's values for a model d_model wide with N non-embedding parameters, trained on
  D tokens in batches of B tokens."""
  if not (n_params > 0 and tokens >= batch > 0):
    raise ValueError(f"recipe.hyperparameters: need N > 0 and D >= B > 0, got N={n_params}, D={tokens}, B={batch}.")
  lr = learning_rate(d_model)
  return Hyperparameters(recipe=RECIPE, lr=lr, warmup_steps=warmup_steps(n_params, tokens, batch),
                         batch_tokens=int(batch), batch_tokens_opt=batch_tokens(n_params, tokens), b2=beta2(batch),
                         weight_decay=weight_decay(lr, batch, tokens, n_params))


def apply(cfg, hp: Hyperparameters) -> None:
  """Write the recipe's values into a config (before any command-line override)."""
  cfg.recipe = hp.recipe
  cfg.optim.update(lr=hp.lr, warmup_steps=hp.warmup_steps, b2=hp.b2, weight_decay=hp.weight_decay)
  cfg.model.update(MODEL_FIELDS)
