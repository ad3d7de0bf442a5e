"""Quantized weights: how a quantized placement's bytes hold a weight, and how a sparse delta is written into them
(spec: docs/QUANTIZATION.md).

A quantized placement stores a torch weight [N, K] (N output channels, K inputs, K a multiple of the block) as
unsigned integers u; a convolution's weight [N, C, kh, kw] is held as the matrix [N, C*kh*kw] (matrix_shape), one per entry in torch row-major order: bytes for 8 bits, two per byte for 4 bits (entry
2j in the low nibble of byte j, entry 2j+1 in the high one). That is ONNX Runtime's MatMulNBits layout
[N, K/block, block*bits/8]. The weight is w = s * (u - z), z = 2^(bits-1) (symmetric), s the scale of the
entry's block: scales[n * (K/block) + k // block], float32. Per-channel int8 repeats its channel's scale in
every block of the row.

A patch never changes a scale. An entry with base value u and summed delta d (float32, as fused in the
patcher) becomes u' = z + clamp(rint(float64(u - z) + float64(d) / float64(s)), -z, z - 1), rint rounding
half to even: the entry re-quantized with the base's scale. Reset writes the saved u back: bit-exact.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BITS = (4, 8)
BLOCKS = (16, 32, 64, 128, 256)  # what MatMulNBits accepts (a power of two, at least 16)
SCALE_DTYPES = ("float32", "bfloat16")  # how a program (ExecuTorch) stores a quantized placement's scales


def matrix_shape(torch_shape) -> tuple[int, int]:
    """A torch weight's shape -> the matrix [N, K] its entries form in row-major order: rows are output channels,
    K the product of the other dimensions (a Linear's [N, K] itself; a conv's [N, C/groups, kh, kw])."""
    rows = int(torch_shape[0])
    cols = 1
    for d in torch_shape[1:]:
        cols *= int(d)
    return rows, cols


@dataclass(frozen=True)
class Quant:
    """How a placement is quantized (its manifest `quant` entry)."""

    bits: int
    block: int
    scales: str | None  # ONNX Runtime: the name of its float32 scales, [N * K/block], in the same weights file
    per_channel: bool = False  # every block of a row has its channel's scale (int8 per channel)
    signed: bool = False  # stored as two's complement q = u - z: an int8 byte = u XOR 0x80 (XNNPACK's qc8w); a
    # nibble = u XOR 0x8 (ONNX Runtime's KleidiAI packing on ARM; only for an in-place copy, never in a manifest)
    scales_offset: int | None = None  # ExecuTorch: the byte offset of its scales inside the .pte
    scales_dtype: str = "float32"  # ExecuTorch: "float32", or "bfloat16" (XNNPACK's blockwise 4-bit scales)

    @property
    def zero_point(self) -> int:
        return 1 << (self.bits - 1)

    @property
    def flip(self) -> np.uint8:
        """XOR between a stored slot (byte or nibble) and its entry u: 0x80 for signed int8, 0x8 for a signed
        nibble, else 0."""
        return np.uint8(0 if not self.signed else 0x80 if self.bits == 8 else 0x08)

    def stored_scales_count(self, rows: int, cols: int) -> int:
        """How many scales a program stores: one per row for per-channel scales held by offset (ExecuTorch),
        else one per block (MatMulNBits repeats a channel's scale in each of its blocks)."""
        return rows if self.per_channel and self.scales_offset is not None else self.scales_count(rows, cols)

    def stored_scales_bytes(self, rows: int, cols: int) -> int:
        return self.stored_scales_count(rows, cols) * (2 if self.scales_dtype == "bfloat16" else 4)

    def stored_bytes(self, rows: int, cols: int) -> int:
        return rows * cols * self.bits // 8

    def storage_shape(self, rows: int, cols: int) -> tuple[int, int, int]:
        """The stored array's shape: MatMulNBits' B, [N, K/block, block*bits/8] bytes."""
        return (rows, cols // self.block, self.block * self.bits // 8)

    def scales_count(self, rows: int, cols: int) -> int:
        return rows * (cols // self.block)

    def scale_of(self, scales: np.ndarray, flat: np.ndarray, cols: int) -> np.ndarray:
        """The scale of each torch flat index (entry f = n*K + k lies in block n*(K/block) + k//block)."""
        flat = flat.astype(np.int64, copy=False)
        return scales[(flat // cols) * (cols // self.block) + (flat % cols) // self.block]


class Nibbles:
    """4-bit entries of a byte buffer, addressed by entry index (2j low nibble of byte j, 2j+1 high): what the
    patcher gathers from and scatters into, like a uint8 array of twice the length."""

    dtype = np.dtype(np.uint8)

    def __init__(self, data: np.ndarray, flip: int = 0):
        self.data = data  # uint8, writes go through to it
        self.flip = np.uint8(flip)  # 0x8: signed nibbles (u - 8 in two's complement), addressed as their u

    @property
    def size(self) -> int:
        return 2 * self.data.size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        return ((self.data[idx >> 1] >> ((idx & 1) * 4).astype(np.uint8)) & np.uint8(15)) ^ self.flip

    def __setitem__(self, idx: np.ndarray, values) -> None:
        """Low nibbles then high nibbles, each a scatter with distinct bytes: both halves of a byte compose."""
        idx = np.asarray(idx, dtype=np.int64)
        values = (np.broadcast_to(np.asarray(values, dtype=np.uint8), idx.shape) & np.uint8(15)) ^ self.flip
        low = (idx & 1) == 0
        b = idx[low] >> 1
        self.data[b] = (self.data[b] & np.uint8(0xF0)) | values[low]
        b = idx[~low] >> 1
        self.data[b] = (self.data[b] & np.uint8(0x0F)) | (values[~low] << np.uint8(4))


class SignedBytes:
    """Signed int8 entries (two's complement, XNNPACK) addressed as their unsigned u = byte XOR 0x80."""

    dtype = np.dtype(np.uint8)

    def __init__(self, data: np.ndarray):
        self.data = data

    @property
    def size(self) -> int:
        return self.data.size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, idx) -> np.ndarray:
        return self.data[idx] ^ np.uint8(0x80)

    def __setitem__(self, idx, values) -> None:
        self.data[idx] = np.asarray(values, dtype=np.uint8) ^ np.uint8(0x80)


def entries(buf: np.ndarray, quant: Quant):
    """A stored byte buffer as the patcher addresses it: one element per weight entry, its unsigned u."""
    if quant.bits == 4:
        return Nibbles(buf, quant.flip)
    return SignedBytes(buf) if quant.signed else buf


def decode_scales(raw: np.ndarray, quant: Quant, rows: int, cols: int) -> np.ndarray:
    """A program's stored scales (bytes: float32 or bfloat16, little-endian; one per row or per block) -> the
    float32 scales [N * K/block] the patcher indexes (bfloat16 widens exactly: its bits are float32's top half)."""
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    if quant.scales_dtype == "bfloat16":
        s = (raw.view("<u2").astype(np.uint32) << np.uint32(16)).view(np.float32)
    else:
        s = raw.view("<f4").astype(np.float32)
    if s.size == rows and quant.per_channel:
        s = np.repeat(s, cols // quant.block)
    return s


def requantize(base: np.ndarray, delta: np.ndarray, scale: np.ndarray, quant: Quant) -> tuple[np.ndarray, int]:
    """Base entries u (uint8), summed deltas (float32) and their scales -> (new entries u', how many clamped)."""
    z = quant.zero_point
    target = np.rint(base.astype(np.float64) - z + delta.astype(np.float64) / scale.astype(np.float64))
    clamped = int(np.count_nonzero((target < -z) | (target > z - 1)))
    return (np.clip(target, -z, z - 1) + z).astype(np.uint8), clamped


def quantize(w: np.ndarray, bits: int, block: int, per_channel: bool, headroom: float = 1.0
             ) -> tuple[np.ndarray, np.ndarray]:
    """A float32 weight [N, K] -> (stored bytes [N, K/block, block*bits/8], scales [N*K/block] float32):
    symmetric, s = headroom * absmax / (2^(bits-1) - 1) per block (per row with `per_channel`),
    u = z + clamp(rint(w/s)). `headroom` > 1 leaves room above the base's largest weight for adapters' entries,
    at the cost of coarser steps for the base."""
    n, k = w.shape
    z = 1 << (bits - 1)
    blocks = w.reshape(n, k // block, block).astype(np.float32)
    absmax = np.abs(blocks).max(axis=(1, 2) if per_channel else 2, keepdims=True)
    s = (absmax.astype(np.float64) * headroom / (z - 1)).astype(np.float32)
    s = np.where(s == 0, np.float32(1), s).astype(np.float32)  # an all-zero block: any scale gives exact zeros
    s = np.broadcast_to(s, (n, k // block, 1))
    u = (np.clip(np.rint(blocks.astype(np.float64) / s.astype(np.float64)), -z, z - 1) + z).astype(np.uint8)
    if bits == 4:
        flat = u.reshape(n, k // block, block)
        u = flat[..., 0::2] | (flat[..., 1::2] << np.uint8(4))
    return np.ascontiguousarray(u), np.ascontiguousarray(s.reshape(-1))


def pack_entries(u: np.ndarray, quant: Quant) -> np.ndarray:
    """Integer entries in torch order -> the stored bytes (flat)."""
    u = np.asarray(u, dtype=np.uint8).reshape(-1)
    return u ^ quant.flip if quant.bits == 8 else (u[0::2] & np.uint8(15)) | (u[1::2] << np.uint8(4))


def dequantize_entries(u: np.ndarray, scales: np.ndarray, quant: Quant, rows: int, cols: int) -> np.ndarray:
    """Integer entries in torch order -> the float32 weight [N, K] (s * (u - z), rounded to float32 once)."""
    s = np.repeat(scales.astype(np.float64), quant.block)
    return (s * (u.astype(np.float64).reshape(-1) - quant.zero_point)).astype(np.float32).reshape(rows, cols)


def dequantize(stored: np.ndarray, scales: np.ndarray, quant: Quant, rows: int, cols: int) -> np.ndarray:
    """Stored bytes -> the float32 weight [N, K] they hold."""
    u = entries(stored.reshape(-1), quant)[np.arange(rows * cols, dtype=np.int64)] if quant.bits == 4 \
        else stored.reshape(-1) ^ quant.flip
    return dequantize_entries(u, scales, quant, rows, cols)
