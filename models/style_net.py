"""A small image-to-image network with both Conv2d and Linear weights, the base of the style demo.

The encoder/decoder are convolutions; in the middle a per-pixel MLP (two Linear layers over channels, applied
channels-last) mixes colour features. The output is the input plus a learned residual, so an untrained or
lightly trained net starts near the identity.
"""
from __future__ import annotations

import torch
from torch import nn

SEED = 4321


class StyleNet(nn.Module):
    def __init__(self, width: int = 32, hidden: int = 64):
        super().__init__()
        self.enc = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1, stride=2), nn.ReLU(),
        )
        self.mix = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, width))
        self.dec = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 3, 3, padding=1),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h = self.enc(image)
        h = h + self.mix(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return image + self.dec(h)


def build() -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        net = StyleNet()
    return net.eval()


def example_inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"image": torch.rand(1, 3, 64, 64, generator=g)}
