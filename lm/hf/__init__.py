"""Hugging Face interop: LlamaForCausalLM and GPT2LMHeadModel checkpoints in and out of lm.

    architectures.py  config.json <-> lm `model.` fields; what is supported (HFError otherwise)
    files.py          config.json and safetensors files, sharded or not
    weights.py        state-dict tensors <-> lm parameters, with missing/extra/shape checks
    tokenizer.py      tokenizer files for export (the tokenizer itself: lm/data/hf_tokenizer.py)
    importer.py       load_hf, import_to_workdir    } the library behind `python -m lm.convert`
    exporter.py       export, export_workdir        }

Nothing is downloaded: every function takes a local directory.
"""
