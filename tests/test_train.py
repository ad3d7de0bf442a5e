"""`shira-train`: the paper's five masks, conv support, equal-count LoRA baseline, determinism, and that the
runtime reproduces the trained model once its checkpoint is packed."""
import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from shira_runtime import ShiraSession, read_adapter
from shira_format.codings import seeded_indices
from shira_toolchain.train import peft_shira
from shira_toolchain.train.masks import layer_seed
from shira_toolchain.model_source import resolve
from shira_toolchain.pack import pack_adapter
from shira_toolchain.train import TrainConfig, calibration_scores, train

QUIET = dict(log=lambda *a: None, progress=False)


@pytest.fixture(scope="module")
def sn():
    return resolve("style-net")


@pytest.mark.parametrize("mask", ["struct", "rand", "wm", "grad", "snip"])
def test_each_mask_trains_packs_and_runs_like_the_trained_model(sn, stylenet, tmp_path, mask):
    cfg = TrainConfig(task="invert", mask=mask, r=1, steps=4, lr=2e-2, seed=3)
    model, rep = train(sn, cfg, tmp_path / "ckpt", **QUIET)
    params = dict(sn.model.named_parameters())
    counts = {n: p.shape[0] + int(np.prod(p.shape[1:])) for n, p in params.items() if p.ndim >= 2}
    assert rep["trainable_values"] == sum(counts.values())  # r(R+C) per Linear and Conv layer
    assert rep["optimizer_state_bytes"] == 2 * 4 * rep["trainable_values"]  # Adam state on sparse values only
    pack_adapter(tmp_path / "ckpt", stylenet.base_dir, tmp_path / "a.shira", value_coding="f32")
    adapter = read_adapter(tmp_path / "a.shira")
    assert set(adapter.tensors) == set(counts)
    for t, at in adapter.tensors.items():
        assert at.indices.size == counts[t]
        w = params[t].detach().numpy().reshape(params[t].shape[0], -1)
        if mask == "wm":
            assert np.min(np.abs(w.reshape(-1)[at.indices])) >= np.sort(np.abs(w.reshape(-1)))[-at.indices.size]
        if mask == "struct":
            d = np.arange(min(w.shape))
            assert set((d * w.shape[1] + d).tolist()) <= set(at.indices.tolist())
        if mask == "rand":
            assert at.index_coding == "seed"
            np.testing.assert_array_equal(at.indices, seeded_indices(layer_seed(3, t.removesuffix(".weight")),
                                                                     w.size, counts[t]))
    if mask in ("grad", "snip"):
        scores = calibration_scores(sn, sn.model, list(counts), cfg)
        for t, at in adapter.tensors.items():
            s = scores[t].numpy().reshape(-1)
            assert np.min(s[at.indices]) >= np.sort(s)[-at.indices.size]
    sess = ShiraSession(stylenet.base_dir)
    sess.load(tmp_path / "a.shira", name="a")
    sess.switch("a")
    with torch.no_grad():
        ref = model(torch.from_numpy(stylenet.inputs["image"])).numpy()
    np.testing.assert_allclose(sess.run(stylenet.inputs)["styled"], ref, atol=2e-5, rtol=1e-5)


def test_same_seed_same_bytes_and_lora_baseline_matches_the_count(sn, tmp_path):
    cfg = TrainConfig(task="warm", mask="snip", r=1, steps=3, seed=11)
    _, a = train(sn, cfg, tmp_path / "a", **QUIET)
    train(sn, cfg, tmp_path / "b", **QUIET)
    assert (tmp_path / "a" / "adapter_model.safetensors").read_bytes() == \
        (tmp_path / "b" / "adapter_model.safetensors").read_bytes()
    _, lora = train(sn, TrainConfig(task="warm", r=1, steps=3, seed=11, lora=True), tmp_path / "l", **QUIET)
    assert lora["trainable_values"] == a["trainable_values"]
    assert lora["adapter"]["kind"] == "lora" and (tmp_path / "l" / "adapter_config.json").exists()


def test_lm_adapter_learns_and_peft_loads_its_linear_part(llama, tmp_path):
    _, rep = train(llama.subject, TrainConfig(task="zen", mask="wm", r=1, steps=25, lr=2e-2), tmp_path / "z", **QUIET)
    assert rep["loss_last"] < rep["loss_first"] - 0.3
    peft_model = peft_shira.load_peft(llama.subject.model, {"z": tmp_path / "z"})  # PEFT itself reads it back
    assert sum(p.numel() for n, p in peft_model.named_parameters() if "shira_weight" in n) == rep["trainable_values"]


