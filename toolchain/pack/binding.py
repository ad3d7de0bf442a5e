"""What binds a delta to one exported base: the names it targets, the base weights it is taken against,
the sparsification every dense source goes through, and the errors and report `shira-pack` gives."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from shira_format.adapter import SparseTensor
from shira_format.errors import ManifestError
from shira_format.weights import stored_weights, torch_layout


class PackError(ValueError):
    pass


@dataclass
class PackReport:
    name: str
    out: Path
    source_kind: str
    tensors: int
    nnz: int
    patchable_weights: int
    blob_bytes: int
    source_bytes: int
    value_coding: str
    index_codings: dict = field(default_factory=dict)  # coding -> number of tensors
    value_max_abs_error: float = 0.0  # introduced by the value coding
    sparsify_rel_error: float | None = None  # ||delta - kept|| / ||delta|| for LoRA / full fine-tune sources
    ignored: list = field(default_factory=list)  # full fine-tune weights that changed but the base cannot patch
    ignored_checked: bool = True  # False: no ONNX artifact to compare with, `ignored` lists every unpatchable one
    # a quantized base: {"entries", "clamped", "kept"}: what the base's scales let through (quantized_fit)
    quantized: dict | None = None

    @property
    def density(self) -> float:
        return self.nnz / max(self.patchable_weights, 1)


def target_name(manifest, module_or_param: str, where: str):
    target = module_or_param if module_or_param.endswith(".weight") else f"{module_or_param}.weight"
    info = manifest.tensors.get(target)
    if info is None:
        why = manifest.excluded.get(target)
        if why:
            raise PackError(f"{where}: not patchable in base {manifest.root} ({why})")
        if target in manifest.untargeted:
            raise PackError(f"{where}: not patchable in base {manifest.root}: the export's --targets left it out; "
                            "export again with --targets matching it")
        raise PackError(f"{where}: base {manifest.root} ({_model_name(manifest)}) has no such weight")
    return target, info


def _model_name(manifest) -> str:
    m = manifest.model
    return f"{m.get('class')} from {m.get('source')}" if m else "its model"


def check_belongs(manifest, names: list[str], source: str) -> None:
    """Refuse, in words that help, a checkpoint none of whose weights exists in the base: it was made for
    another model (re-exporting with other --targets cannot fix that)."""
    known = set(manifest.tensors) | set(manifest.excluded) | set(manifest.untargeted)
    targets = [n if n.endswith(".weight") else f"{n}.weight" for n in names]
    if targets and not any(t in known for t in targets):
        raise PackError(f"{source}: made for another model: none of its {len(targets)} weights (e.g. {targets[0]}) "
                        f"exists in base {manifest.root} ({_model_name(manifest)})")


def base_weights(manifest, targets) -> dict[str, np.ndarray]:
    """The base's weights in torch layout, read back from the exported files the way the runtime reads them (no
    torch model needed) and checked against the export's checksums: a diff against damaged weights would pack a
    wrong adapter."""
    from shira_runtime.integrity import check_placements

    runtime = "onnxruntime" if "onnxruntime" in manifest.runtimes else "executorch"
    try:
        buffers, path = stored_weights(manifest, runtime)
    except ManifestError as e:
        raise PackError(str(e)) from None
    check_placements(manifest, runtime, buffers, path)
    return {t: np.ascontiguousarray(torch_layout(manifest, runtime, buffers, t)) for t in targets}


def channel_scale_of(manifest, target: str) -> np.ndarray | None:
    p = next(iter(manifest.tensors[target].placements.values()))[0]
    return p.scale_array()


def folded_delta(ft: np.ndarray, stored: np.ndarray, g: np.ndarray) -> np.ndarray:
    """A fine-tuned weight against a folded base (stored = fl32(W * g), MANIFEST.md "Folded weights"): fold the
    fine-tune the same way, subtract, unfold. An entry the fine-tune left alone folds to the very same float32,
    so its delta is exactly 0 and stays out of the adapter."""
    gb = g.reshape(-1, *([1] * (ft.ndim - 1)))
    d = (ft.astype(np.float32) * gb).astype(np.float32) - stored
    return (d.astype(np.float64) / gb).astype(np.float32)


def sparsify(target: str, shape, delta: np.ndarray, density: float | None) -> tuple[SparseTensor, float, float]:
    """Keep the largest nonzero |delta| (k = round(density * numel), at least 1), or every nonzero without density.
    -> (sparse delta, squared norm kept out, squared norm of delta)."""
    flat = delta.reshape(-1).astype(np.float32)
    idx = np.flatnonzero(flat)  # only changed entries are candidates
    if density is not None:
        k = min(idx.size, max(1, int(round(density * flat.size))))
        idx = np.sort(idx[np.argpartition(np.abs(flat[idx]), idx.size - k)[idx.size - k:]]) if k else idx[:0]
    dropped = flat.astype(np.float64)
    dropped[idx] = 0.0
    return (SparseTensor(target, tuple(shape), idx.astype(np.int64), flat[idx]), float(np.sum(dropped ** 2)),
            float(np.sum(flat.astype(np.float64) ** 2)))
