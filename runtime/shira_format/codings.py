"""Index and value codings of the adapter blob (spec: docs/FORMAT.md §4-§5), both ways. Vectorized numpy.

Every decoder validates what it can see (sizes, counts, padding bits) and raises ValueError with a short
reason; adapter.py adds the file and tensor names. Encoders take anything with the fields of a
SparseTensor (target, shape, indices, values, seed).

Bit streams are LSB-first: bit i of a stream is (byte[i // 8] >> (i % 8)) & 1.
"""
from __future__ import annotations

import numpy as np

INDEX_CODINGS = ("flat-u32", "elias-fano", "bitmap", "rowcol", "seed")
VALUE_CODINGS = ("f32", "f16", "bf16", "int8", "int8-row")

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
MIX1 = np.uint64(0xBF58476D1CE4E5B9)
MIX2 = np.uint64(0x94D049BB133111EB)


def rows_cols(shape) -> tuple[int, int]:
    """SHiRA views every weight as [R, C]: R = shape[0], C = product of the rest."""
    return int(shape[0]), int(np.prod(shape[1:], dtype=np.int64))


# ---- the portable PRNG behind `seed` masks ------------------------------------------------------------------
SEED_CHUNK = 1 << 22  # positions whose keys are computed at once: memory stays O(nnz + chunk) at any numel


def splitmix64_keys(seed: int, numel: int, start: int = 0) -> np.ndarray:
    """key(f) for f in [start, start + numel): mix(seed + (f + 1) * 0x9E3779B97F4A7C15 mod 2^64)."""
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + (np.arange(start + 1, start + numel + 1, dtype=np.uint64) * GOLDEN)
        z = (z ^ (z >> np.uint64(30))) * MIX1
        z = (z ^ (z >> np.uint64(27))) * MIX2
        return z ^ (z >> np.uint64(31))


