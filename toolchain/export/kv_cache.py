"""Causal LMs exported as devices run them: with the key/value cache as graph inputs and outputs.

`shira-export model LM --kv-cache` traces `CachedLM` instead of `input_ids -> logits`:

    inputs   input_ids [1, seq], past.<i>.key / past.<i>.value [1, kv_heads, past, head_dim] for each layer i
    outputs  logits [1, seq, vocab], present.<i>.key / present.<i>.value [1, kv_heads, past + seq, head_dim]

Slot 0 of the cache is always masked out: a prompt is run against a one-slot cache of zeros, and each step
feeds the previous step's present tensors back as past. That keeps one graph for prompt and decode with no
zero-length dimension (torch.export cannot trace one), at the cost of one wasted slot. Positions are derived
from the cache length (position of the first new token = past - 1), so the caller passes only token ids.
The manifest's `generation` entry says all this to the runtime (docs/MANIFEST.md, "Generation").

Both runtimes take the same graph: XNNPACK lowers it with dynamic `seq` and `past` dimensions (its linears
read the patchable weights at every execute, so a switch reaches the next token). ExecuTorch's Llama example
keeps a static-size cache inside the program instead; transformers' exportable static-cache wrapper does not
trace with torch 2.13 here, and the dynamic cache needs no second protocol, so that is the one exported.
"""
from __future__ import annotations

import dataclasses

import torch

from ..model_source import ExportSubject, ModelSourceError


class CachedLM(torch.nn.Module):
    """forward(input_ids, *past) -> (logits, *present): all positional (one *args), as the exporters trace it."""

    def __init__(self, lm: torch.nn.Module, layers: int):
        super().__init__()
        self.lm, self.layers = lm, layers

    def forward(self, *args):
        from transformers import DynamicCache

        input_ids, past = args[0], args[1:]
        seq, past_len = input_ids.shape[1], past[0].shape[2]
        cache = DynamicCache()
        for i in range(self.layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        mask = torch.cat([torch.zeros(1, 1, dtype=torch.int64),
                          torch.ones(1, past_len - 1 + seq, dtype=torch.int64)], dim=1)
        positions = torch.arange(past_len - 1, past_len - 1 + seq).unsqueeze(0)
        out = self.lm(input_ids=input_ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                      use_cache=True)
        present = []
        for layer in out.past_key_values.layers:
            present += [layer.keys, layer.values]
        return (out.logits, *present)


def cache_shape(model: torch.nn.Module) -> tuple[int, int, int]:
    """(layers, kv_heads, head_dim) from a transformers config."""
    cfg = model.config
    layers = getattr(cfg, "num_hidden_layers", None)
    heads = getattr(cfg, "num_attention_heads", None)
    if not layers or not heads:
        raise ModelSourceError(f"{type(model).__name__}: no num_hidden_layers / num_attention_heads in its config; "
                               "--kv-cache needs a transformers decoder")
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return layers, kv_heads, head_dim


def with_kv_cache(subject: ExportSubject) -> ExportSubject:
    """The same causal LM, exported with its cache as inputs and outputs."""
    if subject.family != "causal-lm":
        raise ModelSourceError(f"--kv-cache applies to causal LMs; {subject.source} is a {subject.task or subject.family}")
    layers, kv_heads, head_dim = cache_shape(subject.model)
    g = torch.Generator().manual_seed(0)
    ids = subject.example_inputs["input_ids"][:, :8]
    max_pos = subject.dynamic_axes.get("input_ids", {}).get(1, ("seq", 1, 512))[2]
    inputs, dynamic = {"input_ids": ids}, {"input_ids": {1: ("seq", 1, max_pos)}}
    names = ["logits"]
    for i in range(layers):
        for kv in ("key", "value"):
            inputs[f"past.{i}.{kv}"] = torch.randn(1, kv_heads, 4, head_dim, generator=g)  # slot 0 masked, 3 real
            dynamic[f"past.{i}.{kv}"] = {2: ("past", 1, max_pos)}
            names.append(f"present.{i}.{kv}")
    generation = {"cache": "inputs-outputs", "layers": layers, "kv_heads": kv_heads, "head_dim": head_dim,
                  "past": "past.{layer}.{kv}", "present": "present.{layer}.{kv}", "first_slot_masked": True,
                  "max_positions": max_pos}
    return dataclasses.replace(subject, example_inputs=inputs, output_names=names, dynamic_axes=dynamic,
                               output_fields=None, wrap=lambda m: CachedLM(m, layers), generation=generation)
