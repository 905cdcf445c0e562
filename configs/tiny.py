"""A smoke-test experiment: trains in seconds on a CPU (tests, demos, sweep dry runs).

Byte tokenizer (no SentencePiece training), 8 speeches for training, 2 for validation.
"""

from configs import base


def get_config(arg=None):
  cfg = base.get_config(arg)
  cfg.experiment = "tiny"
  m = cfg.model
  m.n_layers, m.d_model, m.n_heads, m.n_kv_heads, m.d_ff, m.max_seq_len = 2, 32, 4, 2, 64, 32
  m.attention = "reference"
  d = cfg.data
  d.tokenizer = "bytes"
  d.seq_len = 32
  d.train_split, d.eval_split = "train[:8]", "validation[:2]"
  d.shuffle_docs = 4
  t = cfg.train
  t.steps, t.batch_size = 20, 8
  t.eval_every, t.eval_steps, t.checkpoint_every, t.log_every = 10, 2, 10, 1
  t.samples = 1
  cfg.optim.lr, cfg.optim.warmup_steps = 1e-2, 2
  cfg.logging.progress = False
  return cfg
