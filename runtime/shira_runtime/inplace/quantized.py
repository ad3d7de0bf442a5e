"""Baking a quantized base: where MatMulNBits' packer put every integer entry (docs/INPLACE.md, "Quantized bases").

The float bake codes each entry's position in its float32 value; an integer entry holds 16 or 256 values, so
here positions are coded in digits, base 16 per nibble (int4) or 256 per byte (int8), one bake per digit:
  mask     every entry = r[f]                       (r pseudo-random per tensor: no two tensors are equal, so
                                                     ORT merges none of them, and the layout stays the real one)
  other    every entry = r2[f], r2[f] != r[f]       (the slots that change between these two hold entries; the
                                                     others hold scales, block sums or padding)
  digit m  every entry = (digit m of f + r[f]) mod base
A slot's digit m is (v_m - v_mask) mod base: a constant offset the packer might add cancels. A slot holds an
entry where both mask passes read r[f] and r2[f] plus one constant (0, or the zero point where the packer stores
u - z in two's complement: KleidiAI on ARM); decoded entries must cover the weight exactly once, and the real
bake must hold the export's integer at every decoded slot. Any other slot that changes between passes holds a
value derived from the entries: it must lie in a float32 sum that inplace/derived_sums.py's formulas give in every pass
(MLAS and KleidiAI on ARM cores with the dot product); otherwise the weight cannot be patched in place and
the bake says why.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
from shira_format.quant import entries

from .layout import BAKED_DATA, BAKED_MODEL, BakeError, describe, release_pages
from .regions import read_regions
from .derived_sums import FORMULAS, block_sums, count, match
from .derived_sums import sums as quant_sums

CHUNK = 1 << 22  # entries coded at a time: bounds the temporaries at real size


def _hash(f: np.ndarray, salt: int) -> np.ndarray:
    x = (f.astype(np.uint64) + np.uint64(salt)) * np.uint64(0x9E3779B97F4A7C15)
    return (x ^ (x >> np.uint64(29))) * np.uint64(0xBF58476D1CE4E5B9) >> np.uint64(40)


def mask(f: np.ndarray, tensor: int, base: int, which: int) -> np.ndarray:
    r = _hash(f, 7919 * (tensor + 1)) % np.uint64(base)
    if which == 2:  # always differs from the first mask
        r = (r + np.uint64(1) + _hash(f, 104729 * (tensor + 1)) % np.uint64(base - 1)) % np.uint64(base)
    return r.astype(np.int64)


def masks(placements: list) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """placement name -> (r, r2) as uint8 [n], hashed once per bake: every pass and the decode read them."""
    out = {}
    for i, p in enumerate(placements):
        n, base = int(np.prod(p.shape)), 1 << p.quant.bits
        r1, r2 = np.empty(n, dtype=np.uint8), np.empty(n, dtype=np.uint8)
        for lo in range(0, n, CHUNK):
            f = np.arange(lo, min(n, lo + CHUNK), dtype=np.int64)
            r1[lo:lo + f.size], r2[lo:lo + f.size] = mask(f, i, base, 1), mask(f, i, base, 2)
        out[p.name] = (r1, r2)
    return out


def _pass_values(kind: str, lo: int, hi: int, base: int, r: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Pass `kind`'s values of entries lo..hi-1 as uint8 (base 256 wraps by itself; base 16 is masked)."""
    if kind == "mask":
        return r[0][lo:hi]
    if kind == "other":
        return r[1][lo:hi]
    m = int(kind.removeprefix("digit"))
    digit = ((np.arange(lo, hi, dtype=np.int64) // base**m) % base).astype(np.uint8)
    return (digit + r[0][lo:hi]) & np.uint8(base - 1)


def _write_pass(kind: str, placements: list, r: dict):
    """An edit for bake._source_copy: every quantized entry replaced by its value for pass `kind`."""
    def edit(st):
        for p in placements:
            buf = st.array(p.name).reshape(-1)
            n, base = int(np.prod(p.shape)), 1 << p.quant.bits
            for lo in range(0, n, CHUNK):
                v = _pass_values(kind, lo, min(n, lo + CHUNK), base, r[p.name])
                if p.quant.bits == 8:
                    buf[lo:lo + v.size] = v
                else:  # chunks are even-sized: whole bytes
                    buf[lo // 2:(lo + v.size) // 2] = v[0::2] | (v[1::2] << np.uint8(4))
    return edit


def slots(data: np.ndarray, region, bits: int) -> np.ndarray:
    """A region's integer slots: its bytes, or its nibbles (2j the low half of byte j, 2j+1 the high)."""
    return _slots(np.asarray(data[region.offset:region.offset + region.length]), bits)


def _slots(raw: np.ndarray, bits: int) -> np.ndarray:
    if bits == 8:
        return raw
    out = np.empty(raw.size * 2, dtype=np.uint8)
    out[0::2], out[1::2] = raw & np.uint8(15), raw >> np.uint8(4)
    return out


def learn_quantized(source: Path, weights_name: str, placements: list, stored: dict, scales: dict, dims: dict,
                    regions, real: np.ndarray, tmp: Path, bake_once, source_copy, threads, log) -> dict[str, list]:
    """placement name -> [(region, positions, how)] for every region of the baked file that holds its entries,
    each read back against the real bake: positions = the formula (layout.describe) or the array giving
    entry f's slot (byte or nibble); how = {"signed": slots hold u XOR the zero point, "sums": None or
    (formula, word of each sum)}. `stored`: the export's stored bytes per placement; `scales`: its float32
    scales; `dims`: (rows, cols) of its matrix; `real`: the real bake's data."""
    ours = {p.name: [r for r in regions if r.initializer == p.name] for p in placements}
    missing = [p.name for p in placements if not ours[p.name]]
    if missing:
        raise BakeError(f"quantized weight {missing[0]} is not in the baked data file under its own name (ONNX "
                        "Runtime rewrote it); it cannot be patched in place")
    largest = max(int(np.prod(p.shape)) for p in placements)
    digits = {bits: max(1, int(np.ceil(np.log(max(largest, 2)) / np.log(1 << bits))))
              for bits in {p.quant.bits for p in placements}}
    t0 = time.perf_counter()
    r = masks(placements)
    log(f"drew the quantized passes' values in {time.perf_counter() - t0:.1f}s")
    where, at = {}, 0  # a quantized region (offset, length) in the baked file -> its offset in a pass's file
    for span in sorted({(g.offset, g.length) for gs in ours.values() for g in gs}):
        where[span] = at
        at += span[1]
    passes = _bake_passes(max(digits.values()), source, weights_name, placements, r, regions, where, tmp,
                          bake_once, source_copy, threads, log)
    found: dict[str, list] = {}
    t0 = time.perf_counter()
    for p in placements:
        n = int(np.prod(p.shape))
        want = entries(stored[p.name], p.quant)[np.arange(n, dtype=np.int64)]
        for region in ours[p.name]:
            at = where[(region.offset, region.length)]
            raw = {"real": np.array(real[region.offset:region.offset + region.length]),
                   **{kind: np.array(d[at:at + region.length]) for kind, d in passes.items()}}
            release_pages(*passes.values())
            positions, offset, derived = _decode_region(region, p, raw, want, r[p.name], digits[p.quant.bits])
            sums = None
            if derived.size:
                u = {kind: want if kind == "real" else _pass_values(kind, 0, n, 1 << p.quant.bits, r[p.name])
                     for kind in raw}
                sums = _learn_sums(region, p, raw, u, scales[p.name], dims[p.name], derived)
            del raw
            # every entry was read back: keep its formula where one gives it (a map only where none does), so a
            # bake holds no weight-sized index arrays beyond the one being decoded
            form = describe(positions, p.shape)
            found.setdefault(p.name, []).append((region, positions if form is None else form,
                                                 {"signed": offset != 0, "sums": sums}))
    log(f"found the entries of {len(placements)} quantized weights in {time.perf_counter() - t0:.1f}s")
    return found


def _bake_passes(n_digits: int, source: Path, weights_name: str, placements: list, r: dict, regions, where: dict,
                 tmp: Path, bake_once, source_copy, threads, log) -> dict[str, np.ndarray]:
    """kind -> the quantized regions' bytes in that pass (mask, other, digit0...), one after another as `where`
    places them, in a file of the pass's own, mapped: the pass's whole baked file is deleted once they are copied
    out, so the disk holds one baked file plus the passes' integers, not a baked file per pass."""
    data = {}
    for kind in ["mask", "other"] + [f"digit{m}" for m in range(n_digits)]:
        t0 = time.perf_counter()
        src_dir, d = tmp / f"q-{kind}-source", tmp / f"q-{kind}"
        src_dir.mkdir()
        d.mkdir()
        bake_once(source_copy(source, weights_name, src_dir, _write_pass(kind, placements, r)), d, threads)
        shutil.rmtree(src_dir)
        if read_regions((d / BAKED_MODEL).read_bytes())[0] != regions:
            raise BakeError(f"{source}: ONNX Runtime lays the quantized weights out differently when their values "
                            "change; this base cannot be patched in place")
        full = np.memmap(d / BAKED_DATA, dtype=np.uint8, mode="r")
        with open(tmp / f"q-{kind}.bin", "wb") as f:
            for off, length in sorted(where):
                f.write(memoryview(full[off:off + length]))
        del full
        shutil.rmtree(d)
        data[kind] = np.memmap(tmp / f"q-{kind}.bin", dtype=np.uint8, mode="r")
        log(f"baked the quantized {kind} pass in {time.perf_counter() - t0:.1f}s")
    return data


def _decode_region(region, p, raw: dict, want: np.ndarray, r: tuple, n_digits: int):
    """(positions [n]: entry f's slot, the packer's constant offset, the slots holding derived values) of one
    region, from its bytes in every pass (`raw`: kind -> bytes); raises BakeError unless it holds every entry
    of `p` exactly once and the real bake holds the export's integer at each."""
    n, bits = int(np.prod(p.shape)), p.quant.bits
    base, top = 1 << bits, np.uint8((1 << bits) - 1)
    sl = {kind: _slots(raw[kind], bits) for kind in raw}
    v1, v2 = sl["mask"], sl["other"]
    changed = np.flatnonzero(v1 != v2)
    if changed.size == v1.size:  # every slot holds an entry (x86): slices, not gathers
        changed = slice(None)
    v1c = v1[changed]
    wide = np.uint32 if bits * n_digits <= 32 else np.int64  # f < base ** digits
    f = np.zeros(v1c.size, dtype=wide)
    for m in range(n_digits):  # uint8 differences wrap mod 256; mod 16 by the mask
        f += ((sl[f"digit{m}"][changed] - v1c) & top).astype(wide) << wide(bits * m)
    # an entry's slot holds its pass value plus one constant (0, or z where the packer stores u - z in two's
    # complement) in both mask passes; other changed slots hold values derived from the entries
    fc = np.minimum(f, wide(n - 1))
    off = (v1c - r[0][fc]) & top
    valid = (f < n) & (off == ((v2[changed] - r[1][fc]) & top))
    del v1c
    offset = int(np.bincount(off[valid], minlength=base).argmax()) if valid.any() else 0
    valid &= (off == offset) & (sl["real"][changed] == ((want[fc] + np.uint8(offset)) & top))
    if isinstance(changed, slice):
        changed = np.arange(v1.size, dtype=np.int64)
    if not valid.all():
        # a derived float's nibble or byte can pass those checks by chance (1 in 4096 nibbles); packers keep
        # entries and derived floats in separate 4-byte words, so a word with any other changed slot is derived
        word = (changed >> 1 if bits == 4 else changed) // 4
        derived_word = np.zeros(int(word[-1]) + 1, dtype=bool)
        derived_word[word[~valid]] = True  # marks, not np.isin: sorting every slot costs minutes at 168M
        valid &= ~derived_word[word]
    ent, f = changed[valid], f[valid]
    ok = ent.size == n and offset in (0, base // 2)
    if ok:
        hit = np.zeros(n, dtype=bool)
        hit[f] = True
        ok = bool(hit.all())
    if not ok:
        raise BakeError(f"region {region.initializer} ({region.kind}): holds {ent.size} of the {n} entries "
                        f"of quantized weight {p.name}, or mixes them; it cannot be patched in place")
    moved = np.zeros(v1.size, dtype=bool)  # slots that change in any pass, then less the entries
    for kind in sl:
        if kind != "mask":
            moved |= sl[kind] != v1
    moved[ent] = False
    positions = np.empty(n, dtype=np.uint32 if v1.size < 1 << 32 else np.int64)
    positions[f] = ent
    return positions, offset, np.flatnonzero(moved)


def _learn_sums(region, p, raw: dict, u: dict, scales: np.ndarray, dims, derived: np.ndarray):
    """(formula, word of each sum) for the floats a packer derived from the entries (inplace/derived_sums.py): every
    changed slot that is not an entry must lie in a float32 word that one formula explains in every pass."""
    rows, cols = dims
    block, z = p.quant.block, p.quant.zero_point
    byte = derived >> 1 if p.quant.bits == 4 else derived
    words = np.unique(byte // 4)
    length = raw["real"].size // 4
    if words.max() >= length:
        raise BakeError(f"region {region.initializer}: values derived from quantized weight {p.name} end past a "
                        "whole float; it cannot be patched in place")
    kinds = sorted(raw)
    seen = np.stack([raw[kind][:length * 4].view(np.uint32)[words] for kind in kinds])
    s = np.asarray(scales, dtype=np.float32).reshape(rows, cols // block)
    for formula in FORMULAS:
        if count(formula, rows, cols // block) != words.size:
            continue
        expected = np.stack([quant_sums(formula, block_sums(u[kind], rows, cols, block, z), s).view(np.uint32)
                             for kind in kinds])
        at = match(formula, seen, expected)
        if at is not None:
            return formula, words[at]
    raise BakeError(f"region {region.initializer}: {words.size} floats derived from the integers of quantized "
                    f"weight {p.name} match no known formula (docs/INPLACE.md); it cannot be patched in place")
