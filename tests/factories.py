"""Small models for `package.module:factory` exports in the tests."""
import torch
from torch import nn


class _WithExample(nn.Module):
    def example_inputs(self):
        return {"x": torch.rand(2, 16, generator=torch.Generator().manual_seed(0))}


class TwinZeros(_WithExample):
    """a and b hold identical (all-zero) weights: the exporter merges them into one buffer."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.c = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 16)
        nn.init.zeros_(self.a.weight)
        nn.init.zeros_(self.b.weight)

    def forward(self, x):
        return self.c(torch.relu(self.a(x) + self.b(x) + x))


class Tied(_WithExample):
    """dec.weight IS enc.weight (one Parameter under two names)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.enc, self.dec = nn.Linear(16, 16, bias=False), nn.Linear(16, 16, bias=False)
        self.dec.weight = self.enc.weight
        self.head = nn.Linear(16, 8)

    def forward(self, x):
        return self.head(self.dec(torch.tanh(self.enc(x))))


class FanInFanOut(_WithExample):
    """A GPT-2 style Conv1D layer: weight stored as [in, out]."""

    def __init__(self):
        super().__init__()
        from transformers.pytorch_utils import Conv1D

        torch.manual_seed(0)
        self.proj = Conv1D(24, 16)  # nf=out=24, nx=in=16 -> weight [16, 24]
        self.head = nn.Linear(24, 4)

    def forward(self, x):
        return self.head(torch.relu(self.proj(x)))


def twin_zeros():
    return TwinZeros()


def tied():
    return Tied()


def fan_in_fan_out():
    return FanInFanOut()


def plain_mlp():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16))


def tiny_mlp():
    return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))


def smallest_mlp():
    """Weights of 9 and 6 floats: below the bake's external-data threshold (64 bytes), so never baked."""
    return nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))


def raises():
    raise RuntimeError("the factory failed")


class LayoutTraps(nn.Module):
    """Every layout the .pte search used to refuse falsely: a depthwise conv (XNNPACK stores [C,1,kh,kw] as
    [1,kh,kw,C]), a 1x1 conv and a Linear(N, 1) (two layouts, the same bytes and the same map), and a Linear
    whose input feature 0 is zero on the sample (a probe writing only column 0 sees nothing). Returns a dict,
    as a ModelOutput does: the export names each output."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 4, 1)
        self.fc = nn.Linear(16, 8)
        self.score = nn.Linear(8, 1)

    def example_inputs(self):
        g = torch.Generator().manual_seed(0)
        v = torch.rand(1, 16, generator=g)
        v[:, 0] = 0.0
        return {"image": torch.rand(1, 8, 8, 8, generator=g), "v": v}

    def forward(self, image, v):
        feats = self.pw(torch.relu(self.dw(image)))
        return {"features": feats, "score": self.score(torch.relu(self.fc(v)))}


def layout_traps():
    return LayoutTraps()


class HalfMLP(nn.Sequential):
    def example_inputs(self):
        return {"x": torch.rand(2, 16, generator=torch.Generator().manual_seed(0)).half()}


def half_mlp():
    torch.manual_seed(0)
    return HalfMLP(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).half()
