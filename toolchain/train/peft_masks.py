"""SHiRA masks as PEFT `mask_fn`s that travel: module-level callables, picklable and computed from the layer alone.

PEFT's ShiraConfig takes a custom mask through `config.mask_fn = fn`, called as fn(base_layer, r, **kwargs)
for every targeted Linear. A closure over this process's objects (what `shira-train` uses inside one process)
cannot be pickled to the worker processes of transformers' Trainer / accelerate (DDP with spawn), and would
not find its layers there anyway. These masks depend only on the layer's weight, so every process computes the
same mask, and they pickle by reference.
"""
from __future__ import annotations

import torch

from .masks import mask_indices


class WeightMagnitudeMask:
    """The paper's `wm` mask: the r * (rows + cols) entries of largest |W| (PEFT's count), as shira-train picks
    them (masks.mask_indices)."""

    def __call__(self, base_layer: torch.nn.Module, r: int, **kwargs) -> torch.Tensor:
        w = base_layer.weight
        count = r * (w.shape[0] + w.shape[1])
        idx, _ = mask_indices("wm", w.detach().cpu(), count, "peft", 0)
        mask = torch.zeros(w.numel(), dtype=w.dtype)
        mask[torch.from_numpy(idx)] = 1
        return mask.view_as(w).to(w.device)

    def __repr__(self) -> str:  # PEFT prints its config; say which mask, not an address
        return "WeightMagnitudeMask()"