@pytest.mark.long  # end to end, 20-60 s: in the CI's second run (README, Test)
def test_cli(tmp_path):
    exe = Path(sys.executable).parent / "shira-train"
    r = subprocess.run([str(exe), "style-net", "--task", "invert", "--mask", "grad", "--steps", "2",
                        "--out", str(tmp_path / "c")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "trainable values" in r.stdout and (tmp_path / "c" / "train_report.json").exists()
    r = subprocess.run([str(exe), "style-net", "--task", "nope", "--out", str(tmp_path / "d")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "unknown task" in r.stderr


def test_trains_on_a_text_file_and_refuses_bad_data(llama, tmp_path):
    import this  # noqa: F401 - the Zen of Python, a text that ships with Python
    import codecs

    (tmp_path / "zen.txt").write_text(codecs.decode(this.s, "rot13") * 3)
    _, rep = train(llama.subject, TrainConfig(task="text", data=str(tmp_path / "zen.txt"), mask="rand", r=1,
                                              steps=20, lr=2e-2), tmp_path / "t", **QUIET)
    assert rep["loss_last"] < rep["loss_first"] and rep["config"]["task"] == "text"
    (tmp_path / "short.txt").write_text("too short")
    with pytest.raises(ValueError, match="too short"):
        train(llama.subject, TrainConfig(task="text", data=str(tmp_path / "short.txt")), tmp_path / "s", **QUIET)
    with pytest.raises(ValueError, match="language models"):
        train(resolve("style-net"), TrainConfig(task="sepia", data=str(tmp_path / "zen.txt")), tmp_path / "x", **QUIET)


def test_avoid_gives_a_mask_disjoint_from_other_adapters(sn, stylenet, tmp_path):
    """--avoid: a second adapter's snip mask shares no entry with the first's, still has its full count, and
    differs from the mask it would pick alone; a seed-coded mask, LoRA and another model's blob are refused."""
    targets = r"^(enc\.2|mix\.0|dec\.3)\.weight$"
    cfg = dict(mask="snip", r=1, steps=2, lr=2e-2, targets=targets, calib_batches=1)
    train(sn, TrainConfig(task="sepia", **cfg), tmp_path / "a", **QUIET)
    first = pack_adapter(tmp_path / "a", stylenet.base_dir, tmp_path / "a.shira").out
    _, alone = train(sn, TrainConfig(task="invert", **cfg), tmp_path / "b0", **QUIET)
    _, apart = train(sn, TrainConfig(task="invert", avoid=(str(first),), **cfg), tmp_path / "b", **QUIET)
    assert apart["trainable_values"] == alone["trainable_values"]
    blobs = {n: read_adapter(pack_adapter(tmp_path / n, stylenet.base_dir, tmp_path / f"{n}.shira").out)
             for n in ("b0", "b")}
    a = read_adapter(first)
    for t in a.tensors.values():
        assert np.intersect1d(t.indices, blobs["b"].tensors[t.target].indices).size == 0, t.target
    assert sum(np.intersect1d(t.indices, blobs["b0"].tensors[t.target].indices).size for t in a.tensors.values()) > 0
    with pytest.raises(ValueError, match="cannot avoid"):
        train(sn, TrainConfig(task="invert", mask="rand", r=1, steps=1, targets=targets, avoid=(str(first),)),
              tmp_path / "c", **QUIET)
    with pytest.raises(ValueError, match="LoRA"):
        train(sn, TrainConfig(task="invert", r=1, steps=1, targets=targets, lora=True, avoid=(str(first),)),
              tmp_path / "d", **QUIET)
    other = resolve("tiny-llama")
    with pytest.raises(ValueError, match="another model"):
        train(other, TrainConfig(task="upper", mask="wm", r=1, steps=1, avoid=(str(first),)), tmp_path / "e", **QUIET)


def test_deal_gives_each_task_its_best_free_entries_in_turns():
    from shira_toolchain.train.joint import deal

    same = np.arange(40)[::-1]  # every task ranks the entries alike (wm): turns decide
    a, b = deal([same, same], 8)
    assert np.intersect1d(a, b).size == 0 and a.size == b.size == 8
    assert {*a, *b} == set(range(24, 40))  # together they took the 16 best, nothing worse
    apart = deal([np.arange(40), np.arange(40)[::-1]], 8)  # no conflict: each keeps its own best
    np.testing.assert_array_equal(apart[0], np.arange(8))
    np.testing.assert_array_equal(apart[1], np.arange(32, 40))
    with pytest.raises(ValueError, match="do not fit"):
        deal([same] * 3, 14)


def test_joint_adapters_are_disjoint_and_fuse_in_the_runtime_as_trained(sn, stylenet, tmp_path):
    """--joint: one checkpoint per style whose blob holds exactly the jointly trained values on masks that share
    no entry, at the single-adapter count; the runtime's fuse of all three at scales 1/3 (the blend the fused
    term trains for) gives the trained fused model's output."""
    from shira_toolchain.train.joint import train_jointly

    targets = r"^(enc\.2|mix\.0)\.weight$"  # dec.3 (3 output channels): three masks of r(R+C) do not fit
    styles = ["sepia", "blue-fire", "pencil"]
    cfg = TrainConfig(task="", mask="snip", r=1, steps=4, lr=2e-2, targets=targets, calib_batches=1)
    deltas, rep = train_jointly(sn, styles, cfg, tmp_path / "joint", **QUIET)
    params = dict(sn.model.named_parameters())
    sess = ShiraSession(stylenet.base_dir)
    adapters, total = {}, 0
    for s in styles:
        blob = pack_adapter(tmp_path / "joint" / s, stylenet.base_dir, tmp_path / f"{s}.shira", value_coding="f32").out
        adapters[s] = read_adapter(blob)
        sess.load(blob, name=s)
    for t, p in params.items():
        if t not in deltas["sepia"]:
            continue
        count = p.shape[0] + int(np.prod(p.shape[1:]))
        total += count
        for i, s in enumerate(styles):
            at = adapters[s].tensors[t]
            assert at.indices.size == count
            dense = deltas[s][t].numpy().reshape(-1)
            np.testing.assert_array_equal(at.values, dense[at.indices])  # the checkpoint holds what was trained
            assert np.count_nonzero(np.delete(dense, at.indices)) == 0
            for other in styles[i + 1:]:
                assert np.intersect1d(at.indices, adapters[other].tensors[t].indices).size == 0, (s, other, t)
    assert rep["trainable_values_per_task"] == total > 0  # r(R+C) per weight, as one adapter trained alone
    sess.fuse({s: 1 / 3 for s in styles})
    fused = copy.deepcopy(sn.model)
    with torch.no_grad():
        for t, p in fused.named_parameters():
            if t in deltas["sepia"]:
                p += sum(deltas[s][t] for s in styles) / 3
        ref = fused(torch.from_numpy(stylenet.inputs["image"])).numpy()
    np.testing.assert_allclose(sess.run(stylenet.inputs)["styled"], ref, atol=2e-5, rtol=1e-5)
    sess.close()


def test_joint_lora_twin_saves_what_it_trained_and_bad_joint_input_is_refused(llama, tmp_path):
    from peft import PeftModel
    from shira_toolchain.train.joint import train_jointly

    cfg = TrainConfig(task="", r=1, steps=2, lr=1e-2, lora=True, targets=r"q_proj\.weight$")
    deltas, _ = train_jointly(llama.subject, ["upper", "rot13"], cfg, tmp_path / "j", **QUIET)
    merged = PeftModel.from_pretrained(copy.deepcopy(llama.subject.model), str(tmp_path / "j" / "rot13")).merge_and_unload()
    base = dict(llama.subject.model.named_parameters())
    for t, d in deltas["rot13"].items():
        assert d.abs().max() > 0
        torch.testing.assert_close(dict(merged.named_parameters())[t] - base[t], d, atol=1e-6, rtol=1e-5)
    for bad, match in [(dict(tasks=["upper"]), "at least two"), (dict(tasks=["upper", "nope"]), "unknown task"),
                       (dict(tasks=["upper", "rot13"], mask="rand"), "ranked by a score"),
                       (dict(tasks=["upper", "rot13"], r=40), "do not fit")]:
        with pytest.raises(ValueError, match=match):
            train_jointly(llama.subject, bad.pop("tasks"), TrainConfig(task="", mask=bad.get("mask", "wm"),
                          r=bad.get("r", 1), steps=1, targets=r"q_proj\.weight$"), tmp_path / "x", **QUIET)
