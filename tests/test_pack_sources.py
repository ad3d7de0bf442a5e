"""Every source `shira-pack adapter` accepts: PEFT LoRA (sparsified), full fine-tunes, seed-coded masks."""
import json
import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from shira_runtime import ShiraSession, read_adapter
from shira_format.codings import seeded_indices
from shira_toolchain.pack import PackError, pack_adapter

from .helpers import write_peft_layout_checkpoint

BIN = Path(sys.executable).parent


def test_peft_lora_checkpoint_is_sparsified_at_a_density(llama, tmp_path):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    lora = get_peft_model(copy.deepcopy(llama.subject.model),
                          LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"], init_lora_weights=False))
    lora.save_pretrained(str(tmp_path / "lora"))
    with pytest.raises(PackError, match="--density"):
        pack_adapter(tmp_path / "lora", llama.base_dir, tmp_path / "x.shira")
    rep = pack_adapter(tmp_path / "lora", llama.base_dir, tmp_path / "l.shira", value_coding="f32", density=0.05)
    assert rep.source_kind == "lora" and rep.tensors == 4 and abs(rep.density - 0.05) < 1e-3
    # the reported error is the true relative error of the kept entries against B @ A * alpha / r
    merged = copy.deepcopy(lora).merge_and_unload()
    base = dict(llama.subject.model.named_parameters())
    adapter = read_adapter(tmp_path / "l.shira")
    lost = total = 0.0
    for t, at in adapter.tensors.items():
        full = (dict(merged.named_parameters())[t] - base[t]).detach().numpy().reshape(-1).astype(np.float64)
        kept = np.zeros_like(full)
        kept[at.indices] = at.values
        np.testing.assert_allclose(at.values, full[at.indices], rtol=1e-4, atol=1e-6)
        assert np.min(np.abs(at.values)) >= np.sort(np.abs(full))[-at.indices.size] - 1e-6  # the largest |delta|
        lost += float(np.sum((full - kept) ** 2))
        total += float(np.sum(full ** 2))
    assert rep.sparsify_rel_error == pytest.approx(np.sqrt(lost / total), rel=1e-3)
    # and the runtime applies exactly those entries
    sess = ShiraSession(llama.base_dir)
    sess.load(tmp_path / "l.shira", name="l")
    sess.switch("l")
    for t, at in adapter.tensors.items():
        expect = base[t].detach().numpy().reshape(-1).copy()
        expect[at.indices] += at.values
        np.testing.assert_array_equal(sess.weight(t).reshape(-1), expect)


def test_full_finetune_diff_exact_and_at_a_density(llama, tmp_path):
    from safetensors.torch import save_file

    ft = copy.deepcopy(llama.subject.model)
    g = torch.Generator().manual_seed(0)
    changed = {}
    with torch.no_grad():
        for name in ("model.layers.0.mlp.up_proj.weight", "model.layers.1.self_attn.v_proj.weight"):
            w = dict(ft.named_parameters())[name]
            pos = torch.randperm(w.numel(), generator=g)[:300]
            w.view(-1)[pos] += torch.randn(300, generator=g) * 0.1
            changed[name] = np.sort(pos.numpy())
        ft.model.norm.weight += 0.5  # a real change the base cannot patch: reported, not packed
    save_file({k: v.contiguous() for k, v in ft.state_dict().items()}, str(tmp_path / "ft.safetensors"))
    rep = pack_adapter(tmp_path / "ft.safetensors", llama.base_dir, tmp_path / "ft.shira", value_coding="f32")
    assert rep.source_kind == "full-finetune" and rep.nnz == 600 and rep.sparsify_rel_error == 0.0
    assert rep.ignored == ["model.norm.weight"] and rep.ignored_checked  # only the unpatchable weight that changed
    a = read_adapter(tmp_path / "ft.shira")
    for name, pos in changed.items():
        np.testing.assert_array_equal(a.tensors[name].indices, pos)
    sess = ShiraSession(llama.base_dir, backend="executorch")
    sess.load(tmp_path / "ft.shira", name="ft")
    sess.switch("ft")
    ftp = dict(ft.named_parameters())
    for name in changed:
        np.testing.assert_allclose(sess.weight(name), ftp[name].detach().numpy(), atol=1e-7)
    density = 150 / (352 * 128)
    half = pack_adapter(tmp_path / "ft.safetensors", llama.base_dir, tmp_path / "h.shira", density=density)
    expect = sum(min(300, max(1, round(density * ftp[n].numel()))) for n in changed)
    assert half.nnz == expect and half.tensors == 2 and 0 < half.sparsify_rel_error < 1


def test_seed_coded_masks_cost_no_index_bytes(llama, tmp_path):
    module = "model.layers.0.mlp.gate_proj"  # [352, 128]
    r = 2
    flat = seeded_indices(99, 352 * 128, r * (352 + 128))  # PEFT-style fixed count r(m+n)
    ckpt = write_peft_layout_checkpoint(tmp_path / "s", {module: (flat // 128, flat % 128, np.ones(flat.size, np.float32))},
                                        )
    (ckpt / "shira_train.json").write_text(json.dumps({"mask_seeds": {module: 99}}))  # shira-train's side file
    rep = pack_adapter(ckpt, llama.base_dir, tmp_path / "s.shira")
    assert rep.index_codings == {"seed": 1}
    t = read_adapter(tmp_path / "s.shira").tensors[f"{module}.weight"]
    np.testing.assert_array_equal(t.indices, flat)
    assert t.stored_bytes == 2 * flat.size  # f16 values only


def test_cli_pack_reports_errors_and_inspect_lists_tensors(llama, tmp_path):
    def run(*args):
        return subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=300)

    r = run("shira-pack", "adapter", str(llama.peft_dirs["zen"]), "--base", str(llama.base_dir),
            "--out", str(tmp_path / "z.shira"), "--values", "int8-row")
    assert r.returncode == 0, r.stderr
    assert "values: int8-row, max abs error" in r.stdout and "elias-fano" in r.stdout
    r = run("shira-pack", "inspect", str(tmp_path / "z.shira"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("int8-row") >= 14 and "PEFT SHiRA layout" in r.stdout and "B/nonzero" in r.stdout
    (tmp_path / "bad.shira").write_bytes((tmp_path / "z.shira").read_bytes()[:-7])
    r = run("shira-pack", "inspect", str(tmp_path / "bad.shira"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "bad.shira" in r.stderr


def test_peft_base_layer_copies_are_skipped(llama, tmp_path):
    """PEFT stores a targeted lm_head's base weight beside the adapter (save_embedding_layers): not a delta."""
    from safetensors.numpy import load_file, save_file

    ckpt = write_peft_layout_checkpoint(tmp_path / "c", {"lm_head": (np.array([0, 3]), np.array([1, 2]),
                                                                     np.array([0.5, -0.5], np.float32))})
    st = load_file(str(ckpt / "adapter_model.safetensors"))
    st["base_model.model.lm_head.base_layer.weight"] = dict(llama.subject.model.named_parameters())[
        "lm_head.weight"].detach().numpy()
    save_file(st, str(ckpt / "adapter_model.safetensors"))
    rep = pack_adapter(ckpt, llama.base_dir, tmp_path / "h.shira", value_coding="f32")
    assert rep.nnz == 2 and rep.tensors == 1
