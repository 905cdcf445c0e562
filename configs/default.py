"""The default experiment: a small Llama-style model on the State of the Union corpus.

Sized for a 2-core CPU: about 5M parameters trained on ~2.5M tokens in under 10 minutes
(see the README for the measured loss against the unigram baseline).
"""

from configs import base


def get_config(arg=None):
  cfg = base.get_config(arg)
  cfg.experiment = "default"
  m = cfg.model
  m.n_layers, m.d_model, m.n_heads, m.n_kv_heads, m.d_ff = 4, 256, 4, 4, 768
  m.max_seq_len = 256
  m.attention = "reference"   # the faster of the two on CPU (experiments/bench_train_step.py)
  cfg.data.seq_len = 256
  cfg.data.vocab_size = 4096
  t = cfg.train
  t.steps = 600
  t.batch_size = 16           # 16 x 256 = 4,096 tokens a step
  t.eval_every = 100
  t.eval_steps = 8
  t.checkpoint_every = 200
  t.log_every = 10
  o = cfg.optim
  o.lr = 3e-3
  o.warmup_steps = 50
  return cfg
