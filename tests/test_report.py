"""`shira report styles` at a few steps: every section is present and every number is computed, not copied."""
import json

import pytest

import numpy as np
import torch

from shira_demos.report import interference, style_report


@pytest.mark.slow
def test_style_report_structure(tmp_path):
    r = style_report(tmp_path, steps=3, styles=("sepia", "blue-fire", "pencil"), methods=("wm", "rand", "lora"),
                     n_eval=2, log=lambda *a: None)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["single"] == json.loads(json.dumps(r["single"]))
    assert {(x["style"], x["method"]) for x in r["single"]} == {(s, m) for s in ("sepia", "blue-fire", "pencil")
                                                                for m in ("wm", "rand", "lora")}
    # SHiRA and LoRA train the same number of values
    assert len({x["trainable_values"] for x in r["single"]}) == 1
    assert {x["k"] for x in r["fusion"]} == {2, 3} and len(r["fusion"]) == 3 * (3 * 2 + 3)
    lora = [x for x in r["interference"] if x["method"] == "lora"]
    assert all(x["awor"] == 0.0 and x["mask_overlap"] is None for x in lora)  # dense deltas: no zeros
    wm = [x for x in r["interference"] if x["method"] == "wm"]
    assert all(x["mask_overlap"] > 0.9 for x in wm)  # a weight-only mask is the same for every style
    md = (tmp_path / "README.md").read_text()
    assert "| sepia |" in md and "AWOM" in md and "grid.png" in md
    from PIL import Image

    assert Image.open(tmp_path / "grid.png").size[0] >= 96 * 4  # input, target, SHiRA-wm, LoRA


def test_interference_measures():
    a = {"w": torch.tensor([[1.0, 0.0], [0.0, 0.0]])}
    b = {"w": torch.tensor([[0.0, 0.0], [0.0, 2.0]])}
    assert interference(a, b) == (0.0, 1.0)  # disjoint sparse deltas: orthogonal, all-zero product
    c = {"w": torch.tensor([[3.0, 0.0], [0.0, 0.0]])}
    awom, awor = interference(a, c)
    assert np.isclose(awom, 1.0) and np.isclose(awor, 0.75)


@pytest.mark.long  # end to end, 20-60 s: in the CI's second run (README, Test)
def test_training_cost_measures_each_method_in_its_own_process():
    from shira_demos.train_cost import measure

    shira = measure("style-net", "sepia", "shira-snip", r=1, steps=4)
    lora = measure("style-net", "sepia", "lora", r=1, steps=4)
    assert shira["trainable_values"] == lora["trainable_values"] > 1000
    for m in (shira, lora):
        assert m["step_ms_median"] > 0 and m["peak_rss_mb"] > 50
