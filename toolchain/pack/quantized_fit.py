"""What a quantized base's fixed scales let through of a delta: entries, clamps, the share kept."""
from __future__ import annotations

import json

import numpy as np
from shira_format import manifest as manifest_mod
from shira_format.adapter import SparseTensor

from .binding import PackError, base_weights


def quantized_fit(manifest, deltas: list[SparseTensor], float_base=None) -> dict | None:
    """For a quantized base: how many of the adapter's entries the base's scales clamp, and how much of its delta
    the integers hold after re-quantization (1 - |held - delta| / |delta|; docs/QUANTIZATION.md). With
    `float_base` (the float32 export of the same model) also the error against merging in float32: of the patched
    base, and of the merged model quantized whole with the same settings. None for a float base."""
    import dataclasses

    from shira_format.quant import dequantize, entries, pack_entries, quantize, requantize
    from shira_format.weights import quantized_placements

    if not any(p.quant is not None for d in deltas for ps in manifest.tensors[d.target].placements.values()
               for p in ps):
        return None
    stores = quantized_placements(manifest)
    floats, headroom = None, 1.0
    if float_base is not None:
        fman = manifest_mod.load(float_base)
        if fman.base_fingerprint != manifest.base_fingerprint:
            raise PackError(f"{fman.path}: --float-base is another model's export (base fingerprint differs)")
        if any(p.quant is not None for t in fman.tensors.values() for ps in t.placements.values() for p in ps):
            raise PackError(f"{fman.path}: --float-base must be a float32 export (this one is quantized)")
        missing = [d.target for d in deltas if d.target not in fman.tensors]
        if missing:
            raise PackError(f"{fman.path}: {missing[0]} is not patchable in --float-base: export it with the same "
                            "--targets")
        floats = base_weights(fman, [d.target for d in deltas])
        headroom = float(json.loads(manifest.path.read_text()).get("quantization", {}).get("headroom") or 1.0)
    n = clamped = 0
    err = ref = 0.0
    ours = whole = merged_norm = 0.0
    for d in deltas:
        if d.target not in stores:
            continue
        p, stored, scales = stores[d.target]  # one placement tells: every copy holds the same integers
        rows, cols = manifest.tensors[d.target].shape
        s = p.quant.scale_of(scales, d.indices, cols)
        ent = entries(stored, p.quant)
        u = ent[d.indices]
        new, c = requantize(u, d.values, s, p.quant)
        held = (new.astype(np.float64) - u.astype(np.float64)) * s.astype(np.float64)
        n, clamped = n + d.indices.size, clamped + c
        err += float(np.sum((held - d.values.astype(np.float64)) ** 2))
        ref += float(np.sum(d.values.astype(np.float64) ** 2))
        if floats is not None:
            merged = floats[d.target].reshape(-1).copy()
            merged[d.indices] += d.values
            patched = ent[np.arange(rows * cols, dtype=np.int64)]
            patched[d.indices] = new
            mine = dequantize(pack_entries(patched, p.quant), scales, p.quant, rows, cols).reshape(-1)
            # the whole merged weight quantized by the export's rule (shira_format.quant.quantize: unsigned
            # entries, float32 scales), whatever form this runtime stores them in
            plain = dataclasses.replace(p.quant, signed=False)
            q_bytes, q_scales = quantize(merged.reshape(rows, cols), p.quant.bits, p.quant.block,
                                         p.quant.per_channel, headroom)
            theirs = dequantize(q_bytes, q_scales, plain, rows, cols).reshape(-1)
            ours += float(np.sum((mine.astype(np.float64) - merged) ** 2))
            whole += float(np.sum((theirs.astype(np.float64) - merged) ** 2))
            merged_norm += float(np.sum(merged.astype(np.float64) ** 2))
    out = {"entries": n, "clamped": clamped, "kept": 1.0 - float(np.sqrt(err / ref)) if ref else 1.0}
    if floats is not None and merged_norm:
        out["error_patched"] = float(np.sqrt(ours / merged_norm))  # |patched base - merged float| / |merged|
        out["error_merged_then_quantized"] = float(np.sqrt(whole / merged_norm))
    return out