def _smallest(keys: np.ndarray, pos: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The `count` smallest (key, position) pairs, in no particular order."""
    if keys.size <= count:
        return keys, pos
    kth = np.partition(keys, count - 1)[count - 1]
    below = keys < kth
    ties = np.flatnonzero(keys == kth)
    ties = ties[np.argsort(pos[ties], kind="stable")][: count - int(below.sum())]  # ties broken by position
    keep = np.concatenate([np.flatnonzero(below), ties])
    return keys[keep], pos[keep]


def seeded_indices(seed: int, numel: int, count: int) -> np.ndarray:
    """The `count` flat positions with the smallest (key, position), in increasing order."""
    if not 0 <= count <= numel:
        raise ValueError(f"count {count} outside [0, {numel}]")
    if count == numel:
        return np.arange(numel, dtype=np.int64)
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    keys, pos = np.zeros(0, np.uint64), np.zeros(0, np.int64)
    for start in range(0, numel, SEED_CHUNK):
        n = min(SEED_CHUNK, numel - start)
        keys = np.concatenate([keys, splitmix64_keys(seed, n, start)])
        pos = np.concatenate([pos, np.arange(start, start + n, dtype=np.int64)])
        keys, pos = _smallest(keys, pos, count)
    return np.sort(pos)


# ---- indices ------------------------------------------------------------------------------------------------
def _bits(buf: bytes, nbits: int) -> np.ndarray:
    arr = np.frombuffer(buf, dtype=np.uint8)
    if arr.size != (nbits + 7) // 8:
        raise ValueError(f"bit stream of {arr.size} bytes, expected {(nbits + 7) // 8}")
    bits = np.unpackbits(arr, bitorder="little")
    if bits[nbits:].any():
        raise ValueError("nonzero padding bits")
    return bits[:nbits]


def ef_low_bits(numel: int, nnz: int) -> int:
    """Elias-Fano low-part width: floor(log2(numel / nnz)), at least 0."""
    return max(0, int(np.floor(np.log2(numel / nnz)))) if nnz else 0


def ef_sizes(numel: int, nnz: int, low: int) -> tuple[int, int]:
    """Bytes of the low stream and of the high stream."""
    high_bits = nnz + ((numel - 1) >> low) + 1 if numel else nnz
    return (nnz * low + 7) // 8, (high_bits + 7) // 8


def decode_indices(coding: str, params: dict, buf: bytes | None, nnz: int, shape) -> np.ndarray:
    numel = int(np.prod(shape, dtype=np.int64))
    if coding == "flat-u32":
        idx = np.frombuffer(buf, dtype="<u4").astype(np.int64)
    elif coding == "elias-fano":
        low = int(params["low_bits"])
        if low != ef_low_bits(numel, nnz):
            raise ValueError(f"low_bits {low} is not floor(log2(numel/nnz))")
        lo_bytes, hi_bytes = ef_sizes(numel, nnz, low)
        if len(buf) != lo_bytes + hi_bytes:
            raise ValueError(f"{len(buf)} bytes, Elias-Fano of {nnz} in {numel} needs {lo_bytes + hi_bytes}")
        lows = np.zeros(nnz, dtype=np.int64)
        if low:
            bits = _bits(buf[:lo_bytes], nnz * low).reshape(nnz, low).astype(np.int64)
            lows = bits @ (np.int64(1) << np.arange(low, dtype=np.int64))
        pos = np.flatnonzero(_bits(buf[lo_bytes:], nnz + ((numel - 1) >> low) + 1))
        if pos.size != nnz:
            raise ValueError(f"high stream holds {pos.size} entries, header says {nnz}")
        idx = ((pos - np.arange(nnz)) << low) | lows
    elif coding == "bitmap":
        idx = np.flatnonzero(_bits(buf, numel)).astype(np.int64)
    elif coding == "rowcol":
        words = np.frombuffer(buf, dtype="<u4").astype(np.int64)
        if words.size < 3 or words.size != 3 + words[0] + words[1] or words[2] > 1:
            raise ValueError("malformed rowcol header")
        r, c = rows_cols(shape)
        rows, cols = words[3 : 3 + words[0]], words[3 + words[0] :]
        if (rows >= r).any() or (cols >= c).any():
            raise ValueError("row or column out of range")
        if (np.diff(rows) <= 0).any() or (np.diff(cols) <= 0).any():
            raise ValueError("rows and columns must be strictly increasing")
        if rows.size * c > nnz or cols.size * r > nnz:  # before expanding them: the union holds at least these
            raise ValueError(f"{rows.size} rows and {cols.size} columns hold more than nnz = {nnz} entries")
        parts = [(rows[:, None] * c + np.arange(c)).ravel(), (np.arange(r)[:, None] * c + cols).ravel()]
        if words[2]:
            d = np.arange(min(r, c))
            parts.append(d * c + d)
        idx = np.unique(np.concatenate(parts))
    elif coding == "seed":
        idx = seeded_indices(int(params["seed"]), numel, nnz)
    else:
        raise ValueError(f"unknown index coding {coding!r}")
    if idx.size != nnz:
        raise ValueError(f"decoded {idx.size} indices, header says {nnz}")
    if nnz > 1 and not np.all(idx[1:] > idx[:-1]):
        raise ValueError("indices are not strictly increasing (unsorted or duplicated)")
    if nnz and (idx[0] < 0 or idx[-1] >= numel):
        raise ValueError(f"index {int(idx[-1])} out of range for shape {list(shape)}")
    return idx


# ---- values -------------------------------------------------------------------------------------------------
VALUE_BUFFER_DTYPE = {"f32": "F32", "f16": "F16", "bf16": "BF16", "int8": "I8", "int8-row": "I8"}


def bf16_to_f32(raw_u16: np.ndarray) -> np.ndarray:
    return (raw_u16.astype(np.uint32) << np.uint32(16)).view(np.float32)


def decode_values(coding: str, params: dict, buf: bytes, scales: bytes | None, idx: np.ndarray, shape) -> np.ndarray:
    if coding == "f32":
        return np.frombuffer(buf, dtype="<f4").astype(np.float32)
    if coding == "f16":
        return np.frombuffer(buf, dtype="<f2").astype(np.float32)
    if coding == "bf16":
        return bf16_to_f32(np.frombuffer(buf, dtype="<u2"))
    q = np.frombuffer(buf, dtype=np.int8).astype(np.float32)
    if coding == "int8":
        with np.errstate(over="ignore"):  # a scale past float32's range becomes inf: refused below, silently
            scale = np.float32(params["scale"])
        if not np.isfinite(scale) or scale < 0:
            raise ValueError(f"bad int8 scale {params['scale']!r}")
        return q * scale
    if coding == "int8-row":
        r, c = rows_cols(shape)
        s = np.frombuffer(scales, dtype="<f4")
        if s.size != r or not np.all(np.isfinite(s)) or (s < 0).any():
            raise ValueError(f"int8-row needs {r} finite non-negative row scales")
        return q * s[idx // c]
    raise ValueError(f"unknown value coding {coding!r}")


# ======== encoding (the writer's side) ========================================================================
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


def encode_indices(coding: str, d) -> tuple[bytes | None, str | None, dict]:
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


def choose_index_coding(d) -> str:
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


def encode_values(coding: str, d) -> tuple[bytes, dict, bytes | None]:
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


def value_error(coding: str, d) -> float:
    """Max abs error the value coding introduces against the source values."""
    buf, params, scales = encode_values(coding, d)
    back = decode_values(coding, params, buf, scales, np.asarray(d.indices, dtype=np.int64), d.shape)
    return float(np.max(np.abs(back - d.values))) if d.values.size else 0.0
