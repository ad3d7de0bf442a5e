"""Resolve the MODEL argument of `shira-export model` into a torch module plus what export needs.

Three forms:
  * a built-in name from models/ (`tiny-llama`, `style-net`);
  * `package.module:factory` (+ `--weights FILE.safetensors`): the factory returns an nn.Module; its sample
    input comes from a method `example_inputs()` on the module, or from `--input NAME:1x3x64x64[:dtype]`;
  * a local Hugging Face model directory (config.json + weights, as save_pretrained writes it): loaded as the
    class its config names (or the class of `--hf-task`), strictly: a missing or unexpected weight is refused.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from shira_format.errors import first_line

from .hf_tasks import TASKS


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
    family: str = "module"  # "causal-lm", "image" (a built-in image net) or "module" (any other model)
    task: str | None = None  # a model directory's task (TASKS), None for built-ins and factories
    call_extra: dict = field(default_factory=dict)  # fixed keyword arguments of every call (use_cache=False)
    by_keyword: bool = True  # inputs passed as keywords (HF models); False: positionally (factories)
    output_fields: list[str] | None = None  # the ModelOutput fields behind output_names, where they differ
    # another traced form of the model (export.kv_cache): model -> the module the exporters trace
    wrap: Callable[[torch.nn.Module], torch.nn.Module] | None = None
    generation: dict | None = None  # the manifest's `generation` entry, for a causal LM exported with its cache

    def export_module(self) -> torch.nn.Module:
        """What the exporters trace: positional tensors in, the named output tensors out."""
        if self.wrap is not None:
            return self.wrap(self.model).eval()
        return NamedOutputs(self.model, list(self.example_inputs) if self.by_keyword else [],
                            self.output_fields or self.output_names, self.call_extra).eval()

    def dynamic_shapes(self, min_size: int = 1):
        """torch.export's dynamic_shapes for export_module() (whose forward takes *args), or None."""
        if not self.dynamic_axes:
            return None
        return (tuple({ax: torch.export.Dim(d, min=max(lo, min_size), max=hi)
                       for ax, (d, lo, hi) in self.dynamic_axes.get(n, {}).items()} or None
                      for n in self.example_inputs),)


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


def resolve(model: str, weights: str | None = None, inputs: tuple[str, ...] = (), task: str | None = None
            ) -> ExportSubject:
    from shira_models import BUILTIN, get_spec

    if task is not None and not Path(model).is_dir():
        raise ModelSourceError(f"--hf-task applies to Hugging Face model directories only; {model} is not one")

    if inputs and (model in BUILTIN or Path(model).is_dir()):
        raise ModelSourceError(f"--input applies to package.module:factory models only; {model} brings its own "
                               "sample input")
    if model in BUILTIN:
        spec = get_spec(model)
        m = spec.build()
        if weights:
            _load_weights(m, weights)
        extra = {"use_cache": False} if spec.family == "causal-lm" else {}
        return ExportSubject(f"builtin:{model}", m, spec.example_inputs(), spec.output_names, spec.dynamic_axes,
                             family=spec.family, call_extra=extra, by_keyword=spec.family == "causal-lm")
    if Path(model).is_dir():
        if weights:
            raise ModelSourceError(f"--weights applies to built-in and factory models; {model} brings its own")
        return _from_hf_dir(Path(model), task)
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
        m.eval()
        try:  # one forward on the sample: its outputs get their names, and a bad model fails before the export
            with torch.no_grad():
                out = m(*ex.values())
        except Exception as e:  # noqa: BLE001 - any error of the user's model
            raise ModelSourceError(f"{model}: the model fails on its sample input: {_named_line(e)}") from None
        return ExportSubject(model, m, ex, output_names_of(out), by_keyword=False)
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


# ---- Hugging Face model directories -------------------------------------------------------------------------
class NamedOutputs(torch.nn.Module):
    """Positional tensors in, the chosen output tensors out: what export traces for any model whose forward
    takes keyword arguments and returns a ModelOutput, a dict, a tuple or a tensor."""

    def __init__(self, model: torch.nn.Module, input_names: list[str], output_names: list[str],
                 extra: dict | None = None):
        """`input_names` empty: the inputs are passed positionally."""
        super().__init__()
        self.model, self.input_names, self.output_names = model, list(input_names), list(output_names)
        self.extra = dict(extra or {})

    def forward(self, *args):
        if self.input_names:
            out = self.model(**dict(zip(self.input_names, args)), **self.extra)
        else:
            out = self.model(*args, **self.extra)
        picked = [pick_output(out, n, i) for i, n in enumerate(self.output_names)]
        return picked[0] if len(picked) == 1 else tuple(picked)


def pick_output(out, name: str, i: int) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):  # ModelOutput and diffusers' BaseOutput are dicts
        return out[name]
    return out[i]


def output_names_of(out) -> list[str]:
    """The tensor outputs of one forward call, named: ModelOutput/dict keys, `output_<i>` for tuples."""
    if isinstance(out, torch.Tensor):
        return ["output"]
    if isinstance(out, dict):
        return [k for k, v in out.items() if isinstance(v, torch.Tensor)]
    if isinstance(out, (tuple, list)) and all(isinstance(v, torch.Tensor) for v in out):
        return [f"output_{i}" for i in range(len(out))]
    raise ModelSourceError(f"the model returns {type(out).__name__}, which holds non-tensor values; return "
                           "tensors, a tuple of tensors or a ModelOutput")


