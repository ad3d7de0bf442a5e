"""SHiRA for convolutions, which PEFT's SHiRA (Linear only) does not cover.

The frozen dense kernel stays as it is; the adapter is a vector of `nnz` trainable values scattered into it
at fixed flat positions on every forward. Only those values carry gradients and optimizer state, exactly like
PEFT's `shira_weight` for Linear layers, and they save to the same checkpoint layout.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


class ShiraConv(nn.Module):
    def __init__(self, base: nn.Module, flat_indices: np.ndarray):
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.register_buffer("shira_flat", torch.from_numpy(np.asarray(flat_indices, dtype=np.int64)), persistent=False)
        self.shira_weight = nn.Parameter(torch.zeros(len(flat_indices)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.base.weight.reshape(-1).index_add(0, self.shira_flat, self.shira_weight).view_as(self.base.weight)
        return self.base._conv_forward(x, w, self.base.bias)

    def rows_cols(self) -> np.ndarray:
        """The [2, nnz] rows/cols of the weight viewed as [out, in*kh*kw]: PEFT's shira_indices layout."""
        cols = int(np.prod(self.base.weight.shape[1:]))
        flat = self.shira_flat.numpy()
        return np.stack([flat // cols, flat % cols]).astype(np.int32)
