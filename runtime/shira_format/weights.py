"""The patchable weights as an exported base stores them: one float32 view per placement.

One loader for everyone who reads them (the runtime's engines, `shira-pack` diffing a fine-tune against the
base, the integrity checks), so a placement is located, bounds-checked and typed in one place.
  onnxruntime  the tensors of weights.safetensors, by placement name
  executorch   float32 views of the program's bytes at each placement's offset
"""
from __future__ import annotations

import numpy as np

from .errors import ManifestError
from .safetensors_file import SafetensorsError, read_file


def program_views(manifest, memory: np.ndarray, source, prepacked: bool = False) -> dict[str, np.ndarray]:
    """Placement name -> flat float32 view into `memory` (the uint8 bytes of an ExecuTorch program), for the
    patchable program, or with `prepacked` for the prepacked one; a quantized placement's stored bytes (uint8).
    Views write through."""
    out = {}
    for info in manifest.tensors.values():
        places = (info.prepacked_placements if prepacked else info.placements).get("executorch", ())
        for p in places:
            n = 4 * int(np.prod(p.shape)) if p.quant is None else p.quant.stored_bytes(*p.shape)
            if p.offset < 0 or p.offset + n > memory.size:
                raise ManifestError(f"{source}: weight {info.name} at byte {p.offset} (+{n}) lies outside the "
                                    f"{memory.size}-byte program (truncated file?)")
            view = memory[p.offset : p.offset + n]
            out[p.name] = view if p.quant is not None else view.view(np.float32)
    return out


def program_scales(manifest, memory: np.ndarray, source) -> dict[str, np.ndarray]:
    """Quantized ExecuTorch placement name -> its scales as float32 [N * K/block] (decoded copies: a patch never
    changes a scale), checked finite and positive."""
    from .quant import decode_scales

    out = {}
    for info in manifest.tensors.values():
        for p in info.placements.get("executorch", ()):
            if p.quant is None:
                continue
            q = p.quant
            n = q.stored_scales_bytes(*p.shape)
            if q.scales_offset + n > memory.size:
                raise ManifestError(f"{source}: scales of {info.name} at byte {q.scales_offset} (+{n}) lie outside "
                                    f"the {memory.size}-byte program (truncated file?)")
            s = decode_scales(memory[q.scales_offset : q.scales_offset + n], q, *p.shape)
            if not (np.all(np.isfinite(s)) and np.all(s > 0)):
                raise ManifestError(f"{source}: the scales of {info.name} at byte {q.scales_offset} are not all "
                                    "finite and positive")
            out[p.name] = s
    return out


def open_weights(path, writable: bool = False):
    """weights.safetensors, read whole (with `writable`, one owned, writable copy: its arrays then ARE the
    engine's weights). Errors name the file."""
    try:
        return read_file(path, writable=writable)
    except SafetensorsError as e:
        raise ManifestError(str(e)) from None
    except OSError as e:
        raise ManifestError(f"{path}: cannot read: {e.strerror}") from None


def _stored_form(p) -> tuple[np.dtype, tuple[int, ...]]:
    """The dtype and shape a placement's tensor has in weights.safetensors."""
    if p.quant is None:
        return np.dtype(np.float32), tuple(p.shape)
    return np.dtype(np.uint8), p.quant.storage_shape(*p.shape)


def safetensors_views(manifest, st, path) -> dict[str, np.ndarray]:
    """Placement name -> flat view into `st` (weights.safetensors as open_weights read it): float32, or the
    stored bytes (uint8) of a quantized placement (quant.py)."""
    out = {}
    for info in manifest.tensors.values():
        for p in info.placements.get("onnxruntime", ()):
            if p.name not in st.tensors:
                raise ManifestError(f"{path}: no buffer {p.name!r} for {info.name}")
            arr = st.array(p.name)
            dtype, shape = _stored_form(p)
            if arr.shape != shape or arr.dtype != dtype:
                raise ManifestError(f"{path}: buffer {p.name!r} is {arr.dtype}{list(arr.shape)}, manifest says "
                                    f"{dtype}{list(shape)}")
            out[p.name] = arr.reshape(-1)
    return out


def quant_scales(manifest, st, path) -> dict[str, np.ndarray]:
    """Quantized placement name -> its scales (flat float32 view into `st`), checked against the weight's shape."""
    out = {}
    for info in manifest.tensors.values():
        for p in info.placements.get("onnxruntime", ()):
            if p.quant is None:
                continue
            q = p.quant
            if q.scales not in st.tensors:
                raise ManifestError(f"{path}: no scales {q.scales!r} for {info.name}")
            arr = st.array(q.scales)
            want = q.scales_count(*p.shape)
            if arr.dtype != np.float32 or arr.size != want:
                raise ManifestError(f"{path}: scales {q.scales!r} are {arr.dtype}{list(arr.shape)}, {info.name} "
                                    f"needs {want} float32")
            s = arr.reshape(-1)
            if not (np.all(np.isfinite(s)) and np.all(s > 0)):
                raise ManifestError(f"{path}: scales {q.scales!r} of {info.name} are not all finite and positive")
            out[p.name] = s
    return out


def stored_weights(manifest, runtime: str) -> tuple[dict[str, np.ndarray], object]:
    """Read-only: (placement name -> flat float32 array, the file they came from) for `runtime`'s patchable engine."""
    files = manifest.files_of(runtime)
    if runtime == "onnxruntime":
        path = manifest.file(files.weights)
        return safetensors_views(manifest, open_weights(path), path), path
    path = manifest.file(files.patchable)
    try:
        memory = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    except OSError as e:
        raise ManifestError(f"{path}: cannot read: {e.strerror}") from None
    return program_views(manifest, memory, path), path


def quantized_placements(manifest) -> dict[str, tuple]:
    """Read-only: target -> (its first quantized placement, stored bytes (uint8, flat), scales (float32 [N*K/block]))
    for a quantized base: ONNX Runtime's where the base has both runtimes (their integers can differ: ExecuTorch's
    int4 scales are bfloat16), else ExecuTorch's. Empty for a float base."""
    runtime = "onnxruntime" if "onnxruntime" in manifest.runtimes else "executorch"
    if not any(p.quant is not None for _, p in manifest.placements(runtime)):
        return {}
    if runtime == "onnxruntime":
        path = manifest.file(manifest.files_of(runtime).weights)
        st = open_weights(path)
        stored, scales = safetensors_views(manifest, st, path), quant_scales(manifest, st, path)
    else:
        stored, path = stored_weights(manifest, runtime)
        memory = np.frombuffer(path.read_bytes(), dtype=np.uint8)
        scales = program_scales(manifest, memory, path)
    out = {}
    for target, info in manifest.tensors.items():
        p = next((p for p in info.placements.get(runtime, ()) if p.quant is not None), None)
        if p is not None:
            out[target] = (p, stored[p.name], scales[p.name])
    return out


def torch_layout(manifest, runtime: str, buffers: dict[str, np.ndarray], target: str) -> np.ndarray:
    """A target weight in torch layout (a view where the layout allows), from its first placement."""
    info = manifest.tensors[target]
    p = info.placements[runtime][0]
    return p.to_torch_layout(buffers[p.name], info.shape)
