"""The architecture matrix (tests/arch_matrix.py): real Hugging Face and diffusers architectures through export,
pack, switch and reset on both runtimes. A representative subset runs by default (a conv net with BatchNorm and
depthwise convs, a GPT-2 with Conv1D and tied embeddings, an encoder with a pooler it does not export); the
rest are `long`."""
from __future__ import annotations

import pytest
from shira_models.architectures import ARCHITECTURES

from .arch_matrix import check_architecture

DEFAULT = ("mobilenetv2", "gpt2", "bert")


@pytest.mark.slow
@pytest.mark.parametrize("name", [n if n in DEFAULT else pytest.param(n, marks=pytest.mark.long)
                                  for n in ARCHITECTURES])
def test_architecture_exports_patches_and_resets(name, tmp_path):
    row = check_architecture(name, tmp_path)
    assert row["patchable"] > 0
    assert set(row["rel_error"]) == {"onnxruntime", "executorch"}


def test_the_matrix_covers_the_required_architectures():
    required = {"llama", "qwen2", "mistral", "gemma", "phi3", "gpt2", "bert", "distilbert", "t5-encoder", "vit",
                "convnext", "resnet", "mobilenetv2", "unet"}
    assert required <= set(ARCHITECTURES)
