"""A small byte-level decoder LM built from transformers' Llama classes (the shape of real LLM adapters).

Byte-level (vocab 256) so that it needs no tokenizer files.
"""
from __future__ import annotations

from pathlib import Path

import torch

MAX_SEQ = 256
WEIGHTS = Path(__file__).with_name("tiny_llama.safetensors")
SEED = 1234


def config():
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=256,
        hidden_size=128,
        intermediate_size=352,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=MAX_SEQ,
        use_cache=False,
        tie_word_embeddings=False,
        attn_implementation="eager",  # sdpa/flex paths export less predictably
    )


def build(trained: bool = True) -> torch.nn.Module:
    """The LlamaForCausalLM itself: PEFT adapts it, so manifest names are its parameter names.

    Loads `tiny_llama.safetensors` beside this file (trained here on standard-library docstrings by
    `shira build-demo-models`) when it exists and `trained`; else the seeded initialisation."""
    from transformers import LlamaForCausalLM

    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        lm = LlamaForCausalLM(config())
    if trained and WEIGHTS.exists():
        from safetensors.torch import load_file

        lm.load_state_dict(load_file(str(WEIGHTS)))
    return lm.eval()


def example_inputs() -> dict[str, torch.Tensor]:
    text = b"Sparse high rank adapters switch fast."
    return {"input_ids": torch.tensor([list(text[:32])], dtype=torch.int64)}
