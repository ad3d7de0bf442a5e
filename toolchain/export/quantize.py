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

Convolutions (Conv, any groups) are quantized at 8 bits per output channel in both modes: their weight [N, C, kh,
kw] is held as the matrix [N, C*kh*kw] of integers and a DequantizeLinear (per axis 0) feeding the Conv turns it
back into float32 weights at each run; activations stay float32. Why 8 bits even under --quantize int4: a 4-bit
conv has no kernel in ONNX Runtime's CPU provider or XNNPACK, and a conv's few, reused weights are where 4 bits
cost most; int4 blocks are for the large GEMM weights of transformers. Why DequantizeLinear and not ConvInteger
/QLinearConv: those quantize the activations too (dynamically or with calibration), which changes what the base
computes, while here only storage changes. ORT keeps a DequantizeLinear over an initializer as it is (it does not
fold it into float32), so the integers stay what the engine reads. The cost: the Conv takes its weight as a
computed tensor and runs ORT's plain NCHW kernel instead of the NCHWc one it prepacks for constant weights
(a probe of one 48->48 3x3 conv on 128x128, 2 threads: 4.0 ms against 3.5 ms); shira-bench --quantized measures
the style net whole.

The block is 32 inputs, or 16 where K is not a multiple of 32 (MatMulNBits accepts both; a per-channel scale is
repeated in every block anyway). Weights of other operators (Gemm, Gather), folded weights, and weights whose K
is not a multiple of 16 stay float32; the manifest lists them under quantization.skipped with the reason.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper
from shira_format.quant import Quant, matrix_shape, quantize

MODES = {"int8": (8, True), "int4": (4, False)}
BLOCK = 32
SMALL_BLOCK = 16  # where K is not a multiple of BLOCK (the style net's 48-wide Linear, its 48x3x3 convs)
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


def _conv_w_only(uses) -> bool:
    return bool(uses) and all(n.op_type == "Conv" and n.domain in ("", "ai.onnx") and i == 1 for n, i in uses)


def block_for(k: int) -> int | None:
    """The block for K inputs: 32, else 16, else None (the weight stays float32)."""
    return BLOCK if k % BLOCK == 0 else SMALL_BLOCK if k % SMALL_BLOCK == 0 else None


