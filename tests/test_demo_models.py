"""The committed demo models: the trained base and the packed style adapters fit together and do their job."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from shira_runtime import ShiraSession, read_adapter
from shira_toolchain import photos
from shira_toolchain.demo_models import psnr
from shira_toolchain.styles import STYLES

STYLE_DIR = Path(__file__).resolve().parents[1] / "models" / "styles"
LEARNED = {"sepia": 25.0, "blue-fire": 25.0, "pencil": 12.0}  # PSNR floors on the held-out photo


def test_trained_base_reproduces_the_held_out_photo(stylenet):
    ev = photos.eval_crops(4)
    with torch.no_grad():
        assert psnr(stylenet.subject.model(ev), ev) > 28.0


def test_every_style_has_a_committed_adapter_within_two_percent(stylenet):
    weights = sum(p.numel() for p in stylenet.subject.model.parameters())
    assert sorted(p.stem for p in STYLE_DIR.glob("*.shira")) == sorted(STYLES)
    for style in STYLES:
        a = read_adapter(STYLE_DIR / f"{style}.shira")
        assert 0.01 <= a.nnz / weights <= 0.02, (style, a.nnz / weights)


@pytest.mark.parametrize("backend", ["onnxruntime", "executorch"])
def test_committed_style_adapters_restyle_on_the_runtime(stylenet, backend):
    """Bound to the built-in base's fingerprint: a retrained base without rebuilt adapters fails here."""
    sess = ShiraSession(stylenet.base_dir, backend=backend)
    for style in STYLES:
        sess.load(STYLE_DIR / f"{style}.shira", name=style)
    ev = photos.eval_crops(2, size=64)  # the .pte keeps static 64x64 shapes; ONNX accepts any size
    base = np.concatenate([sess.run({"image": ev[i : i + 1].numpy()})["styled"] for i in range(2)])
    report = json.loads((STYLE_DIR / "build_report.json").read_text())
    for style, floor in LEARNED.items():
        sess.switch(style)
        out = np.concatenate([sess.run({"image": ev[i : i + 1].numpy()})["styled"] for i in range(2)])
        target = STYLES[style](ev)
        got, before = psnr(torch.from_numpy(out), target), psnr(torch.from_numpy(base), target)
        assert got > floor and got > before + 5, (style, got, before)
        assert report["styles"][style]["psnr_adapter"] > floor
    sess.reset()
