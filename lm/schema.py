"""The config schema: every field with its default, and validate(), the checks run before
anything is compiled or written.

    cfg = defaults()                      # configs/base.py returns this; experiments change what differs
    validate(cfg, n_devices=8)            # ConfigError naming the field and the fix
    cfg = resolve(json.load(open(".../config.json")))   # a saved config over today's defaults

Sections: model (lm/model.py:ModelConfig holds its fields and defaults), data (lm/data/),
train (the loop, lm/train.py), optim (lm/optim.py), mesh (lm/sharding.py), logging
(lm/metrics.py). Each section's choices and checks live beside the code that reads them;
this module only gathers them. Optional fields use `placeholder(type)`: None by default,
typed for command-line overrides.
"""

from __future__ import annotations

from ml_collections import ConfigDict
from ml_collections.config_dict import placeholder

from lm import data as data_lib
from lm import model as model_lib
from lm import optim
from lm import sharding
from lm import tasks
from lm import tracking
from lm.errors import ConfigError

TRAIN_POSITIVE = ("steps", "batch_size", "eval_every", "eval_steps", "checkpoint_every", "keep_checkpoints",
                  "log_every")


def _model_section() -> ConfigDict:
  m = ConfigDict()
  for name, default in model_lib.defaults().items():
    m[name] = placeholder(int) if default is None else default  # head_dim, base_*: optional ints
  return m


