"""Small random Hugging Face checkpoints built locally (nothing downloaded), for tests/test_hf*.py.

Tokenizers are trained with the `tokenizers` library on a few State of the Union addresses:
a GPT-2-style byte-level BPE, and a Llama-2-style SentencePiece BPE (dummy prefix, '▁' for
spaces, byte fallback pieces <0x00> ... <0xFF>). Models are made with transformers in
float32 and saved with save_pretrained (safetensors), or in two shards with an index.
"""

from __future__ import annotations

import json
import os

import numpy as np

TEXT_SPEECHES = 3
TOKENIZER_VOCAB = 320


def corpus_texts(n: int = TEXT_SPEECHES) -> list[str]:
  from lm.data import sotu
  return [r["text"][:20000] for r in sotu.read_corpus()[:n]]


def gpt2_tokenizer(out_dir: str, vocab_size: int = TOKENIZER_VOCAB) -> int:
  """Byte-level BPE with <|endoftext|> as its last id; returns the number of ids."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size - 1, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tok.train_from_iterator(corpus_texts(), trainer)
  tok.add_special_tokens(["<|endoftext|>"])
  os.makedirs(out_dir, exist_ok=True)
  tok.save(os.path.join(out_dir, "tokenizer.json"))
  with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
    json.dump({"tokenizer_class": "GPT2TokenizerFast", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}, f)
  return tok.get_vocab_size(with_added_tokens=True)


def llama_tokenizer(out_dir: str, vocab_size: int = TOKENIZER_VOCAB) -> int:
  """SentencePiece-style BPE: <unk>=0, <s>=1, </s>=2, trained pieces, then 256 byte pieces."""
  from tokenizers import Tokenizer, decoders, models, normalizers, trainers
  tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
  tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
  tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                   decoders.Strip(" ", 1, 0)])
  trainer = trainers.BpeTrainer(vocab_size=vocab_size - 256, special_tokens=["<unk>", "<s>", "</s>"],
                                show_progress=False)
  tok.train_from_iterator(corpus_texts(), trainer)
  spec = json.loads(tok.to_str())
  vocab = spec["model"]["vocab"]
  n = max(vocab.values()) + 1
  for b in range(256):
    vocab[f"<0x{b:02X}>"] = n + b
  tok = Tokenizer.from_str(json.dumps(spec))
  os.makedirs(out_dir, exist_ok=True)
  tok.save(os.path.join(out_dir, "tokenizer.json"))
  with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
    json.dump({"tokenizer_class": "LlamaTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
               "unk_token": "<unk>"}, f)
  return tok.get_vocab_size(with_added_tokens=True)


def make_gpt2(out_dir: str, n_layer=2, n_embd=32, n_head=4, n_positions=64, seed=0, **kw):
  import torch
  from transformers import GPT2Config, GPT2LMHeadModel
  n = gpt2_tokenizer(out_dir)
  eos = n - 1
  torch.manual_seed(seed)
  cfg = GPT2Config(vocab_size=n, n_embd=n_embd, n_layer=n_layer, n_head=n_head, n_positions=n_positions,
                   bos_token_id=eos, eos_token_id=eos, **kw)
  model = GPT2LMHeadModel(cfg).eval()
  _perturb_norms(model, seed)
  model.save_pretrained(out_dir)
  return model


def make_llama(out_dir: str, vocab_rows: int | None = None, shards: int = 1, seed=0, hidden_size=32,
               intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               max_position_embeddings=64, **kw):
  """vocab_rows > the tokenizer's ids makes a padded embedding (as many checkpoints have)."""
  import torch
  from transformers import LlamaConfig, LlamaForCausalLM
  n = llama_tokenizer(out_dir)
  torch.manual_seed(seed)
  cfg = LlamaConfig(vocab_size=vocab_rows or n, hidden_size=hidden_size, intermediate_size=intermediate_size,
                    num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
                    num_key_value_heads=num_key_value_heads, max_position_embeddings=max_position_embeddings,
                    bos_token_id=1, eos_token_id=2, **kw)
  model = LlamaForCausalLM(cfg).eval()
  _perturb_norms(model, seed)
  model.save_pretrained(out_dir)
  if shards > 1:
    write_shards(out_dir, shards)
  return model


def _perturb_norms(model, seed):
  """Norm weights start at exactly 1 (biases 0): make them random, so a swapped norm shows."""
  import torch
  g = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name or ".ln_" in name or name.startswith("ln_"):
        p.add_(0.1 * torch.randn(p.shape, generator=g))


def write_shards(out_dir: str, shards: int) -> None:
  """Re-writes DIR/model.safetensors as `shards` files plus model.safetensors.index.json."""
  from safetensors.numpy import load_file, save_file
  single = os.path.join(out_dir, "model.safetensors")
  tensors = load_file(single)
  os.remove(single)
  names = sorted(tensors)
  weight_map = {}
  for i, part in enumerate(np.array_split(np.arange(len(names)), shards)):
    file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
    save_file({names[j]: tensors[names[j]] for j in part}, os.path.join(out_dir, file), metadata={"format": "pt"})
    weight_map.update({names[j]: file for j in part})
  with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {"total_size": int(sum(t.nbytes for t in tensors.values()))}, "weight_map": weight_map}, f)


def hf_logits(model, tokens: np.ndarray) -> np.ndarray:
  import torch
  with torch.no_grad():
    return model(torch.as_tensor(tokens, dtype=torch.long)).logits.float().numpy()


def hf_logits_float64(model, tokens: np.ndarray) -> np.ndarray:
  """transformers' logits computed in float64 on a copy of `model`: the reference lm's float32
  logits are held to. transformers' own float32 logits are not a stable one: in a CI run and a
  local run of a test subset on 2026-12-03, GPT-2's row at position 24 of 40 came out up to
  1.6e-4 away from lm's (30 of its 320 logits past 1e-4), while lm's logits were the values
  that, in every run since, are within 3e-6 of these float64 ones (so are transformers' there).
  Runs of the same tests in the same order did not reproduce it, nor 300 repeats in one process."""
  import copy
  import torch
  with torch.no_grad():
    return copy.deepcopy(model).double()(torch.as_tensor(tokens, dtype=torch.long)).logits.numpy()


def hf_greedy(model, prompt: list[int], new_tokens: int) -> list[int]:
  import torch
  with torch.no_grad():
    out = model.generate(torch.as_tensor([prompt], dtype=torch.long), max_new_tokens=new_tokens,
                         min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
  return out[0, len(prompt):].tolist()
