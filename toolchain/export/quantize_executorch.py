"""`shira-export model ... --quantize int8|int4 --format pte`: XNNPACK's quantized Linear, with our integers.

ExecuTorch's route to XNNPACK's integer weights is torchao (as in ExecuTorch's Llama example):
`Int8DynamicActivationIntxWeightConfig` turns a Linear into int8 dynamically quantized activations times
  int4  symmetric weights in blocks of 32, scales stored as bfloat16 (XNNPACK's blockwise 4-bit, qb4w)
  int8  symmetric weights, one float32 scale per output channel (XNNPACK's qc8w)
which the XNNPACK partitioner lowers to one fully-connected node that packs the weights at method load.

The integers and scales are ours, not torchao's: they come from shira_format.quant.quantize (the same rule as the
ONNX Runtime export, headroom included), int4 scales rounded to bfloat16 first so the integers are the best ones
for the scales the device will use. They are written into torchao's tensors before lowering, and found again in
the .pte by value (measured: exactly once each): int4 as u = q + 8, two per byte, entry 2j in the low nibble
(MatMulNBits' own layout), int8 as signed bytes q (u XOR 0x80). Being packed at load, every quantized placement is
`reload: true`: a patch is written into the program's bytes and the method reloaded (docs/QUANTIZATION.md).

Linear weights that are tied to another module (a tied LM head), whose K is not a multiple of 32 or that are too
small stay float32, as in the ONNX Runtime export.
"""
from __future__ import annotations

import copy
import dataclasses
from collections import Counter

import numpy as np
import torch
from shira_format.quant import Quant, quantize

from .quantize import BLOCK, DEFAULT_HEADROOM, MIN_CONSTANT_ELEMENTS, MODES

KERNEL = "XNNPACK fully-connected, int8 dynamic activations (torchao Int8DynamicActivationIntxWeightConfig)"


def _bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> the nearest bfloat16 value (ties to even), still float32."""
    return torch.from_numpy(np.array(x, dtype=np.float32)).to(torch.bfloat16).float().numpy()


def _quantize_weight(w: np.ndarray, bits: int, per_channel: bool, headroom: float) -> tuple[np.ndarray, np.ndarray]:
    """-> (entries u [N, K] uint8, scales: per block [N, K/32] or per channel [N, 1], as the program stores them)."""
    n, k = w.shape
    _, scales = quantize(w, bits, BLOCK, per_channel, headroom)
    scales = scales.reshape(n, k // BLOCK)
    if bits == 4:
        scales = _bf16(scales)
        scales = np.where(scales > 0, scales, np.float32(1))  # a scale that rounded to 0: an all-zero block
    z = 1 << (bits - 1)
    s = np.repeat(scales, BLOCK, axis=1).astype(np.float64)
    u = (np.clip(np.rint(w.astype(np.float64) / s), -z, z - 1) + z).astype(np.uint8)
    return u, (scales[:, :1] if per_channel else scales)


def quantize_linears(subject, patchable: set[str], mode: str, headroom: float | None, patchable_mode: str | None,
                     log=print):
    """-> (a subject over a quantized deep copy of the model, {weight name: (u [N, K], stored scales, bits,
    per_channel)} for the patchable ones, the manifest's `quantization` for ExecuTorch)."""
    from torchao.quantization import quantize_
    from torchao.quantization.granularity import PerAxis, PerGroup
    from torchao.quantization.quant_api import Int8DynamicActivationIntxWeightConfig

    patch_mode = patchable_mode or mode
    headroom = DEFAULT_HEADROOM[patch_mode] if headroom is None else headroom
    model = copy.deepcopy(subject.model).eval()
    uses = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    chosen: dict[str, tuple[str, torch.nn.Linear]] = {}  # module name -> (its mode, module)
    skipped: dict[str, str] = {}
    for mname, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Linear) or mod.weight.dtype != torch.float32:
            continue
        wname = f"{mname}.weight"
        n, k = mod.weight.shape
        if uses[id(mod.weight)] > 1:
            skipped[wname] = "tied to another module's weight (kept float32 for both)"
        elif k % BLOCK:
            skipped[wname] = f"K = {k} is not a multiple of the block ({BLOCK})"
        elif wname not in patchable and n * k < MIN_CONSTANT_ELEMENTS:
            skipped[wname] = f"constant [{n}, {k}]: too small"
        else:
            chosen[mname] = (patch_mode if wname in patchable else mode, mod)
    ours = {}
    for m in MODES:
        bits, per_channel = MODES[m]
        names = {mname for mname, (mm, _) in chosen.items() if mm == m}
        if not names:
            continue
        config = Int8DynamicActivationIntxWeightConfig(
            weight_dtype=torch.int4 if bits == 4 else torch.int8,
            weight_granularity=PerAxis(0) if per_channel else PerGroup(BLOCK))
        floats = {mname: chosen[mname][1].weight.detach().numpy().copy() for mname in names}
        quantize_(model, config, filter_fn=lambda mod, fqn, names=names: fqn in names)
        for mname in names:
            wname = f"{mname}.weight"
            u, scales = _quantize_weight(floats[mname], bits, per_channel,
                                         headroom if wname in patchable else 1.0)
            qt = dict(model.named_modules())[mname].weight
            if tuple(qt.qdata.shape) != u.shape or tuple(qt.scale.shape) != scales.shape:
                raise RuntimeError(f"torchao's {wname} is {list(qt.qdata.shape)} / scales {list(qt.scale.shape)}; "
                                   f"expected {list(u.shape)} / {list(scales.shape)} (a torchao version change?)")
            with torch.no_grad():
                qt.qdata.copy_(torch.from_numpy((u.astype(np.int16) - (1 << (bits - 1))).astype(np.int8)))
                qt.scale.copy_(torch.from_numpy(scales))
                qt.zero_point.zero_()
            if wname in patchable:
                ours[wname] = (u, scales, bits, per_channel)
    n_const = len(chosen) - len(ours)
    log(f"  executorch: quantized {len(ours)} patchable Linear weights to {patch_mode} (headroom {headroom:g}) and "
        f"{n_const} constant ones to {mode} (XNNPACK, int8 dynamic activations)"
        + (f"; {len(skipped)} left float32" if skipped else ""))
    info = {"kernel": KERNEL, "patchable": len(ours), "constants": n_const, "skipped": skipped}
    summary = {"mode": mode, "patchable_mode": patch_mode, "block": BLOCK, "headroom": headroom}
    return dataclasses.replace(subject, model=model), ours, summary, info


