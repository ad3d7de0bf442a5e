"""The style demo's base: a small image-to-image autoencoder with Conv2d and Linear weights.

Encoder convolutions (one stride-2) -> a per-pixel MLP over channels (two Linear layers, applied
channels-last) -> nearest upsampling -> decoder convolutions. No input skip connection: every layer carries
the image, so sparse adapters on any layer can restyle it. Trained here to reproduce its input on photos
that ship with scikit-image / scikit-learn; the weights are `style_net.safetensors` beside this file
(rebuild: `shira build-demo-models`).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

SEED = 4321
WEIGHTS = Path(__file__).with_name("style_net.safetensors")


class StyleNet(nn.Module):
    def __init__(self, width: int = 48, hidden: int = 128):
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
        return self.dec(h)


def build(trained: bool = True) -> nn.Module:
    """The trained base if its weights ship beside this file (and `trained`), else the seeded initialisation."""
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        net = StyleNet()
    if trained and WEIGHTS.exists():
        from safetensors.torch import load_file

        net.load_state_dict(load_file(str(WEIGHTS)))
    return net.eval()


def example_inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"image": torch.rand(1, 3, 64, 64, generator=g)}
