"""README "Training beyond one machine", verbatim: PEFT SHiRA trained with transformers' Trainer on the CPU with
this project's picklable mask, then packed by shira-pack; and the mask rebuilt in a spawned process is the same."""
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.long  # an export, a Trainer run and a spawned process: about a minute


def _section() -> tuple[str, list[str]]:
    text = (ROOT / "README.md").read_text().split("## Training beyond one machine", 1)[1].split("\n## ", 1)[0]
    py = re.findall(r"```python\n(.*?)```", text, re.S)
    sh = [line.split("  #")[0].strip() for b in re.findall(r"```sh\n(.*?)```", text, re.S) for line in b.splitlines()]
    return py[0], [c for c in sh if c]


def _spawned_mask(config_bytes: bytes) -> bytes:
    import torch

    from shira_models import get_spec

    config = pickle.loads(config_bytes)
    layer = get_spec("tiny-llama").build().model.layers[0].self_attn.q_proj
    return pickle.dumps(config.mask_fn(layer, config.r).nonzero())


def test_readme_trainer_path_runs_and_packs(tmp_path):
    from shira_toolchain.export import export_model
    from shira_toolchain.model_source import resolve

    export_model(resolve("tiny-llama"), tmp_path / "out" / "llama", formats=("onnx",), log=lambda *a: None)
    code, commands = _section()
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert commands == ["shira-pack adapter ckpt/trainer --base out/llama --out trainer.shira"]
    pack = Path(sys.executable).parent / "shira-pack"
    r = subprocess.run([str(pack), *commands[0].split()[1:]], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and (tmp_path / "trainer.shira").stat().st_size > 0, r.stderr[-2000:]
    from shira_runtime import ShiraSession

    with ShiraSession(tmp_path / "out" / "llama") as s:  # the packed adapter switches in
        s.switch(s.load(tmp_path / "trainer.shira"))
        assert s.patcher.patched_entries > 0


def test_the_mask_pickles_to_another_process():
    import multiprocessing as mp

    from peft import ShiraConfig

    from shira_models import get_spec
    from shira_toolchain.train.peft_masks import WeightMagnitudeMask

    config = ShiraConfig(r=2, target_modules=["q_proj"])
    config.mask_fn, config.mask_type = WeightMagnitudeMask(), "wm"
    here = config.mask_fn(get_spec("tiny-llama").build().model.layers[0].self_attn.q_proj, 2).nonzero()
    with mp.get_context("spawn").Pool(1) as pool:
        there = pickle.loads(pool.apply(_spawned_mask, (pickle.dumps(config),)))
    assert here.shape[0] == 2 * (128 + 128) and (here == there).all()
