"""The committed demo models: the trained base and the packed style adapters fit together and do their job."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from shira_runtime import ShiraSession, read_adapter
from shira_toolchain.train import photos
from shira_demos.demo_models import psnr
from shira_toolchain.train.styles import STYLES

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


LM_DIR = Path(__file__).resolve().parents[1] / "models" / "lm_tasks"
LM_FLOORS = {"upper": 0.8, "reverse": 0.25, "vowels": 0.35}


def _runtime_accuracy(sess, task: str, n: int = 32) -> float:
    from shira_toolchain.train import lm_text as lm_tasks

    b = lm_tasks.task_batch(task, torch.Generator().manual_seed(7), n, held_out=True)
    ids, gold = b["input_ids"].numpy(), b["labels"][:, 1:].numpy()
    pred = np.stack([sess.run({"input_ids": ids[i : i + 1]})["logits"][0, :-1].argmax(-1) for i in range(n)])
    mask = gold != -100
    return float((pred[mask] == gold[mask]).mean())


def test_committed_lm_task_adapters_work_on_the_runtime(llama):
    """Trained here on standard-library docstrings; adapters bound to the committed tiny-llama weights."""
    sess = ShiraSession(llama.base_dir)
    weights = sum(p.numel() for p in llama.subject.model.parameters())
    report = json.loads((LM_DIR / "build_report.json").read_text())
    base = {t: _runtime_accuracy(sess, t) for t in LM_FLOORS}
    for task, floor in LM_FLOORS.items():
        name = sess.load(LM_DIR / f"{task}.shira", name=task)
        assert 0.01 <= read_adapter(LM_DIR / f"{task}.shira").nnz / weights <= 0.02
        sess.switch(name)
        acc = _runtime_accuracy(sess, task)
        assert acc > floor and acc > base[task] + 0.2, (task, acc, base[task])
        assert abs(acc - report["tasks"][task]["accuracy_adapter"]) < 0.1  # n=32 here, 64 in the build report
    sess.reset()