def defaults() -> ConfigDict:
  """The base config: every field a user may set with --config.<section>.<field>=..."""
  cfg = ConfigDict()
  cfg.experiment = "base"
  cfg.recipe = ""               # the hyperparameter recipe that set optim.* (lm/recipe.py), '' if none
  cfg.model = _model_section()

  # ---- data: corpus, tokenizer, packing (lm/data/) ----
  d = cfg.data = ConfigDict()
  d.dataset = "sotu"            # any TFDS name prepared as array_record
  d.data_dir = placeholder(str)  # None -> ~/.cache/lm/tensorflow_datasets
  d.text_key = "text"
  d.train_split = "train"
  d.eval_split = "validation"
  d.tokenizer = "sentencepiece"  # 'sentencepiece' | 'bytes' | 'hf' (a Hugging Face tokenizer.json)
  d.hf_tokenizer = placeholder(str)  # tokenizer='hf': folder with tokenizer.json (lm.convert sets it)
  d.sp_model_type = "bpe"       # 'bpe' | 'unigram'
  d.vocab_size = 4096
  d.seq_len = 256
  d.sp_train_bytes = 64_000_000  # SentencePiece trains on at most this much of the train split
  d.shuffle_docs = 64           # documents whose chunks are shuffled together (~14 in a batch of 16)
  # Supervised fine-tuning (format='sft', lm/data/sft.py): (prompt, completion) pairs, loss on
  # the completion only, each pair kept whole within a packed row.
  d.format = "text"             # 'text' (language modelling on data.dataset) | 'sft'
  d.sft_dataset = placeholder(str)  # TFDS name with two text features; None: sft_train/sft_eval are JSONL files
  d.sft_train = placeholder(str)  # JSONL file of {"prompt": ..., "completion": ...}, or a split of sft_dataset
  d.sft_eval = placeholder(str)   # the same, held out: completion loss and exact match
  d.prompt_key = "prompt"
  d.completion_key = "completion"
  d.sft_eval_examples = 128     # held-out pairs answered by greedy generation for exact match
  d.sft_max_new_tokens = 16     # tokens generated per answer

  # ---- train: the loop (lm/train.py) ----
  t = cfg.train = ConfigDict()
  t.steps = 1000
  t.batch_size = 16             # global, in sequences
  t.seed = 0
  t.eval_every = 200
  t.eval_steps = 8
  t.checkpoint_every = 200
  t.keep_checkpoints = 2
  t.log_every = 10
  t.init_from = placeholder(str)  # workdir or checkpoint to take params from
  # Cooldown branches (lm/branching.py): start from a stable run's checkpoint at branch_step,
  # with its optimizer state and data position; the stable run saves and keeps checkpoint_steps.
  t.branch_from = placeholder(str)  # the stable run's workdir
  t.branch_step = placeholder(int)
  t.checkpoint_steps = ()       # steps saved (and never deleted) besides every checkpoint_every
  t.z_loss = 0.0
  t.samples = 3                 # sampled continuations printed at the end
  # A train loss above divergence_factor x ln(vocab_size) stops the run as 'diverged', like a
  # NaN does. ln(vocab_size) is a uniform guess's loss, where a fresh model starts (5.56 for
  # the byte vocabulary, 8.32 for 4,096 pieces); twice it is a blow-up. 0 turns it off.
  t.divergence_factor = 2.0
  # Tasks evaluated with the held-out loss (lm/tasks.py), comma-separated: 'sotu_mc'
  # (multiple choice on unseen addresses), 'heldout' (the shipped multi-domain set), or a
  # path to a .txt file / folder. Metrics task_*: metrics.jsonl, TensorBoard, summary.json.
  t.eval_tasks = ""
  t.eval_task_examples = 200    # items of a multiple-choice task (sotu_mc: 4 choices each)

  # ---- optim: optax chain (lm/optim.py) ----
  o = cfg.optim = ConfigDict()
  o.name = "adamw"              # 'adamw' | 'lion' | 'muon' (Muon for hidden matrices, AdamW for the rest)
  o.lr = 3e-3
  o.schedule = "cosine"         # 'cosine' | 'constant' | 'wsd'
  o.warmup_steps = 100
  o.min_lr_ratio = 0.1
  o.decay_fraction = 0.2        # wsd: final fraction of steps spent decaying
  o.decay_shape = "linear"      # wsd: 'linear' | '1-sqrt' (Hägele et al. 2024; lm/optim.py)
  o.b1 = 0.9
  o.b2 = 0.95
  o.eps = 1e-8
  o.weight_decay = 0.1
  o.clip_norm = 1.0
  o.grad_accum_steps = 1
  o.muon_lr = 0.02              # muon: peak LR of the hidden matrices (Jordan 2024); optim.lr is AdamW's for the rest
  o.muon_beta = 0.95            # muon: Nesterov momentum
  o.muon_ns_steps = 5           # muon: Newton-Schulz iterations

  # ---- mesh: device mesh and logical-axis rules (lm/sharding.py) ----
  x = cfg.mesh = ConfigDict()
  x.data = -1                   # -1 takes the devices the other axes leave
  x.fsdp = 1
  x.tensor = 1
  # logical axis -> comma-separated mesh axes ('' = replicated), applied in rule_order: a
  # mesh axis already taken by an earlier rule in the same array is skipped. `batch` comes
  # before `embed`, so activations (batch, length, embed) shard batch over data+fsdp and keep
  # embed whole, while weights (no batch axis) shard embed over fsdp.
  x.rule_order = "batch,layers,vocab,heads,kv_heads,mlp,embed,length,head_dim"
  r = x.rules = ConfigDict()
  r.batch = "data,fsdp"
  r.layers = ""
  r.vocab = "tensor"
  r.heads = "tensor"
  r.kv_heads = "tensor"
  r.mlp = "tensor"
  r.embed = "fsdp"
  r.length = ""
  r.head_dim = ""

  # ---- logging (lm/metrics.py) ----
  g = cfg.logging = ConfigDict()
  g.tensorboard = True
  g.progress = True
  # Weights & Biases (lm/tracking.py; `pip install lm[tracking]`): the scalars of
  # metrics.jsonl, the resolved config, summary.json as the run summary. The run id is
  # kept in WORKDIR/wandb_run.json, so a resumed run logs to the same W&B run.
  g.wandb = False
  g.wandb_project = "lm"
  g.wandb_entity = placeholder(str)   # None: W&B's default entity
  g.wandb_name = placeholder(str)     # None: the workdir's base name
  g.wandb_group = placeholder(str)    # e.g. a sweep's name, so its points group together
  g.wandb_tags = ""                   # comma-separated
  g.wandb_mode = "online"             # 'online' | 'offline' (files under WORKDIR/wandb, `wandb sync` later)
  # A jax.profiler trace of steps [start, stop) into WORKDIR/profile (lm/tracking.py:Profile),
  # e.g. "10:15"; '' = none. View: tensorboard --logdir WORKDIR/profile (profile plugin) or XProf.
  g.profile_steps = ""
  return cfg


def resolve(saved: dict) -> ConfigDict:
  """A config saved by a run (config.json, as a dict), over today's defaults: fields added
  since the run was made take their defaults; the `derived` block is kept as it was."""
  cfg = defaults().to_dict()
  _merge(cfg, saved)
  return ConfigDict(cfg)


