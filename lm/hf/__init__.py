"""Hugging Face interop: LlamaForCausalLM and GPT2LMHeadModel checkpoints in and out of lm.

    config.py     config.json <-> lm `model.` fields; what is supported (HFError otherwise)
    files.py      config.json and safetensors files, sharded or not
    weights.py    state-dict tensors <-> lm parameters, with missing/extra/shape checks
    tokenizer.py  tokenizer.json behind lm's Tokenizer interface
    convert.py    load_hf, import_to_workdir, export (the library behind `python -m lm.convert`)

Nothing is downloaded: every function takes a local directory.
"""
