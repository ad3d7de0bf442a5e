"""The table of built-in models, by name."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .names import BUILTIN_NAMES


@dataclass
class ModelSpec:
    """Everything the toolchain needs to know about a model to export and adapt it."""

    name: str
    family: str  # "causal-lm" (input_ids -> logits, LM tasks) or "image" ([N,3,H,W] -> [N,3,H,W], image tasks)
    build: Callable[[], torch.nn.Module]  # returns the module in eval mode, deterministic weights
    example_inputs: Callable[[], dict[str, torch.Tensor]]  # ordered: the forward() argument order
    output_names: list[str]
    # input name -> {axis: (dim name, min, max)}: axes left dynamic in the export
    dynamic_axes: dict[str, dict[int, tuple[str, int, int]]] = field(default_factory=dict)
    # PEFT `target_modules` for the demo's SHiRA adapters
    peft_targets: list[str] = field(default_factory=list)


def _tiny_llama() -> ModelSpec:
    from . import tiny_llama

    return ModelSpec(
        name="tiny-llama",
        family="causal-lm",
        build=tiny_llama.build,
        example_inputs=tiny_llama.example_inputs,
        output_names=["logits"],
        dynamic_axes={"input_ids": {1: ("seq", 1, tiny_llama.MAX_SEQ)}},
        peft_targets=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )


def _style_net() -> ModelSpec:
    from . import style_net

    return ModelSpec(
        name="style-net",
        family="image",
        build=style_net.build,
        example_inputs=style_net.example_inputs,
        output_names=["styled"],
        dynamic_axes={"image": {2: ("height", 16, 1024), 3: ("width", 16, 1024)}},
        peft_targets=["mix.0", "mix.2"],
    )


BUILTIN: dict[str, Callable[[], ModelSpec]] = {"tiny-llama": _tiny_llama, "style-net": _style_net}
assert tuple(BUILTIN) == BUILTIN_NAMES, "models/names.py lists the built-in models"


def get_spec(name: str) -> ModelSpec:
    if name not in BUILTIN:
        raise KeyError(f"unknown built-in model {name!r}; built-ins: {', '.join(sorted(BUILTIN))}")
    return BUILTIN[name]()
