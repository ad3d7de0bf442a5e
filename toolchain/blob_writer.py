"""Write SHiRA adapter blobs (format v1, spec: docs/FORMAT.md). The runtime's adapter_file.py reads them.

The container is safetensors: an 8-byte little-endian header length, a JSON header (padded with spaces to a
multiple of 8), then the raw buffers, ordered by element size (4, 2, then 1 byte) so every buffer is aligned.
SHiRA's own fields live in `__metadata__` under `shira.*` keys. Output is deterministic: the same adapter
always gives the same bytes.
"""
from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

from shira_runtime.codings import (INDEX_CODINGS, VALUE_BUFFER_DTYPE, decode_values, ef_low_bits, ef_sizes,
                                   rows_cols, seeded_indices)

from shira_runtime.adapter_file import header_crc32

from .atomic import write_bytes

ELEMENT_SIZE = {"U32": 4, "F32": 4, "F16": 2, "BF16": 2, "U8": 1, "I8": 1}
DEFAULT_VALUES = "f16"


@dataclass
class SparseDelta:
    target: str  # torch parameter name, e.g. model.layers.0.mlp.up_proj.weight
    shape: tuple[int, ...]  # torch shape of that weight
    indices: np.ndarray  # strictly increasing flat row-major indices into the torch-layout weight
    values: np.ndarray  # float32 deltas
    seed: int | None = None  # set when the mask came from codings.seeded_indices(seed, numel, nnz)
    stats: dict = field(default_factory=dict)


# ---- indices ------------------------------------------------------------------------------------------------
def _pack_bits(bits: np.ndarray) -> bytes:
    return np.packbits(bits.astype(np.uint8), bitorder="little").tobytes()


def encode_elias_fano(idx: np.ndarray, numel: int) -> tuple[bytes, dict]:
    n = idx.size
    low = ef_low_bits(numel, n)
    lo_bytes, hi_bytes = ef_sizes(numel, n, low)
    out = b""
    if low:
        lows = (idx & ((1 << low) - 1)).astype(np.int64)
        bits = (lows[:, None] >> np.arange(low)) & 1
        out += _pack_bits(bits.reshape(-1))
    high = np.zeros(hi_bytes * 8, dtype=np.uint8)
    high[(idx >> low) + np.arange(n)] = 1
    out += _pack_bits(high)
    assert len(out) == lo_bytes + hi_bytes
    return out, {"low_bits": low}


def rowcol_structure(idx: np.ndarray, shape) -> tuple[np.ndarray, np.ndarray, bool] | None:
    """Full rows, full columns and the diagonal whose union is exactly `idx` (a SHiRA-Struct mask), if any."""
    r, c = rows_cols(shape)
    mask = np.zeros(r * c, dtype=bool)
    mask[idx] = True
    mask = mask.reshape(r, c)
    rows = np.flatnonzero(mask.all(axis=1))
    cols = np.flatnonzero(mask.all(axis=0))
    if rows.size == 0 and cols.size == 0:
        return None
    for diag in (False, True):
        m = np.zeros_like(mask)
        m[rows, :] = True
        m[:, cols] = True
        if diag:
            d = np.arange(min(r, c))
            m[d, d] = True
        if np.array_equal(m, mask):
            return rows, cols, diag
    return None


def encode_indices(coding: str, d: SparseDelta) -> tuple[bytes | None, str | None, dict]:
    """-> (buffer bytes or None, safetensors dtype, index_params)."""
    numel = int(np.prod(d.shape))
    idx = np.asarray(d.indices, dtype=np.int64)
    if coding == "flat-u32":
        if numel > 2**32:
            raise ValueError(f"tensor {d.target}: {numel} entries do not fit 32-bit flat indices")
        return idx.astype("<u4").tobytes(), "U32", {}
    if coding == "elias-fano":
        buf, params = encode_elias_fano(idx, numel)
        return buf, "U8", params
    if coding == "bitmap":
        bits = np.zeros(numel, dtype=np.uint8)
        bits[idx] = 1
        return _pack_bits(bits), "U8", {}
    if coding == "rowcol":
        s = rowcol_structure(idx, d.shape)
        if s is None:
            raise ValueError(f"tensor {d.target}: the mask is not whole rows/columns (+ diagonal)")
        rows, cols, diag = s
        words = np.concatenate([[rows.size, cols.size, int(diag)], rows, cols]).astype("<u4")
        return words.tobytes(), "U32", {}
    if coding == "seed":
        if numel > 2**32:
            raise ValueError(f"tensor {d.target}: seed coding is limited to 2^32 entries (FORMAT.md §4)")
        if d.seed is None or not np.array_equal(seeded_indices(d.seed, numel, idx.size), idx):
            raise ValueError(f"tensor {d.target}: the mask was not generated from a known seed")
        return None, None, {"seed": str(int(d.seed))}
    raise ValueError(f"unknown index coding {coding!r}; choose from {', '.join(INDEX_CODINGS)}")