def task_of(path: Path, raw_config: dict) -> str:
    """The task a model directory was saved for, from the class named in config.json."""
    if raw_config.get("_class_name") == "UNet2DConditionModel":
        return "unet"
    archs = raw_config.get("architectures") or []
    if not archs:
        raise ModelSourceError(f"{path}/config.json names no architecture; give --hf-task ({', '.join(TASKS)})")
    from transformers.models.auto import modeling_auto

    arch = archs[0]
    for task, (mapping, _, _, _) in TASKS.items():
        if mapping is None:
            continue
        names = getattr(modeling_auto, mapping).values()
        if any(arch == n or (isinstance(n, tuple) and arch in n) for n in names):
            if task == "feature-extraction" and _is_vision(raw_config):
                return "image-feature-extraction"
            return task
    raise ModelSourceError(f"{path}: architecture {arch} is not one of the tasks shira-export knows; give "
                           f"--hf-task ({', '.join(TASKS)})")


def _is_vision(raw_config: dict) -> bool:
    return "num_channels" in raw_config or "image_size" in raw_config and "vocab_size" not in raw_config


def _load_strict(path: Path, task: str) -> torch.nn.Module:
    """The task's class loaded from the directory; refused in one line if any weight is missing, unexpected or
    of the wrong shape (from_pretrained would initialise those randomly and the export would 'succeed')."""
    auto_name = TASKS[task].loader
    if task == "unet":
        import diffusers

        cls, kw = getattr(diffusers, auto_name), {}
    else:
        import transformers

        cls, kw = getattr(transformers, auto_name), {"attn_implementation": "eager", "dtype": torch.float32}
    try:
        m, info = cls.from_pretrained(path, local_files_only=True, output_loading_info=True, **kw)
    except (ValueError, OSError, KeyError) as e:
        raise ModelSourceError(f"{path}: cannot load as {task}: {_named_line(e)}") from None
    problems = [(what, info.get(key) or []) for what, key in (("missing", "missing_keys"),
                                                              ("unexpected", "unexpected_keys"),
                                                              ("of the wrong shape", "mismatched_keys"))]
    problems = [(what, sorted(str(k) for k in keys)) for what, keys in problems if keys]
    if problems:
        what, keys = problems[0]
        raise ModelSourceError(f"{path}: {len(keys)} weight(s) {what} for {type(m).__name__} ({task}), e.g. "
                               f"{keys[0]}: the directory was saved for another task; give the right --hf-task")
    return m.eval()


def _named_line(e: BaseException) -> str:
    """A library's exception as one line that keeps its type (torch and transformers raise bare ValueErrors)."""
    return f"{type(e).__name__}: {first_line(e)}"


def _from_hf_dir(path: Path, task: str | None = None) -> ExportSubject:
    import json

    cfg_path = path / "config.json"
    if not cfg_path.exists():
        raise ModelSourceError(f"{path}: no config.json; not a Hugging Face model directory")
    try:
        raw = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise ModelSourceError(f"{cfg_path}: not readable JSON: {e}") from None
    if task is not None and task not in TASKS:
        raise ModelSourceError(f"--hf-task {task!r}: known tasks are {', '.join(TASKS)}")
    task = task or task_of(path, raw)
    m = _load_strict(path, task)
    kind, outputs = TASKS[task].inputs, list(TASKS[task].outputs)
    cfg = m.config
    g = torch.Generator().manual_seed(0)
    get = (lambda k, d: cfg.get(k, d)) if isinstance(cfg, dict) else (lambda k, d: getattr(cfg, k, d))
    max_pos = get("max_position_embeddings", None) or get("n_positions", None) or 512
    extra: dict = {}
    if kind in ("causal", "text"):
        ids = torch.randint(0, get("vocab_size", 2), (1, 16), generator=g)
        inputs = {"input_ids": ids}
        dynamic = {"input_ids": {1: ("seq", 1, max_pos)}}
        if kind == "text":
            inputs["attention_mask"] = torch.ones_like(ids)
            dynamic["attention_mask"] = {1: ("seq", 1, max_pos)}
        if kind == "causal":
            extra["use_cache"] = False
    elif kind == "image":
        size = get("image_size", 64)
        size = size if isinstance(size, int) else int(size[0])
        inputs = {"pixel_values": torch.rand(1, get("num_channels", 3), size, size, generator=g)}
        dynamic = {}
    else:  # unet
        size = get("sample_size", 16)
        inputs = {"sample": torch.randn(1, get("in_channels", 4), size, size, generator=g),
                  "timestep": torch.tensor([10], dtype=torch.int64),
                  "encoder_hidden_states": torch.randn(1, 8, get("cross_attention_dim", 32), generator=g)}
        dynamic = {}
    family = {"causal": "causal-lm"}.get(kind, "module")
    names = [f if f not in inputs else f"{f}_out" for f in outputs]  # ONNX names are unique across inputs/outputs
    return ExportSubject(str(path), m, inputs, names, dynamic, family=family, task=task, call_extra=extra,
                         output_fields=outputs)
