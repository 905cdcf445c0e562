"""Shared defaults. Experiment files start from `get_config()` and change what differs.

Every field a user may sweep lives here, so `--config.<section>.<field>=...` can set it.
Optional fields use `placeholder(type)`: None by default, typed for CLI overrides.
"""

from ml_collections import ConfigDict
from ml_collections.config_dict import placeholder


def get_config(arg=None):
  del arg
  cfg = ConfigDict()
  cfg.experiment = "base"

  # ---- model: shape and numerics of the Transformer (lm/model.py) ----
  m = cfg.model = ConfigDict()
  m.n_layers = 4
  m.d_model = 256
  m.n_heads = 4
  m.n_kv_heads = 4              # divides n_heads; 1 = multi-query
  m.head_dim = placeholder(int)  # None -> d_model // n_heads
  m.d_ff = 1024
  m.max_seq_len = 256           # size of the learned position table / RoPE limit
  m.positions = "rope"          # 'learned' | 'rope'
  m.rope_theta = 10000.0
  m.rope_scaling = "none"       # 'none' | 'linear' | 'llama3' (as Hugging Face's rope types)
  m.rope_scaling_factor = 1.0   # linear, llama3: rates divided by this (context stretched by it)
  m.rope_low_freq_factor = 1.0  # llama3: wavelengths > original_max_len / this are fully scaled
  m.rope_high_freq_factor = 4.0  # llama3: wavelengths < original_max_len / this are unchanged
  m.rope_original_max_len = 8192  # llama3: the context length before scaling
  m.norm = "rmsnorm"            # 'layernorm' | 'rmsnorm'
  m.norm_eps = 1e-6
  m.mlp = "swiglu"              # 'gelu' | 'swiglu'
  m.use_bias = False
  m.tie_embeddings = True
  m.init_std = 0.02
  m.dtype = "float32"           # compute dtype
  m.param_dtype = "float32"
  m.attention = "xla"           # 'reference' | 'xla' | 'cudnn' (GPU only)
  m.matmul = "auto"             # weight matmuls' VJP: 'auto' (custom_vjp on CPU, else einsum) | 'custom_vjp' | 'einsum'
  m.remat = "none"              # 'none' | 'full' | 'dots'
  m.scan_layers = False

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
  t.z_loss = 0.0
  t.samples = 3                 # sampled continuations printed at the end

  # ---- optim: optax chain (lm/optim.py) ----
  o = cfg.optim = ConfigDict()
  o.name = "adamw"
  o.lr = 3e-3
  o.schedule = "cosine"         # 'cosine' | 'constant' | 'wsd'
  o.warmup_steps = 100
  o.min_lr_ratio = 0.1
  o.decay_fraction = 0.2        # wsd: final fraction of steps spent decaying
  o.b1 = 0.9
  o.b2 = 0.95
  o.eps = 1e-8
  o.weight_decay = 0.1
  o.clip_norm = 1.0
  o.grad_accum_steps = 1

  # ---- mesh: device mesh and logical-axis rules (lm/sharding.py) ----
  x = cfg.mesh = ConfigDict()
  x.data = -1                   # -1 takes the devices the other axes leave
  x.fsdp = 1
  x.tensor = 1
  # logical axis -> comma-separated mesh axes ('' = replicated). Order matters: a mesh
  # axis already used by an earlier logical axis of the same array is skipped, so
  # activations (batch, length, embed) shard batch over data+fsdp and keep embed whole.
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
  return cfg
