"""The architecture matrix (tests/arch_matrix.py): real Hugging Face and diffusers architectures through export,
pack, switch and reset on both runtimes. A representative subset runs by default (a conv net with BatchNorm and
depthwise convs, a GPT-2 with Conv1D and tied embeddings); the rest are `long`."""
from __future__ import annotations

import pytest
from shira_models.architectures import ARCHITECTURES

from .arch_matrix import check_architecture

DEFAULT = ("mobilenetv2", "gpt2")


@pytest.mark.slow
@pytest.mark.parametrize("name", [n if n in DEFAULT else pytest.param(n, marks=pytest.mark.long)
                                  for n in ARCHITECTURES])
def test_architecture_exports_patches_and_resets(name, tmp_path):
    row = check_architecture(name, tmp_path)
    assert row["patchable"] > 0
    assert set(row["rel_error"]) == {"onnxruntime", "executorch"}
    assert row["in_place"] == "yes", row["in_place"]  # the default ORT session: in place, checked in the matrix


def test_the_matrix_covers_the_required_architectures():
    required = {"llama", "qwen2", "mistral", "gemma", "phi3", "gpt2", "bert", "distilbert", "t5-encoder", "vit",
                "convnext", "resnet", "mobilenetv2", "unet"}
    assert required <= set(ARCHITECTURES)


@pytest.mark.slow
def test_full_finetune_of_a_batchnorm_net_packs_exactly_the_changed_entries(tmp_path):
    """A fine-tune diffed against a folded base: unchanged entries fold to the same float32 and stay out, the
    changed ones come back in torch coordinates; a changed BatchNorm is reported, not silently dropped."""
    import numpy as np
    import torch
    from safetensors.torch import save_file
    from shira_runtime import read_adapter
    from shira_models.architectures import save
    from shira_toolchain.export import export_model
    from shira_toolchain.model_source import resolve
    from shira_toolchain.pack import pack_adapter

    subject = resolve(str(save("resnet", tmp_path / "hf")))
    manifest = export_model(subject, tmp_path / "base", formats=("onnx",), log=lambda *a: None)
    target = next(t for t, info in manifest["tensors"].items() if info.get("folded_batchnorm"))
    state = {k: v.clone() for k, v in subject.model.state_dict().items()}
    flat = torch.tensor([0, 7, 33])
    step = torch.tensor([0.25, -0.5, 0.125])
    state[target].view(-1)[flat] += step
    save_file(state, str(tmp_path / "ft.safetensors"))
    report = pack_adapter(tmp_path / "ft.safetensors", tmp_path / "base", tmp_path / "ft.shira", value_coding="f32")
    assert report.ignored == []
    (t,) = read_adapter((tmp_path / "ft.shira").read_bytes()).tensors.values()
    assert t.target == target and t.indices.tolist() == flat.tolist()
    np.testing.assert_allclose(t.values, step.numpy(), rtol=1e-6)

    bn = manifest["tensors"][target]["folded_batchnorm"]["module"]
    state[f"{bn}.weight"][0] *= 1.5
    save_file(state, str(tmp_path / "ft2.safetensors"))
    report = pack_adapter(tmp_path / "ft2.safetensors", tmp_path / "base", tmp_path / "ft2.shira", value_coding="f32")
    assert report.ignored == [f"{bn} (BatchNorm folded into the base)"]