def _merge(into: dict, over: dict) -> None:
  for k, v in over.items():
    if isinstance(v, dict) and isinstance(into.get(k), dict):
      _merge(into[k], v)
    else:
      into[k] = v


def validate_seq_len(m, seq_len: int) -> None:
  if seq_len > m.max_seq_len:
    what = "the learned position table" if m.positions == "learned" else "model.max_seq_len"
    raise ConfigError(
        f"data.seq_len={seq_len} is longer than {what} (model.max_seq_len={m.max_seq_len}); "
        f"raise model.max_seq_len to at least {seq_len} or shorten data.seq_len.")


def validate_train(t) -> None:
  for field in TRAIN_POSITIVE:
    if int(t[field]) < 1:
      raise ConfigError(f"train.{field}={t[field]} must be a positive integer.")
  if not 0 <= int(t.seed) < 2**32:
    raise ConfigError(f"train.seed={t.seed} must be an integer in [0, 2**32) (the data pipeline's seeds are 32-bit).")
  if t.divergence_factor != 0 and not t.divergence_factor > 1:
    raise ConfigError(f"train.divergence_factor={t.divergence_factor} must be 0 (off) or above 1: a fresh model's "
                      "loss is about ln(vocab_size), so a threshold at or below it would stop every run at once.")
  if t.z_loss < 0:
    raise ConfigError(f"train.z_loss={t.z_loss} must be >= 0.")
  validate_branch(t)


def validate_branch(t) -> None:
  """train.branch_from / branch_step / checkpoint_steps on their own (lm/branching.py checks the
  stable run when the branch starts)."""
  total_steps = int(t.steps)
  if bool(t.branch_from) != (t.branch_step is not None):
    raise ConfigError(f"train.branch_from={t.branch_from!r} and train.branch_step={t.branch_step!r}: set both (a "
                      "stable run's workdir and the step of its checkpoint to branch from) or neither.")
  if t.branch_from and t.init_from:
    raise ConfigError(f"train.branch_from={t.branch_from!r} and train.init_from={t.init_from!r}: a branch takes its "
                      "whole state from the stable run; drop train.init_from.")
  if t.branch_from and not 0 < int(t.branch_step) < total_steps:
    raise ConfigError(f"train.branch_step={t.branch_step} must lie in [1, train.steps={total_steps}): a branch "
                      "trains the steps after it.")
  bad = [s for s in t.checkpoint_steps if not (isinstance(s, int) and 0 < s <= total_steps)]
  if bad:
    raise ConfigError(f"train.checkpoint_steps={tuple(t.checkpoint_steps)}: {bad} are not steps in "
                      f"[1, train.steps={total_steps}].")


def validate_mesh(cfg, n_devices: int, processes: int = 1) -> tuple[int, int, int]:
  """The mesh's shape for n_devices, the rules, and how the batch splits over them."""
  data, fsdp, tensor = shape = sharding.mesh_shape(cfg.mesh, n_devices)
  shards = sharding.batch_shards(dict(zip(sharding.MESH_AXES, shape)), sharding.rules(cfg.mesh))
  sharding.check_batch(cfg.train.batch_size, processes=processes, accum_steps=cfg.optim.grad_accum_steps,
                       shards=shards)
  m = cfg.model
  if tensor > 1 and m.n_kv_heads % tensor and cfg.mesh.rules.kv_heads:
    raise ConfigError(
        f"mesh.tensor={tensor} does not divide model.n_kv_heads={m.n_kv_heads}; use a tensor size that "
        f"divides the kv heads, or set --config.mesh.rules.kv_heads='' to replicate them.")
  return shape


def validate(cfg: ConfigDict, n_devices: int | None = None, processes: int = 1) -> None:
  """Every check that needs no data and no compilation. Raises ConfigError naming the fix."""
  model_lib.validate(cfg.model)
  validate_seq_len(cfg.model, cfg.data.seq_len)
  data_lib.validate(cfg.data)
  validate_train(cfg.train)
  tasks.validate(cfg.train)
  tracking.validate(cfg.logging, cfg.train.steps)
  optim.validate(cfg.optim, cfg.train.steps)
  if n_devices is not None:
    validate_mesh(cfg, n_devices, processes)