def stored_forms(u: np.ndarray, scales: np.ndarray, bits: int) -> tuple[bytes, bytes, Quant]:
    """How the .pte holds a weight's entries and scales (bytes to find), and its placement's Quant (offsets 0)."""
    if bits == 4:
        flat = u.reshape(-1)
        data = (flat[0::2] | (flat[1::2] << np.uint8(4))).astype(np.uint8).tobytes()
        sdata = torch.from_numpy(np.ascontiguousarray(scales, dtype=np.float32)).to(torch.bfloat16) \
            .view(torch.int16).numpy().astype("<i2").tobytes()
        return data, sdata, Quant(4, BLOCK, None, False, False, 0, "bfloat16")
    data = (u ^ np.uint8(0x80)).tobytes()
    return data, np.ascontiguousarray(scales, dtype="<f4").tobytes(), Quant(8, BLOCK, None, True, True, 0, "float32")


def locate_quantized(pte: bytes, ours: dict) -> tuple[dict, dict]:
    """-> ({weight: (offset, quant dict)}, {weight: why not}) : each weight's integers and scales found exactly once."""
    found, excluded = {}, {}
    for wname, (u, scales, bits, _) in ours.items():
        data, sdata, q = stored_forms(u, scales, bits)
        at, s_at = pte.find(data), pte.find(sdata)
        if at < 0 or s_at < 0:
            excluded[wname] = "its quantized integers or scales were not found in the .pte"
        elif pte.find(data, at + 1) >= 0 or pte.find(sdata, s_at + 1) >= 0:
            excluded[wname] = "its quantized integers or scales occur more than once in the .pte"
        else:
            found[wname] = (at, {"bits": q.bits, "block": q.block, "per_channel": q.per_channel,
                                 "signed": q.signed, "scales_offset": s_at, "scales_dtype": q.scales_dtype})
    return found, excluded


def probe_quantized(pte: bytes, found: dict, shapes: dict, inputs: dict[str, torch.Tensor]) -> dict:
    """Flip bits in each quantized placement of a private copy: the output must change once the method is
    reloaded (XNNPACK packs these weights at load). -> {weight: why not} for those where it does not."""
    from shira_runtime.backends.executorch import PatchableProgram

    prog = PatchableProgram(bytes(bytearray(pte)))
    args = list(inputs.values())
    outputs = lambda: [o.clone() for o in prog.execute(args) if isinstance(o, torch.Tensor)]  # noqa: E731
    base = outputs()
    excluded = {}
    rng = np.random.default_rng(0)
    for wname, (off, q) in found.items():
        n = shapes[wname][0] * shapes[wname][1] * q["bits"] // 8
        view = prog.memory[off : off + n]
        saved = view.copy()
        view ^= rng.integers(1, 256, n, dtype=np.uint8)
        prog.reload()
        if all(torch.equal(a, b) for a, b in zip(outputs(), base)):
            excluded[wname] = f"a change of its integers at byte {off} changed no output, even after a method reload"
        view[:] = saved
        prog.reload()
    prog.close()
    return excluded
