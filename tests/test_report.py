"""`shira report styles` at a few steps: every section is present and every number is computed, not copied."""
import json

import pytest

import numpy as np
import torch

from shira_demos.styles_report import interference, style_report


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


def test_fused_deltas_follow_the_runtime_rules():
    from shira_demos.fusion import fused_deltas

    a = {"w": torch.tensor([[1.0, 0.0], [2.0, 0.0]])}
    b = {"w": torch.tensor([[0.0, 4.0], [-1.0, 0.0]])}
    sums = fused_deltas([a, b], [1.0, 0.5], "sum")["w"]
    torch.testing.assert_close(sums, torch.tensor([[1.0, 2.0], [1.5, 0.0]]))
    # entry (1, 0) is the only overlap: mean halves it, ties keeps the elected sign's terms, magnitude the larger
    assert fused_deltas([a, b], [1.0, 0.5], "mean")["w"][1, 0] == 0.75
    assert fused_deltas([a, b], [1.0, 0.5], "ties")["w"][1, 0] == 2.0
    assert fused_deltas([a, b], [1.0, 0.5], "magnitude")["w"][1, 0] == 2.0
    for rule in ("mean", "ties", "magnitude"):  # where one adapter touches an entry, every rule is the sum
        torch.testing.assert_close(fused_deltas([a, b], [1.0, 0.5], rule)["w"][0], sums[0])


@pytest.mark.long  # trains 6 recipes x 19 tasks at a few steps, 2 seeds of the 3-task table: ~2 min
def test_fusion_report_structure(tmp_path):
    from shira_demos.fusion import ALL_LINEAR, CURVE_N, fusion_report
    from shira_format.adapter import DEFAULT_VALUES

    r = fusion_report(tmp_path, steps=2, curve_masks=("snip",), log=lambda *a: None, seeds=(0, 1))
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["lm"]["three"] == json.loads(json.dumps(r["lm"]["three"]))
    recipes = {x["recipe"] for x in r["lm"]["three"]}
    assert recipes == {"SHiRA-snip, alone", "SHiRA-snip, disjoint", "SHiRA-snip, joint", ALL_LINEAR, "LoRA, alone",
                       "LoRA, joint"}
    for x in r["lm"]["three"]:
        assert [run["seed"] for run in x["per_seed"]] == [0, 1]
        losses = [np.mean([(run["alone"][t] - run["fused"][t]) * 100 for t in run["alone"]]) for run in x["per_seed"]]
        assert np.isclose(x["concept_loss_points"], np.mean(losses))
        assert x["concept_loss_range"] == [min(losses), max(losses)]
        if x["recipe"].startswith("SHiRA"):  # judged on blobs packed with shira-pack's defaults, in a session
            assert x["judged"]["values"] == [DEFAULT_VALUES] and x["judged"]["session_mode"] == "in-place"
            assert all(b > 0 for b in x["judged"]["blob_bytes"].values()) and "shira-train tiny-llama" in x["command"]
    disjoint = [x for x in r["lm"]["three"] if x["recipe"] == "SHiRA-snip, disjoint"]
    assert len({json.dumps(x["fused"]) for x in disjoint}) == 1  # no overlap: every rule is the sum
    assert "--fused-weight 0" in disjoint[0]["command"]
    every = next(x for x in r["lm"]["three"] if x["recipe"] == ALL_LINEAR)
    assert "--targets" not in every["command"]
    every_bytes = sum(every["judged"]["blob_bytes"].values())
    joint = next(x for x in r["lm"]["three"] if x["recipe"] == "SHiRA-snip, joint")
    assert every_bytes > sum(joint["judged"]["blob_bytes"].values())  # more layers adapted, more entries
    curve = [c for c in r["lm"]["curve"] if "n" in c]
    assert {c["n"] for c in curve} == set(CURVE_N) and all(c["retained"] == 1.0 for c in curve if c["n"] == 1)
    assert ALL_LINEAR not in {c["recipe"] for c in curve}
    for row in r["style"]["rows"]:
        assert np.isclose(row["concept_loss_db"], row["ensemble_psnr"] - row["fused_psnr"])
    md = (tmp_path / "README.md").read_text()
    assert "curve.png" in md and "| LoRA, joint | sum |" in md and "shira-pack adapter" in md
    from PIL import Image

    assert Image.open(tmp_path / "curve.png").size[0] > 300 and Image.open(tmp_path / "styles.png").size[0] >= 128 * 7


def test_readme_joint_example_trains_the_fusion_reports_joint_row():
    """The README's `--joint` line is the report's "SHiRA-snip, joint" recipe (its numbers are the line's)."""
    import shlex

    from shira_demos.fusion import LM_TASKS, command, recipes

    from .test_readme import block, shell_lines

    line = next(ln for ln in shell_lines(block("## Training adapters", "sh")) if "--joint" in ln)
    recipe = next(r for r in recipes() if r[0] == "SHiRA-snip, joint")

    def options(cmd):
        words = shlex.split(cmd.split("#")[0])
        pairs = {w: (words[i + 1] if i + 1 < len(words) and not words[i + 1].startswith("--") else True)
                 for i, w in enumerate(words) if w.startswith("--")}
        return {k: v for k, v in pairs.items() if k not in ("--seed", "--out")}

    assert options(line) == options(command(recipe, LM_TASKS, 2, 300, 0.02, 0))
