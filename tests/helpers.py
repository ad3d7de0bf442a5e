"""Shared test helpers: PEFT-layout checkpoints written directly (for layers PEFT's SHiRA cannot adapt, such
as Conv2d), and torch references computed by patching the torch weights by hand."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch


def write_peft_layout_checkpoint(out_dir, modules: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
                                 fan_in_fan_out: bool = False, index_dtype=np.int32, extra_config=None) -> Path:
    """The exact layout peft.ShiraConfig.save_pretrained writes, for arbitrary modules (rows, cols, values)."""
    from safetensors.numpy import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for module, (rows, cols, vals) in modules.items():
        tensors[f"base_model.model.{module}.shira_indices"] = np.stack([rows, cols]).astype(index_dtype)
        tensors[f"base_model.model.{module}.shira_weight"] = np.asarray(vals, dtype=np.float32)
    save_file(tensors, str(out_dir / "adapter_model.safetensors"))
    (out_dir / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "SHIRA", "r": 1, "mask_type": "random", "fan_in_fan_out": fan_in_fan_out,
         "target_modules": sorted(modules), **(extra_config or {})}))
    return out_dir


def random_sparse(shape, density: float, seed: int, scale: float = 0.05):
    """Random (rows, cols, values) over a weight viewed as [out, prod(rest)]."""
    rng = np.random.default_rng(seed)
    out_f, in_f = shape[0], int(np.prod(shape[1:]))
    nnz = max(1, int(out_f * in_f * density))
    flat = rng.choice(out_f * in_f, size=nnz, replace=False)
    return flat // in_f, flat % in_f, rng.normal(0, scale, nnz).astype(np.float32)


def patched_copy(model: torch.nn.Module, modules: dict, scale: float = 1.0) -> torch.nn.Module:
    """A copy of `model` with W.view(out, -1)[r, c] += scale * v for each module."""
    m = copy.deepcopy(model)
    params = dict(m.named_parameters())
    with torch.no_grad():
        for module, (rows, cols, vals) in modules.items():
            w = params[f"{module}.weight"]
            w2 = w.view(w.shape[0], -1)
            w2[torch.from_numpy(np.asarray(rows)), torch.from_numpy(np.asarray(cols))] += (
                torch.from_numpy(np.asarray(vals)) * scale)
    return m


def snapshot(session) -> dict[str, bytes]:
    return {n: b.tobytes() for n, b in session.live_buffers().items()}
