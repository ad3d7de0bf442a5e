"""Write SHiRA adapter blobs (format v1, spec: docs/FORMAT.md). The runtime's adapter_file.py reads them.

The container is safetensors: an 8-byte little-endian header length, a JSON header (padded with spaces to a
multiple of 8), then the raw buffers. All index buffers come before all value buffers so every buffer stays
aligned to its element size. SHiRA's own fields live in `__metadata__` under `shira.*` keys.
"""
from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from .atomic import write_bytes

VALUE_DTYPES = {"f32": ("F32", "<f4"), "f16": ("F16", "<f2")}


@dataclass
class SparseDelta:
    target: str  # torch parameter name, e.g. model.layers.0.mlp.up_proj.weight
    shape: tuple[int, ...]  # torch shape of that weight
    indices: np.ndarray  # strictly increasing flat row-major indices into the torch-layout weight
    values: np.ndarray  # float32 deltas


def encode_blob(name: str, base_fingerprint: str, deltas: list[SparseDelta], value_dtype: str = "f32") -> bytes:
    st_dtype, np_dtype = VALUE_DTYPES[value_dtype]
    deltas = sorted(deltas, key=lambda d: d.target)
    buffers: list[tuple[str, str, bytes, int]] = []  # key, dtype, bytes, count
    entries = []
    for d in deltas:
        numel = int(np.prod(d.shape))
        if numel > 2**32:
            raise ValueError(f"tensor {d.target}: {numel} entries do not fit 32-bit flat indices")
        ib = np.asarray(d.indices, dtype="<u4").tobytes()
        vb = np.asarray(d.values, dtype=np.float32).astype(np_dtype).tobytes()
        ikey, vkey = f"{d.target}:indices", f"{d.target}:values"
        buffers.append((ikey, "U32", ib, d.indices.size))
        entries.append({"target": d.target, "shape": list(d.shape), "nnz": int(d.indices.size),
                        "index_coding": "flat-u32", "index_key": ikey,
                        "value_dtype": value_dtype, "value_key": vkey,
                        "crc32": zlib.crc32(vb, zlib.crc32(ib))})
        buffers.append((vkey, st_dtype, vb, d.indices.size))
    buffers.sort(key=lambda b: b[1] != "U32")  # indices first: keeps every buffer aligned
    header: dict = {}
    offset = 0
    for key, dt, data, count in buffers:
        header[key] = {"dtype": dt, "shape": [count], "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    data = b"".join(b[2] for b in buffers)
    header["__metadata__"] = {
        "shira.format": "shira-adapter", "shira.version": "1", "shira.name": name,
        "shira.base_fingerprint": base_fingerprint, "shira.tensors": json.dumps(entries, separators=(",", ":")),
        "shira.data_crc32": str(zlib.crc32(data)),
    }
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hjson += b" " * (-len(hjson) % 8)
    return struct.pack("<Q", len(hjson)) + hjson + data


def write_blob(path, name: str, base_fingerprint: str, deltas: list[SparseDelta], value_dtype: str = "f32") -> int:
    blob = encode_blob(name, base_fingerprint, deltas, value_dtype)
    write_bytes(path, blob)
    return len(blob)