class _Rewriter:
    """Rewrites one graph's float weights into integers in place, counting the bytes before and after."""

    def __init__(self, proto: onnx.ModelProto, arrays: dict, mode: str, patch_mode: str, headroom: float):
        self.proto, self.arrays, self.headroom = proto, arrays, headroom
        self.const_bits, self.const_per_channel = MODES[mode]
        self.patch_bits, self.patch_per_channel = MODES[patch_mode]
        self.uses = _consumers(proto)
        self.inits = {t.name: t for t in proto.graph.initializer}
        self.q_bytes = self.f_bytes = 0

    def matmul(self, name: str, w_kn: np.ndarray, as_input: bool) -> dict:
        """A MatMul's B [K, N] -> MatMulNBits; returns the placement's quant entry."""
        k, n = w_kn.shape
        bits, per_channel = (self.patch_bits, self.patch_per_channel) if as_input else (self.const_bits,
                                                                                        self.const_per_channel)
        block = block_for(k)
        # headroom for the patchable weights only: constants never take a delta
        stored, scales = quantize(np.ascontiguousarray(w_kn.T), bits, block, per_channel,
                                  self.headroom if as_input else 1.0)
        scales_name = f"{name}_scales"
        for node, _ in self.uses[name]:
            attrs = {"K": k, "N": n, "bits": bits, "block_size": block, "accuracy_level": ACCURACY_LEVEL}
            new = onnx.helper.make_node("MatMulNBits", [node.input[0], name, scales_name], list(node.output),
                                        name=(node.name or name) + "_nbits", domain="com.microsoft", **attrs)
            node.CopyFrom(new)
        self._store(name, w_kn, stored, scales, as_input)
        return {"bits": bits, "block": block, "scales": scales_name, "per_channel": per_channel}

    def conv(self, name: str, w: np.ndarray, as_input: bool) -> dict:
        """A Conv's weight [N, C, kh, kw] -> its 8-bit integers [N, K/block, block] and per-channel scales, and a
        DequantizeLinear + Reshape in front of each Conv that uses it."""
        rows, cols = matrix_shape(w.shape)
        block = block_for(cols)
        stored, scales = quantize(w.reshape(rows, cols), 8, block, True, self.headroom if as_input else 1.0)
        scales_name = f"{name}_scales"
        consts = {f"{name}_scales_shape": np.array([rows, cols // block], np.int64),
                  f"{name}_first": np.array(0, np.int64),
                  f"{name}_zero_point": np.full(rows, 128, np.uint8),
                  f"{name}_torch_shape": np.array(w.shape, np.int64)}
        self.proto.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())

        def make(op, inputs, output, **attrs):  # a node named after its output
            return onnx.helper.make_node(op, inputs, [output], name=output, **attrs)

        nodes = [make("Reshape", [scales_name, f"{name}_scales_shape"], f"{name}_block_scales"),
                 # the channel's scale: every block of a row repeats it (docs/QUANTIZATION.md)
                 make("Gather", [f"{name}_block_scales", f"{name}_first"], f"{name}_channel_scales", axis=1),
                 make("DequantizeLinear", [name, f"{name}_channel_scales", f"{name}_zero_point"],
                      f"{name}_dequantized", axis=0),
                 make("Reshape", [f"{name}_dequantized", f"{name}_torch_shape"], f"{name}_float")]
        for nd in reversed(nodes):  # first in the graph: they read only inputs and constants
            self.proto.graph.node.insert(0, nd)
        for node, _ in self.uses[name]:
            node.input[1] = f"{name}_float"
        self._store(name, w, stored, scales, as_input)
        return {"bits": 8, "block": block, "scales": scales_name, "per_channel": True}

    def _store(self, name: str, w: np.ndarray, stored: np.ndarray, scales: np.ndarray, as_input: bool) -> None:
        scales_name = f"{name}_scales"
        if as_input:
            self.arrays[name], self.arrays[scales_name] = stored, scales
            for vi in self.proto.graph.input:
                if vi.name == name:
                    vi.CopyFrom(onnx.helper.make_tensor_value_info(name, TensorProto.UINT8, list(stored.shape)))
            self.proto.graph.input.append(onnx.helper.make_tensor_value_info(scales_name, TensorProto.FLOAT,
                                                                             list(scales.shape)))
        else:
            self.inits[name].CopyFrom(numpy_helper.from_array(stored, name))
            self.proto.graph.initializer.append(numpy_helper.from_array(scales, scales_name))
        self.q_bytes += stored.nbytes + scales.nbytes
        self.f_bytes += w.nbytes


def _why_not_patchable(entry: dict, w: np.ndarray, uses, conv: bool) -> str | None:
    """Why a patchable weight stays float32 (None: it is quantized)."""
    k = matrix_shape(entry["torch_shape"])[1]
    if "channel_scale" in entry:
        return "a folded weight (BatchNorm): its stored values carry a per-channel scale already"
    if conv and entry["layout"] != "identity":
        return f"a conv weight stored {entry['layout']}, not as torch lays it out"
    if not conv and (entry["layout"] != "transpose2d" or w.ndim != 2 or len(entry["torch_shape"]) != 2):
        return f"stored {entry['layout']} {list(w.shape)}: not a MatMul weight [K, N] or a Conv weight"
    if not conv and not _matmul_b_only(uses):
        return "used by " + ", ".join(sorted({n.op_type for n, _ in uses})) + ", not only MatMul or only Conv"
    if block_for(k) is None:
        return f"K = {k} is not a multiple of {SMALL_BLOCK}"
    return None


def quantize_graph(proto: onnx.ModelProto, mode: str, placements: dict[str, dict], arrays: dict[str, np.ndarray],
                   log=print, headroom: float | None = None, patchable_mode: str | None = None) -> dict:
    """Rewrite `proto` in place. `placements`: ONNX Runtime placement name (a graph input holding B) -> its
    manifest entry (updated in place: identity layout over the torch [N, K], `quant`); `arrays`: placement name
    -> its float array (replaced by the stored bytes; scales added). Returns the manifest's `quantization`."""
    patch_mode = patchable_mode or mode
    headroom = DEFAULT_HEADROOM[patch_mode] if headroom is None else headroom
    rw = _Rewriter(proto, arrays, mode, patch_mode, headroom)
    skipped: dict[str, str] = {}
    done_patchable = done_constant = done_conv = 0
    for name, entry in placements.items():
        w = arrays[name]
        conv = _conv_w_only(rw.uses[name]) and w.ndim >= 3
        why = _why_not_patchable(entry, w, rw.uses[name], conv)
        if why is not None:
            skipped[name] = why
            continue
        q = rw.conv(name, w, as_input=True) if conv else rw.matmul(name, w, as_input=True)
        entry.update(layout="identity", shape=list(matrix_shape(entry["torch_shape"])), quant=q)
        done_patchable += 1
        done_conv += conv
    for name, t in list(rw.inits.items()):
        if t.data_type != TensorProto.FLOAT:
            continue
        size = int(np.prod(t.dims))
        if len(t.dims) == 2 and _matmul_b_only(rw.uses[name]):
            k, conv = t.dims[0], False
        elif len(t.dims) >= 3 and _conv_w_only(rw.uses[name]):
            k, conv = size // t.dims[0], True
        else:
            continue
        if block_for(k) is None or size < MIN_CONSTANT_ELEMENTS:
            skipped[name] = (f"constant {list(t.dims)}: K = {k} not a multiple of {SMALL_BLOCK}, or fewer than "
                             f"{MIN_CONSTANT_ELEMENTS} entries")
            continue
        (rw.conv if conv else rw.matmul)(name, numpy_helper.to_array(t), as_input=False)
        done_constant += 1
        done_conv += conv
    if not any(o.domain == "com.microsoft" for o in proto.opset_import):
        proto.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    log(f"  quantized {done_patchable} patchable weights to {patch_mode} (headroom {headroom:g}) and "
        f"{done_constant} constant ones to {mode} (MatMulNBits, block {BLOCK} or {SMALL_BLOCK}; {done_conv} of them "
        f"Conv weights at 8 bits per channel): "
        f"{rw.f_bytes / 1e6:.1f} MB float32 -> {rw.q_bytes / 1e6:.1f} MB with scales"
        + (f"; {len(skipped)} left float32" if skipped else ""))
    return {"mode": mode, "patchable_mode": patch_mode, "block": BLOCK, "kernel": "MatMulNBits",
            "conv": "DequantizeLinear, int8 per channel" if done_conv else None,
            "accuracy_level": ACCURACY_LEVEL, "headroom": headroom, "patchable": done_patchable, "constants": done_constant,
            "skipped": skipped}


def quant_of(entry: dict) -> Quant | None:
    q = entry.get("quant")
    if q is None:
        return None
    return Quant(q["bits"], q["block"], q.get("scales"), q.get("per_channel", False), q.get("signed", False),
                 q.get("scales_offset"), q.get("scales_dtype", "float32"))
