"""Input pipeline: TFDS data sources (array_record, no TensorFlow) -> tokenize -> pack -> batch.

Public API (see each function's docstring):
  build_tokenizer(data_cfg) -> Tokenizer                          (builders.py: data.tokenizer)
  train_iterator(data_cfg, tokenizer, global_batch_size, seed, process_index=None, process_count=None)
  eval_iterator(data_cfg, tokenizer, global_batch_size, process_index=None, process_count=None)
                                                                  (builders.py: data.format)
  text_iterator(path, tokenizer, seq_len, global_batch_size, process_index=None, process_count=None)
  unigram_baseline(data_cfg, tokenizer) -> {"nats_per_token", "bits_per_byte", ...}
  validate(data_cfg)                                              (the data section's checks)

Batches are dicts of numpy arrays holding this process's rows: inputs, targets,
segment_ids (0 = padding), positions: int32 [b, seq_len]; target_bytes: int32 [b].
"""

from lm.data.builders import build_tokenizer, eval_iterator, train_iterator, validate
from lm.data.pipeline import DataIterator
from lm.data.sources import default_data_dir
from lm.data.tokenizers import ByteTokenizer, SentencePieceTokenizer, Tokenizer
from lm.data.hf_tokenizer import HFTokenizer
from lm.data.text_files import text_iterator
from lm.data.baseline import unigram_baseline
