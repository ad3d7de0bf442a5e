"""Resolve the MODEL argument of `shira-export model` into a torch module plus what export needs.

Three forms:
  * a built-in name from models/ (`tiny-llama`, `style-net`);
  * `package.module:factory` (+ `--weights FILE.safetensors`): the factory returns an nn.Module; its sample
    input comes from a method `example_inputs()` on the module, or from `--input NAME:1x3x64x64[:dtype]`;
  * a local Hugging Face model directory (config.json + weights): loaded as a causal LM, exported
    `input_ids -> logits`.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

import torch


class ModelSourceError(ValueError):
    pass


@dataclass
class ExportSubject:
    """The model PEFT adapts (`model`: parameter names in the manifest are its names) and how to export it."""

    source: str
    model: torch.nn.Module
    example_inputs: dict[str, torch.Tensor]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, tuple[str, int, int]]] = field(default_factory=dict)
    family: str = "module"  # "causal-lm", "image" (a built-in image net) or "module" (a factory's nn.Module)

    def export_module(self) -> torch.nn.Module:
        """What torch.onnx.export traces: the model itself, or `input_ids -> logits` for causal LMs."""
        if self.family == "causal-lm":
            from shira_models.tiny_llama import LogitsOnly

            return LogitsOnly(self.model).eval()
        return self.model


def parse_input_spec(spec: str) -> tuple[str, torch.Tensor]:
    """`NAME:1x3x64x64[:float32]` -> (name, a deterministic sample tensor)."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not parts[0]:
        raise ModelSourceError(f"--input {spec!r}: expected NAME:SHAPE[:DTYPE], e.g. image:1x3x64x64:float32")
    dims = parts[1].split("x")
    if not all(d.isdigit() and 0 < int(d) <= 1 << 20 for d in dims):
        raise ModelSourceError(f"--input {spec!r}: the shape must be positive integers joined by 'x', e.g. 1x3x64x64")
    shape = [int(d) for d in dims]
    dtype = getattr(torch, parts[2] if len(parts) == 3 else "float32", None)
    if not isinstance(dtype, torch.dtype):
        raise ModelSourceError(f"--input {spec!r}: {parts[2]!r} is not a torch dtype (float32, int64, ...)")
    g = torch.Generator().manual_seed(0)
    if dtype.is_floating_point:
        return parts[0], torch.rand(shape, generator=g).to(dtype)
    return parts[0], torch.randint(0, 2, shape, generator=g).to(dtype)


def resolve(model: str, weights: str | None = None, inputs: tuple[str, ...] = ()) -> ExportSubject:
    from shira_models import BUILTIN, get_spec

    if inputs and (model in BUILTIN or Path(model).is_dir()):
        raise ModelSourceError(f"--input applies to package.module:factory models only; {model} brings its own "
                               "sample input")
    if model in BUILTIN:
        spec = get_spec(model)
        m = spec.build()
        if weights:
            _load_weights(m, weights)
        return ExportSubject(f"builtin:{model}", m, spec.example_inputs(), spec.output_names, spec.dynamic_axes,
                             family=spec.family)
    if Path(model).is_dir():
        return _from_hf_dir(Path(model))
    if ":" in model:
        mod_name, _, fn_name = model.partition(":")
        try:
            factory = getattr(importlib.import_module(mod_name), fn_name)
        except (ImportError, AttributeError) as e:
            raise ModelSourceError(f"{model}: cannot import factory: {e}") from None
        m = factory()
        if not isinstance(m, torch.nn.Module):
            raise ModelSourceError(f"{model}: factory returned {type(m).__name__}, not a torch.nn.Module")
        if weights:
            _load_weights(m, weights)
        if inputs:
            ex = dict(parse_input_spec(s) for s in inputs)
        elif hasattr(m, "example_inputs"):
            ex = dict(m.example_inputs())
        else:
            raise ModelSourceError(f"{model}: give the sample input with --input NAME:SHAPE[:DTYPE] "
                                   "(or define example_inputs() on the module)")
        return ExportSubject(model, m.eval(), ex, ["output"])
    raise ModelSourceError(f"{model}: not a built-in model ({', '.join(BUILTIN)}), a local model directory, "
                           "or package.module:factory")


def _load_weights(m: torch.nn.Module, path: str) -> None:
    from safetensors.torch import load_file

    try:
        state = load_file(path)
    except Exception as e:  # noqa: BLE001 - safetensors raises several types
        raise ModelSourceError(f"{path}: cannot read weights: {e}") from None
    missing, unexpected = m.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelSourceError(f"{path}: weights do not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})")


def _from_hf_dir(path: Path) -> ExportSubject:
    from transformers import AutoConfig, AutoModelForCausalLM

    if not (path / "config.json").exists():
        raise ModelSourceError(f"{path}: no config.json; not a Hugging Face model directory")
    cfg = AutoConfig.from_pretrained(path, local_files_only=True)
    m = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, attn_implementation="eager",
                                             torch_dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (1, 16), generator=g)
    max_pos = getattr(cfg, "max_position_embeddings", 512)
    return ExportSubject(str(path), m, {"input_ids": ids}, ["logits"], {"input_ids": {1: ("seq", 1, max_pos)}},
                         family="causal-lm")
