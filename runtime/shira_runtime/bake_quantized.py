"""Baking a quantized base: where MatMulNBits' packer put every integer entry (docs/INPLACE.md, "Quantized bases").

The float bake codes each entry's position in its float32 value; an integer entry holds 16 or 256 values, so
here positions are coded in digits, base 16 per nibble (int4) or 256 per byte (int8), one bake per digit:
  mask     every entry = r[f]                       (r pseudo-random per tensor: no two tensors are equal, so
                                                     ORT merges none of them, and the layout stays the real one)
  other    every entry = r2[f], r2[f] != r[f]       (the slots that change between these two hold entries; the
                                                     others hold scales, block sums or padding)
  digit m  every entry = (digit m of f + r[f]) mod base
A slot's digit m is (v_m - v_mask) mod base: a constant offset the packer might add cancels. Decoded entries
must cover the weight exactly once and agree with r, and the real bake must hold the export's integer at every
decoded slot; otherwise the weight cannot be patched in place and the bake says why.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
from shira_format.quant import entries

from .baked_layout import BAKED_DATA, BAKED_MODEL, BakeError
from .onnx_regions import read_regions

CHUNK = 1 << 22  # entries coded at a time: bounds the temporaries at real size


def _hash(f: np.ndarray, salt: int) -> np.ndarray:
    x = (f.astype(np.uint64) + np.uint64(salt)) * np.uint64(0x9E3779B97F4A7C15)
    return (x ^ (x >> np.uint64(29))) * np.uint64(0xBF58476D1CE4E5B9) >> np.uint64(40)


def mask(f: np.ndarray, tensor: int, base: int, which: int) -> np.ndarray:
    r = _hash(f, 7919 * (tensor + 1)) % np.uint64(base)
    if which == 2:  # always differs from the first mask
        r = (r + np.uint64(1) + _hash(f, 104729 * (tensor + 1)) % np.uint64(base - 1)) % np.uint64(base)
    return r.astype(np.int64)


def _pass_values(kind: str, f: np.ndarray, tensor: int, base: int) -> np.ndarray:
    if kind == "mask":
        return mask(f, tensor, base, 1)
    if kind == "other":
        return mask(f, tensor, base, 2)
    m = int(kind.removeprefix("digit"))
    return ((f // base**m) % base + mask(f, tensor, base, 1)) % base


def _write_pass(kind: str, placements: list):
    """An edit for bake._source_copy: every quantized entry replaced by its value for pass `kind`."""
    def edit(st):
        for i, p in enumerate(placements):
            buf = st.array(p.name).reshape(-1)
            n, base = int(np.prod(p.shape)), 1 << p.quant.bits
            for lo in range(0, n, CHUNK):
                f = np.arange(lo, min(n, lo + CHUNK), dtype=np.int64)
                v = _pass_values(kind, f, i, base).astype(np.uint8)
                if p.quant.bits == 8:
                    buf[lo:lo + f.size] = v
                else:  # chunks are even-sized: whole bytes
                    buf[lo // 2:(lo + f.size) // 2] = v[0::2] | (v[1::2] << np.uint8(4))
    return edit


def slots(data: np.ndarray, region, bits: int) -> np.ndarray:
    """A region's integer slots: its bytes, or its nibbles (2j the low half of byte j, 2j+1 the high)."""
    raw = np.asarray(data[region.offset:region.offset + region.length])
    if bits == 8:
        return raw
    out = np.empty(raw.size * 2, dtype=np.uint8)
    out[0::2], out[1::2] = raw & np.uint8(15), raw >> np.uint8(4)
    return out


def learn_quantized(source: Path, weights_name: str, placements: list, stored: dict, regions, tmp: Path,
                    bake_once, source_copy, threads, log) -> dict[str, list]:
    """placement name -> [(region, positions)] for every region of the baked file that holds its entries:
    positions[f] = the slot (byte or nibble) of entry f. `stored`: the export's stored bytes per placement."""
    ours = {p.name: [r for r in regions if r.initializer == p.name] for p in placements}
    missing = [p.name for p in placements if not ours[p.name]]
    if missing:
        raise BakeError(f"quantized weight {missing[0]} is not in the baked data file under its own name (ONNX "
                        "Runtime rewrote it); it cannot be patched in place")
    largest = max(int(np.prod(p.shape)) for p in placements)
    digits = {bits: max(1, int(np.ceil(np.log(max(largest, 2)) / np.log(1 << bits))))
              for bits in {p.quant.bits for p in placements}}
    kinds = ["mask", "other"] + [f"digit{m}" for m in range(max(digits.values()))]
    seen: dict[str, dict] = {}  # kind -> placement -> [slots per region]
    for kind in kinds:
        t0 = time.perf_counter()
        src_dir, d = tmp / f"q-{kind}-source", tmp / f"q-{kind}"
        src_dir.mkdir()
        d.mkdir()
        bake_once(source_copy(source, weights_name, src_dir, _write_pass(kind, placements)), d, threads)
        shutil.rmtree(src_dir)
        if read_regions((d / BAKED_MODEL).read_bytes())[0] != regions:
            raise BakeError(f"{source}: ONNX Runtime lays the quantized weights out differently when their values "
                            "change; this base cannot be patched in place")
        data = np.memmap(d / BAKED_DATA, dtype=np.uint8, mode="r")
        seen[kind] = {p.name: [slots(data, r, p.quant.bits) for r in ours[p.name]] for p in placements}
        del data
        shutil.rmtree(d)
        log(f"baked the quantized {kind} pass in {time.perf_counter() - t0:.1f}s")

    found: dict[str, list] = {}
    for i, p in enumerate(placements):
        n, base = int(np.prod(p.shape)), 1 << p.quant.bits
        want = entries(stored[p.name], p.quant)
        for k, region in enumerate(ours[p.name]):
            v1, v2 = seen["mask"][p.name][k], seen["other"][p.name][k]
            ent = np.flatnonzero(v1 != v2)
            f = np.zeros(ent.size, dtype=np.int64)
            for m in range(digits[p.quant.bits]):
                vm = seen[f"digit{m}"][p.name][k][ent].astype(np.int64)
                f += ((vm - v1[ent]) % base) * base**m
            ok = ent.size == n and f.size and f.max() < n
            if ok:
                hit = np.zeros(n, dtype=bool)
                hit[f] = True
                ok = bool(hit.all()) and np.array_equal(mask(f, i, base, 1), v1[ent].astype(np.int64))
            if not ok:
                raise BakeError(f"region {region.initializer} ({region.kind}): holds {ent.size} of the {n} entries "
                                f"of quantized weight {p.name}, or mixes them; it cannot be patched in place")
            positions = np.empty(n, dtype=np.int64)
            positions[f] = ent
            found.setdefault(p.name, []).append((region, positions, want))
    return found
