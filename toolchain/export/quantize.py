"""`shira-export model ... --quantize int8|int4`: a weight-only quantized base for ONNX Runtime.

Every MatMul whose weight B [K, N] is a patchable graph input or a float constant becomes ONNX Runtime's
MatMulNBits over the weight's integers (docs/QUANTIZATION.md):
  int8  symmetric, one scale per output channel (repeated in each block of 32: MatMulNBits' scale layout)
  int4  symmetric, one scale per block of 32 inputs
Why MatMulNBits and not QDQ (DequantizeLinear -> MatMul): ORT's CPU graph optimizer rewrites exactly that QDQ
pair into MatMulNBits itself (int8 per channel and int4 blocked alike, accuracy level 4), so both run the same
kernel; writing MatMulNBits directly keeps one form in every engine and fixes its settings at export.
accuracy_level 4 computes in int8 (the activations are quantized per block at run time): a probe of one
1024x4096 node at decode was 3.7x faster than level 0 for int4 and ~90x for int8 (docs/QUANTIZATION.md).

Weights that are not B of a MatMul (Gemm, Conv, Gather), or whose K is not a multiple of the block, stay float32;
the manifest lists them under quantization.skipped with the reason.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper
from shira_format.quant import Quant, quantize

MODES = {"int8": (8, True), "int4": (4, False)}
BLOCK = 32
ACCURACY_LEVEL = 4
# the patchable weights' scales cover this many times their largest entry, so adapters trained on the float base
# fit: measured on tiny-llama (shira-bench --quantized), int8 at 4x keeps bits/byte (2.500 against 2.497 at 1x)
# and its task adapters' accuracy, where 1x clamps half their entries; int4 pays for every bit of headroom in
# the base's own error (a probe on tiny-llama: bits/byte 2.51 -> 2.64 at 2x), so it has none
DEFAULT_HEADROOM = {"int8": 4.0, "int4": 1.0}
MIN_CONSTANT_ELEMENTS = 4096  # smaller float constants feeding MatMul stay float (not worth a kernel change)


def _consumers(proto) -> dict[str, list]:
    out = defaultdict(list)
    for node in proto.graph.node:
        for i, name in enumerate(node.input):
            out[name].append((node, i))
    return out


def _matmul_b_only(uses) -> bool:
    return bool(uses) and all(n.op_type == "MatMul" and n.domain in ("", "ai.onnx") and i == 1 for n, i in uses)


def quantize_graph(proto: onnx.ModelProto, mode: str, placements: dict[str, dict], arrays: dict[str, np.ndarray],
                   log=print, headroom: float | None = None, patchable_mode: str | None = None) -> dict:
    """Rewrite `proto` in place. `placements`: ONNX Runtime placement name (a graph input holding B) -> its
    manifest entry (updated in place: identity layout over the torch [N, K], `quant`); `arrays`: placement name
    -> its float array (replaced by the stored bytes; scales added). Returns the manifest's `quantization`."""
    const_bits, const_per_channel = MODES[mode]
    patch_mode = patchable_mode or mode
    headroom = DEFAULT_HEADROOM[patch_mode] if headroom is None else headroom
    patch_bits, patch_per_channel = MODES[patch_mode]
    uses = _consumers(proto)
    inits = {t.name: t for t in proto.graph.initializer}
    skipped: dict[str, str] = {}
    done_patchable = done_constant = 0
    q_bytes = f_bytes = 0

    def rewrite(name: str, w_kn: np.ndarray, as_input: bool) -> None:
        nonlocal q_bytes, f_bytes
        k, n = w_kn.shape
        bits, per_channel = (patch_bits, patch_per_channel) if as_input else (const_bits, const_per_channel)
        # headroom for the patchable weights only: constants never take a delta
        stored, scales = quantize(np.ascontiguousarray(w_kn.T), bits, BLOCK, per_channel,
                                  headroom if as_input else 1.0)
        scales_name = f"{name}_scales"
        for node, _ in uses[name]:
            attrs = {"K": k, "N": n, "bits": bits, "block_size": BLOCK, "accuracy_level": ACCURACY_LEVEL}
            new = onnx.helper.make_node("MatMulNBits", [node.input[0], name, scales_name], list(node.output),
                                        name=(node.name or name) + "_nbits", domain="com.microsoft", **attrs)
            node.CopyFrom(new)
        if as_input:
            arrays[name], arrays[scales_name] = stored, scales
            for vi in proto.graph.input:
                if vi.name == name:
                    vi.CopyFrom(onnx.helper.make_tensor_value_info(name, TensorProto.UINT8, list(stored.shape)))
            proto.graph.input.append(onnx.helper.make_tensor_value_info(scales_name, TensorProto.FLOAT,
                                                                        list(scales.shape)))
        else:
            inits[name].CopyFrom(numpy_helper.from_array(stored, name))
            proto.graph.initializer.append(numpy_helper.from_array(scales, scales_name))
        q_bytes += stored.nbytes + scales.nbytes
        f_bytes += w_kn.nbytes

    for name, entry in placements.items():
        w = arrays[name]
        if "channel_scale" in entry:
            skipped[name] = "a folded weight (BatchNorm): its stored values carry a per-channel scale already"
        elif entry["layout"] != "transpose2d" or w.ndim != 2 or len(entry["torch_shape"]) != 2:
            skipped[name] = f"stored {entry['layout']} {list(w.shape)}: not a MatMul weight [K, N]"
        elif not _matmul_b_only(uses[name]):
            skipped[name] = "used by " + ", ".join(sorted({n.op_type for n, _ in uses[name]})) + ", not only MatMul"
        elif w.shape[0] % BLOCK:
            skipped[name] = f"K = {w.shape[0]} is not a multiple of the block ({BLOCK})"
        else:
            rewrite(name, w, as_input=True)
            entry.update(layout="identity", shape=list(entry["torch_shape"]),
                         quant={"bits": patch_bits, "block": BLOCK, "scales": f"{name}_scales",
                                "per_channel": patch_per_channel})
            done_patchable += 1
    for name, t in list(inits.items()):
        if t.data_type != TensorProto.FLOAT or len(t.dims) != 2 or not _matmul_b_only(uses[name]):
            continue
        if t.dims[0] % BLOCK or t.dims[0] * t.dims[1] < MIN_CONSTANT_ELEMENTS:
            skipped[name] = f"constant [{t.dims[0]}, {t.dims[1]}]: K not a multiple of {BLOCK} or too small"
            continue
        rewrite(name, numpy_helper.to_array(t), as_input=False)
        done_constant += 1
    if not any(o.domain == "com.microsoft" for o in proto.opset_import):
        proto.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    log(f"  quantized {done_patchable} patchable MatMul weights to {patch_mode} (headroom {headroom:g}) and "
        f"{done_constant} constant ones to {mode} (MatMulNBits, block {BLOCK}): "
        f"{f_bytes / 1e6:.1f} MB float32 -> {q_bytes / 1e6:.1f} MB with scales"
        + (f"; {len(skipped)} left float32" if skipped else ""))
    return {"mode": mode, "patchable_mode": patch_mode, "block": BLOCK, "kernel": "MatMulNBits",
            "accuracy_level": ACCURACY_LEVEL, "headroom": headroom, "patchable": done_patchable, "constants": done_constant,
            "skipped": skipped}


def quant_of(entry: dict) -> Quant | None:
    q = entry.get("quant")
    if q is None:
        return None
    return Quant(q["bits"], q["block"], q.get("scales"), q.get("per_channel", False), q.get("signed", False),
                 q.get("scales_offset"), q.get("scales_dtype", "float32"))
