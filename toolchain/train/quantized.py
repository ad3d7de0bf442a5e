"""Adapters for a quantized base (`shira-train ... --quantized-base DIR`).

A quantized base keeps its scales: a patched entry becomes z + clamp(rint((u - z) + delta/s)) (docs/QUANTIZATION.md),
so it can hold only values in [-z*s, (z-1)*s]. An adapter trained on the float base knows nothing of that: the
shipped tiny-llama task adapters move most of their entries past their row's largest weight, and an int8 base
clamps more than half of them (shira-bench --quantized). Trained here instead, the adapter sees what the device
holds and never asks for more:
  - the frozen weights are the base's dequantized integers, not the float weights they came from;
  - after every optimizer step each trainable value is clamped to its entry's range, so w + delta stays a value
    the integers can hold with the base's scale (the device then only rounds it to the nearest step).
"""
from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch


class QuantizedBase:
    """The quantized placements of an exported base, as the trainer needs them: the dequantized weight and,
    per entry, the lowest and highest delta its integer can take."""

    def __init__(self, base_dir, model: torch.nn.Module):
        from shira_format import manifest as manifest_mod
        from shira_format.quant import dequantize_entries, entries
        from shira_format.weights import quantized_placements

        from ..export import base_fingerprint

        man = manifest_mod.load(base_dir)
        if man.base_fingerprint != base_fingerprint(model):
            raise ValueError(f"{Path(base_dir) / 'manifest.json'}: exported from another model (base fingerprint "
                             "differs): give the quantized export of this model")
        self.weights, self.low, self.high = {}, {}, {}
        for target, (p, stored, scales) in quantized_placements(man).items():
            info = man.tensors[target]
            rows, cols = info.shape
            u = entries(stored, p.quant)[np.arange(rows * cols, dtype=np.int64)].astype(np.float64)
            s = p.quant.scale_of(scales, np.arange(rows * cols, dtype=np.int64), cols).astype(np.float64)
            z = p.quant.zero_point
            self.weights[target] = dequantize_entries(u, scales, p.quant, rows, cols)
            self.low[target] = torch.from_numpy((-s * u).astype(np.float32))  # down to the integer -z
            self.high[target] = torch.from_numpy((s * (2 * z - 1 - u)).astype(np.float32))  # up to z - 1
        if not self.weights:
            raise ValueError(f"{base_dir}: not a quantized base (no placement has quant); export it with "
                             "--quantize int8|int4")

    def frozen(self, subject):
        """The subject with its quantized weights replaced by what the device holds."""
        model = copy.deepcopy(subject.model)
        params = dict(model.named_parameters())
        with torch.no_grad():
            for target, w in self.weights.items():
                params[target].copy_(torch.from_numpy(w))
        return replace(subject, model=model)

    def projector(self, model: torch.nn.Module):
        """A function that clamps every trainable SHiRA value of `model` (PEFT's ShiraLayer) to its entry's range."""
        jobs = []
        for name, mod in model.named_modules():
            target = name.removeprefix("base_model.model.") + ".weight"
            if target not in self.low or not hasattr(mod, "shira_indices"):
                continue
            for adapter, param in mod.shira_weight.items():
                rows, cols = mod.shira_indices[adapter]
                flat = (rows.long() * mod.in_features + cols.long())
                scale = float(mod.scaling[adapter])
                jobs.append((param, self.low[target][flat] / scale, self.high[target][flat] / scale))

        def project() -> None:
            with torch.no_grad():
                for param, lo, hi in jobs:
                    param.copy_(torch.maximum(torch.minimum(param, hi), lo))
        return project