def choose_index_coding(d: SparseDelta) -> str:
    """The smallest applicable coding: seed (0 bytes) > rowcol > min(elias-fano, bitmap, flat-u32)."""
    numel, n = int(np.prod(d.shape)), d.indices.size
    if d.seed is not None and n and numel <= 2**32 and np.array_equal(seeded_indices(d.seed, numel, n), d.indices):
        return "seed"
    sizes = {"elias-fano": sum(ef_sizes(numel, n, ef_low_bits(numel, n))), "bitmap": (numel + 7) // 8}
    if numel <= 2**32:
        sizes["flat-u32"] = 4 * n
    if 0 < n < numel and min(sizes.values()) > 16 and rowcol_structure(d.indices, d.shape) is not None:
        return "rowcol"
    return min(sizes, key=lambda k: (sizes[k], k))


# ---- values -------------------------------------------------------------------------------------------------
def f32_to_bf16_bits(v: np.ndarray) -> np.ndarray:
    """Round to nearest even, as IEEE-754 binary16 'brain float' (finite inputs)."""
    u = np.asarray(v, dtype=np.float32).view(np.uint32)
    return ((u + (((u >> 16) & 1) + 0x7FFF)) >> 16).astype(np.uint16)


def encode_values(coding: str, d: SparseDelta) -> tuple[bytes, dict, bytes | None]:
    """-> (value buffer, value_params, row-scale buffer or None)."""
    v = np.asarray(d.values, dtype=np.float32)
    if coding == "f32":
        return v.astype("<f4").tobytes(), {}, None
    if coding == "f16":
        if v.size and np.max(np.abs(v)) > 65504:
            raise ValueError(f"tensor {d.target}: values exceed the f16 range; use f32 or bf16")
        return v.astype("<f2").tobytes(), {}, None
    if coding == "bf16":
        return f32_to_bf16_bits(v).astype("<u2").tobytes(), {}, None
    if coding == "int8":
        scale = np.float32(np.max(np.abs(v)) / 127) if v.size else np.float32(0)
        q = np.clip(np.rint(v / scale), -127, 127) if scale > 0 else np.zeros_like(v)
        return q.astype(np.int8).tobytes(), {"scale": float(scale)}, None
    if coding == "int8-row":
        r, c = rows_cols(d.shape)
        row = np.asarray(d.indices) // c
        amax = np.zeros(r, dtype=np.float32)
        np.maximum.at(amax, row, np.abs(v))
        scales = (amax / np.float32(127)).astype(np.float32)
        s = scales[row]
        q = np.where(s > 0, np.clip(np.rint(v / np.where(s > 0, s, 1)), -127, 127), 0)
        return q.astype(np.int8).tobytes(), {}, scales.astype("<f4").tobytes()
    raise ValueError(f"unknown value coding {coding!r}; choose from {', '.join(VALUE_BUFFER_DTYPE)}")


def value_error(coding: str, d: SparseDelta) -> float:
    """Max abs error the value coding introduces against the source values."""
    buf, params, scales = encode_values(coding, d)
    back = decode_values(coding, params, buf, scales, np.asarray(d.indices, dtype=np.int64), d.shape)
    return float(np.max(np.abs(back - d.values))) if d.values.size else 0.0


# ---- the file -----------------------------------------------------------------------------------------------
def encode_blob(name: str, base_fingerprint: str, deltas: list[SparseDelta], value_coding: str = DEFAULT_VALUES,
                index_coding: str = "auto") -> bytes:
    buffers: list[tuple[str, str, bytes]] = []  # key, dtype, bytes
    entries = []
    for d in sorted(deltas, key=lambda d: d.target):
        ic = choose_index_coding(d) if index_coding == "auto" else index_coding
        ibuf, idtype, iparams = encode_indices(ic, d)
        vbuf, vparams, sbuf = encode_values(value_coding, d)
        ikey, vkey, skey = f"{d.target}:indices", f"{d.target}:values", f"{d.target}:row_scales"
        entry = {"target": d.target, "shape": list(d.shape), "nnz": int(d.indices.size),
                 "index_coding": ic, "index_key": ikey if ibuf is not None else None, "index_params": iparams,
                 "value_coding": value_coding, "value_key": vkey, "value_params": vparams}
        crc = 0
        if ibuf is not None:
            buffers.append((ikey, idtype, ibuf))
            crc = zlib.crc32(ibuf, crc)
        buffers.append((vkey, VALUE_BUFFER_DTYPE[value_coding], vbuf))
        crc = zlib.crc32(vbuf, crc)
        if sbuf is not None:
            buffers.append((skey, "F32", sbuf))
            crc = zlib.crc32(sbuf, crc)
            entry["scale_key"] = skey
        entry["crc32"] = crc
        entries.append(entry)
    buffers.sort(key=lambda b: -ELEMENT_SIZE[b[1]])  # stable: aligned, deterministic
    header: dict = {}
    offset = 0
    for key, dt, data in buffers:
        header[key] = {"dtype": dt, "shape": [len(data) // ELEMENT_SIZE[dt]], "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    data = b"".join(b[2] for b in buffers)
    tensors_json = json.dumps(entries, separators=(",", ":"))
    header["__metadata__"] = {
        "shira.format": "shira-adapter", "shira.version": "1", "shira.name": name,
        "shira.base_fingerprint": base_fingerprint, "shira.tensors": tensors_json,
        "shira.header_crc32": str(header_crc32(name, base_fingerprint, tensors_json)),
        "shira.data_crc32": str(zlib.crc32(data)),
    }
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hjson += b" " * (-len(hjson) % 8)
    return struct.pack("<Q", len(hjson)) + hjson + data


def write_blob(path, name: str, base_fingerprint: str, deltas: list[SparseDelta], value_coding: str = DEFAULT_VALUES,
               index_coding: str = "auto") -> int:
    blob = encode_blob(name, base_fingerprint, deltas, value_coding, index_coding)
    write_bytes(path, blob)
    return len(blob)
