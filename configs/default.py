"""The default experiment: a small Llama-style model on the State of the Union corpus.

Sized for a 2-core CPU: 2.6M parameters (1.8M outside the embedding) trained on 2.5M
tokens, about one epoch of the corpus, in 7.4 minutes end to end on a quiet 2-core EPYC
(data preparation included; the README has the measured loss against the unigram
baseline). The 4-layer d=256 model with 4,096-token batches of 256 learned a little better
per step, but ran at 3.8K tokens/s against this shape's 5.9K and needed 12 minutes.
"""

from configs import base


def get_config(arg=None):
  cfg = base.get_config(arg)
  cfg.experiment = "default"
  m = cfg.model
  m.n_layers, m.d_model, m.n_heads, m.n_kv_heads, m.d_ff = 4, 192, 3, 3, 512
  m.max_seq_len = 128
  m.attention = "reference"   # the faster of the two on CPU (experiments/bench/train_step.py)
  cfg.data.seq_len = 128
  cfg.data.vocab_size = 4096
  t = cfg.train
  t.steps = 600
  t.batch_size = 32           # 32 x 128 = 4,096 tokens a step
  t.eval_every = 100
  t.eval_steps = 8
  t.checkpoint_every = 200
  t.log_every = 10
  t.eval_tasks = "sotu_mc,heldout"  # multiple choice on unseen addresses; bpb on 5 other domains (lm/tasks.py)
  o = cfg.optim
  o.lr = 3e-3
  o.warmup_steps = 50
  return cfg
