"""A full fine-tune as a source: fine-tuned minus base, BatchNorm changes folded into the conv before them,
and the changed weights the base cannot patch found by scanning the ONNX export's initializers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from shira_format.adapter import SparseTensor

from .binding import PackError, base_weights, channel_scale_of, check_belongs, folded_delta, sparsify
from .peft_source import PEFT_PREFIX, load_safetensors


def finetune_deltas(src: Path, manifest, density: float | None) -> tuple[list[SparseTensor], float, list[str], bool]:
    files = sorted(src.glob("*.safetensors")) if src.is_dir() else [src]
    if not files:
        raise PackError(f"{src}: no .safetensors files")
    state = {}
    for f in files:
        state.update({k.removeprefix(PEFT_PREFIX): v for k, v in load_safetensors(f).items()})
    present = [t for t in manifest.tensors if t in state]
    if not present:
        check_belongs(manifest, [k for k in state if k.endswith(".weight")], str(src))
        raise PackError(f"{src}: none of its tensors is a patchable weight of base {manifest.root}")
    if any(p.quant is not None for t in present for ps in manifest.tensors[t].placements.values() for p in ps):
        raise PackError(f"{src}: a full fine-tune is diffed against the float32 weights it was tuned from, which "
                        f"the quantized base {manifest.root} no longer holds: pack it against the float32 export of "
                        "the same model (the blob then loads on the quantized base too: one fingerprint)")
    base = base_weights(manifest, present)
    deltas, lost, total = [], 0.0, 0.0
    for t in present:
        ft = state[t]
        if tuple(ft.shape) != manifest.tensors[t].shape:
            raise PackError(f"{src}: tensor {t}: shape {list(ft.shape)} does not match the base's "
                            f"{list(manifest.tensors[t].shape)}")
        g = channel_scale_of(manifest, t)
        d = ft.astype(np.float32) - base[t] if g is None else folded_delta(ft, base[t], g)
        if not np.all(np.isfinite(d)):
            raise PackError(f"{src}: tensor {t}: non-finite values")
        sd, l, tt = sparsify(t, ft.shape, d, density)
        if sd.indices.size:
            deltas.append(sd)
        lost, total = lost + l, total + tt
    if not deltas:
        raise PackError(f"{src}: identical to the base: nothing to pack")
    seen = _initializer_digests(manifest)  # model.onnx read once, for both checks
    bn_changed, bn_names = changed_batchnorm(manifest, state, present, seen)
    others = sorted(k for k in state if k not in manifest.tensors and k.endswith(".weight") and k not in bn_names)
    changed = changed_unpatchable(state, others, seen)
    ignored = (others if changed is None else changed) + [f"{m} (BatchNorm folded into the base)" for m in bn_changed]
    return deltas, float(np.sqrt(lost / total)) if total else 0.0, ignored, changed is not None


def changed_batchnorm(manifest, state: dict[str, np.ndarray], targets, seen: set[bytes] | None
                      ) -> tuple[list[str], set[str]]:
    """The fine-tune's BatchNorms that were folded into base weights: -> (those whose folded scale or bias
    differs from the base's: the adapter cannot carry that change, names of every such BatchNorm parameter).
    The folded bias is a plain initializer of model.onnx, looked up by value in `seen` (_initializer_digests;
    None without an ONNX artifact: then only the scale is compared)."""
    from ..export.fold import folded

    changed, names = [], set()
    for t in targets:
        fbn = manifest.tensors[t].folded_batchnorm
        if not fbn:
            continue
        m = fbn["module"]
        keys = {k: f"{m}.{k}" for k in ("weight", "bias", "running_mean", "running_var")}
        names |= set(keys.values()) | {f"{m}.num_batches_tracked"}
        if not all(k in state for k in keys.values()):
            continue  # the fine-tune does not carry this BatchNorm: nothing changed it
        conv_bias = state.get(t.removesuffix(".weight") + ".bias")
        g, bias = folded(*(np.asarray(state[keys[k]], np.float32) for k in ("weight", "bias", "running_mean",
                                                                                  "running_var")), fbn["eps"], conv_bias)
        if not np.array_equal(g, channel_scale_of(manifest, t)) or (seen is not None and _digest(bias) not in seen):
            changed.append(m)
    return changed, names


def changed_unpatchable(state: dict[str, np.ndarray], names: list[str], seen: set[bytes] | None) -> list[str] | None:
    """Which of `names` (fine-tune weights the base cannot patch) differ from the base. The base keeps them as
    ONNX initializers, possibly transposed (MatMul weights) and renamed, so each is looked up by value in `seen`
    (_initializer_digests). None when the base has no ONNX artifact to compare with."""
    if seen is None:
        return None
    changed = []
    for n in names:
        a = np.asarray(state[n], dtype=np.float32)
        if _digest(a) not in seen and (a.ndim != 2 or _digest(a.T) not in seen):
            changed.append(n)
    return changed


def _digest(a: np.ndarray) -> bytes:
    import hashlib

    return hashlib.sha1(np.ascontiguousarray(a, dtype=np.float32).tobytes()).digest()


def _initializer_digests(manifest) -> set[bytes] | None:
    """SHA-1s of every float initializer of the base's model.onnx (None without an ONNX artifact)."""
    if "onnxruntime" not in manifest.runtimes:
        return None
    import onnx
    from onnx import numpy_helper

    path = manifest.file(manifest.files_of("onnxruntime").patchable)
    try:
        proto = onnx.load(str(path))
    except Exception as e:  # noqa: BLE001 - protobuf and onnx raise many types
        raise PackError(f"{path}: cannot read the base model: {str(e)[:200]}") from None
    return {_digest(numpy_helper.to_array(t)) for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
