"""Sums that ONNX Runtime's ARM packers derive from a quantized weight's integers, kept right when they change.

On ARM cores with the dot product (ARMv8.2 and later: most phones since 2019), MatMulNBits with int8
activations (accuracy level 4) packs, beside each weight's integers, float32 sums of them that the kernel uses
to correct for the activations' zero point (seen with ONNX Runtime 1.32 under qemu; docs/INPLACE.md):

  "row"    int4 (KleidiAI's packing): one per output row n,
           S[n] = sum over the row's blocks b in order, accumulated in float32, of
                  bf16(s[n, b]) * float32(sum over the block of (u - z))
           bf16(s): the block's scale cut to bfloat16 (as the packing stores the scales)
  "block"  int8 (MLAS): one per row and block, S[n, b] = float32(sum over the block of (z - u)) * s[n, b]

u are the unsigned entries, z = 2^(bits-1) the implicit zero point, s the export's float32 scales. A bake finds
every such sum by matching the region's changed floats against these formulas over all its passes, bit for
bit (inplace/quantized.py), or refuses the base. After a switch the backend recomputes the sums of the blocks the
switch touched from the integers now in the region, so the packed weight is what ONNX Runtime would pack from
the patched integers, bit for bit, and reset() gives the base's bytes back.
"""
from __future__ import annotations

import numpy as np

FORMULAS = ("row", "block")


def block_sums(u: np.ndarray, rows: int, cols: int, block: int, zero: int) -> np.ndarray:
    """Entries u (torch order, [rows * cols]) -> int32 [rows, cols // block]: each block's sum of (u - z)."""
    return (u.reshape(rows, cols // block, block).astype(np.int32) - zero).sum(-1, dtype=np.int32)


def stored_block_sums(stored: np.ndarray, bits: int, rows: int, cols: int, block: int) -> np.ndarray:
    """block_sums straight from an export's stored bytes (MatMulNBits' B: entries in row-major order, bytes at 8
    bits, two per byte at 4), a few thousand rows at a time: no index arrays the size of the weight."""
    per = block * bits // 8
    raw = np.asarray(stored).reshape(rows, cols // block, per)
    out = np.empty((rows, cols // block), dtype=np.int32)
    for r in range(0, rows, 4096):
        b = raw[r:r + 4096]
        if bits == 8:
            out[r:r + 4096] = b.sum(-1, dtype=np.int32)
        else:
            out[r:r + 4096] = (b & np.uint8(15)).sum(-1, dtype=np.int32) + (b >> np.uint8(4)).sum(-1, dtype=np.int32)
    return out - np.int32(block << (bits - 1))


def bf16(s: np.ndarray) -> np.ndarray:
    """float32 values cut to bfloat16 (the low 16 bits dropped), still as float32."""
    return (np.ascontiguousarray(s, dtype=np.float32).view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)


def sums(formula: str, blk: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """The sums a packer stores, flat: "row" -> [rows], "block" -> [rows * blocks] in (row, block) order.
    `blk`: block_sums of the rows wanted; `scales`: their float32 scales, [rows, blocks]."""
    scales = scales.astype(np.float32, copy=False)
    if formula == "block":
        return ((-blk).astype(np.float32) * scales).reshape(-1)
    if formula == "row":
        d = bf16(scales)
        acc = np.zeros(blk.shape[0], dtype=np.float32)
        for b in range(blk.shape[1]):  # in block order, rounding to float32 after every step, as the packer does
            acc = acc + d[:, b] * blk[:, b].astype(np.float32)
        return acc
    raise ValueError(f"unknown sums formula {formula!r}")


def count(formula: str, rows: int, blocks: int) -> int:
    return rows if formula == "row" else rows * blocks


def match(formula: str, words: np.ndarray, expected: np.ndarray) -> np.ndarray | None:
    """Where each expected sum lies: `words` [passes, W] (uint32 bits of the region's candidate floats),
    `expected` [passes, C] (the formula's uint32 bits). Returns [C] indices into W, or None unless every
    candidate word is exactly one sum and every sum lies in exactly one word, equal in every pass."""
    if words.shape[1] != expected.shape[1]:
        return None
    sig_w = np.ascontiguousarray(words.T).view(np.dtype((np.void, 4 * words.shape[0]))).reshape(-1)
    sig_e = np.ascontiguousarray(expected.T).view(np.dtype((np.void, 4 * expected.shape[0]))).reshape(-1)
    if np.unique(sig_e).size != sig_e.size or np.unique(sig_w).size != sig_w.size:
        return None  # two sums alike in every pass: their places cannot be told apart
    order = np.argsort(sig_w)
    at = np.searchsorted(sig_w[order], sig_e)
    at = np.minimum(at, sig_w.size - 1)
    if not np.array_equal(sig_w[order][at], sig_e):
        return None
    return order[at]
