"""The demo's four styles: deterministic image transforms, so every style has an exact ground truth.

All take and return [N, 3, H, W] float tensors in [0, 1].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

_LUMA = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)


def luma(x: torch.Tensor) -> torch.Tensor:
    return (x * _LUMA).sum(1, keepdim=True)


def sepia(x: torch.Tensor) -> torch.Tensor:
    m = torch.tensor([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]])
    return torch.einsum("oc,nchw->nohw", m, x).clamp(0, 1)


def blue_fire(x: torch.Tensor) -> torch.Tensor:
    """Colour grading: shadows deep blue, mid-tones cyan, highlights white-hot."""
    y = luma(x)
    return torch.cat([y.pow(2.2) * 0.9, y.pow(1.2) * 0.85, 0.25 + 0.75 * y.pow(0.6)], 1).clamp(0, 1)


def posterize(x: torch.Tensor, levels: int = 4) -> torch.Tensor:
    """Cartoon-like flat colour: a smoothed image quantised to a few levels per channel."""
    smooth = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return (torch.round(smooth * (levels - 1)) / (levels - 1)).clamp(0, 1)


def pencil(x: torch.Tensor) -> torch.Tensor:
    """Pencil sketch: colour-dodge of the grey image with its blurred negative (a spatial style)."""
    y = luma(x)
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
    k = (k[:, None] * k[None, :] / 256.0).view(1, 1, 5, 5)
    blur = F.conv2d(F.pad(1 - y, (2, 2, 2, 2), mode="replicate"), k)
    sketch = (y / (1 - blur).clamp(min=1e-3)).clamp(0, 1)
    return sketch.expand(-1, 3, -1, -1).contiguous()


STYLES = {"sepia": sepia, "blue-fire": blue_fire, "posterize": posterize, "pencil": pencil}
