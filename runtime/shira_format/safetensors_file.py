"""A strict, dependency-free reader of the safetensors container (header + raw little-endian buffers).

Both the base weights file and the adapter blobs are safetensors files. The runtime parses them itself (no
torch, no safetensors wheel) so that it can validate every offset against the real file size and refuse a
truncated or edited file with a one-line error instead of crashing or reading garbage.

Why a hand-written reader when the safetensors library writes our files: the runtime needs writable zero-copy
views of one owned buffer (the live weights ARE that buffer), and the strict JSON rules of FORMAT.md §1.
"""
from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass

import numpy as np

DTYPES = {
    "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "F64": np.dtype("<f8"),
    "I8": np.dtype("i1"), "U8": np.dtype("u1"), "I16": np.dtype("<i2"), "U16": np.dtype("<u2"),
    "I32": np.dtype("<i4"), "U32": np.dtype("<u4"), "I64": np.dtype("<i8"), "U64": np.dtype("<u8"),
    "BF16": np.dtype("<u2"),  # raw 16-bit pattern; callers widen it to float32 themselves
}
MAX_HEADER = 100 * 1024 * 1024
MAX_JSON_DEPTH = 16  # a safetensors header is 3 deep; SHiRA's tensor table (a JSON string inside it) 4
MAX_INT_DIGITS = 20  # 2^64 has 20 digits; nothing in these files is larger


class SafetensorsError(ValueError):
    pass


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACKETS = re.compile(r"[\[\]{}]")


def _depth(text: str) -> int:
    """Deepest nesting of arrays/objects, strings skipped: checked before the recursive JSON parser runs."""
    depth = deepest = 0
    for b in _BRACKETS.findall(_STRING.sub("", text)):
        depth += 1 if b in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(digits)} digits")
    return int(digits)


def _float(text: str) -> float:
    v = float(text)
    if v in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:30]} overflows binary64")
    return v


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _unique_keys(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"key {k[:60]!r} appears twice in one object")
        out[k] = v
    return out


def strict_json(text: str, what: str):
    """json.loads for untrusted headers: bounded depth and integer size, no NaN/Infinity, no duplicate keys,
    no lone UTF-16 surrogates. Raises ValueError with a short reason."""
    if _depth(text) > MAX_JSON_DEPTH:
        raise ValueError(f"{what} nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        value = json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_no_constant, object_pairs_hook=_unique_keys)
        json.dumps(value, ensure_ascii=False).encode("utf-8")  # a lone surrogate ("\ud800") cannot be encoded
    except RecursionError:
        raise ValueError(f"{what} nests too deeply") from None
    except UnicodeEncodeError:
        raise ValueError(f"{what} holds a string that is not valid Unicode (a lone surrogate)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} is not valid JSON: {e}") from None
    return value


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # offsets relative to the start of the data region
    end: int


@dataclass
class SafetensorsFile:
    """A parsed file: `buffer` is the whole file, `data_start` where the tensor data region begins."""

    buffer: memoryview
    data_start: int
    metadata: dict[str, str]
    tensors: dict[str, TensorEntry]

    def raw(self, name: str) -> memoryview:
        e = self.tensors[name]
        return self.buffer[self.data_start + e.start : self.data_start + e.end]

    def array(self, name: str) -> np.ndarray:
        """A zero-copy view; writable only if `buffer` is."""
        e = self.tensors[name]
        return np.frombuffer(self.raw(name), dtype=DTYPES[e.dtype]).reshape(e.shape)

    @property
    def data(self) -> memoryview:
        return self.buffer[self.data_start :]


def parse(buffer, source: str = "<bytes>", max_header: int = MAX_HEADER) -> SafetensorsFile:
    """Parse and validate. `source` is only used in error messages."""
    mv = memoryview(buffer).cast("B")
    size = len(mv)
    if size < 8:
        raise SafetensorsError(f"{source}: truncated: {size} bytes, shorter than the 8-byte header length")
    (hlen,) = struct.unpack("<Q", mv[:8])
    if hlen > max_header:
        raise SafetensorsError(f"{source}: corrupt: header of {hlen} bytes, more than the {max_header} allowed")
    if 8 + hlen > size:
        raise SafetensorsError(f"{source}: truncated or corrupt: header claims {hlen} bytes, file has {size}")
    try:
        header = strict_json(bytes(mv[8 : 8 + hlen]).decode("utf-8"), "the header")
    except UnicodeDecodeError as e:
        raise SafetensorsError(f"{source}: corrupt header: not UTF-8 ({e.reason} at byte {e.start})") from None
    except ValueError as e:
        raise SafetensorsError(f"{source}: corrupt header: {e}") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{source}: corrupt header: not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise SafetensorsError(f"{source}: corrupt header: __metadata__ must map strings to strings")
    data_start = 8 + hlen
    data_len = size - data_start
    tensors: dict[str, TensorEntry] = {}
    for name, info in header.items():
        try:
            dtype, shape, (start, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
            if not (isinstance(dtype, str) and isinstance(info["shape"], list)
                    and all(type(x) is int for x in (*shape, start, end)) and len(shape) <= 8):
                raise TypeError
        except (KeyError, TypeError, ValueError):
            raise SafetensorsError(f"{source}: tensor {name!r}: malformed header entry") from None
        if dtype not in DTYPES:
            raise SafetensorsError(f"{source}: tensor {name!r}: unsupported dtype {dtype!r}")
        if any(d < 0 for d in shape):
            raise SafetensorsError(f"{source}: tensor {name!r}: negative dimension in shape {list(shape)}")
        if not 0 <= start <= end <= data_len:
            raise SafetensorsError(
                f"{source}: tensor {name!r}: data [{start}, {end}) lies outside the {data_len}-byte data region "
                "(truncated file?)")
        if end - start != int(np.prod(shape, dtype=object)) * DTYPES[dtype].itemsize:
            raise SafetensorsError(f"{source}: tensor {name!r}: {end - start} bytes do not fit {dtype}{list(shape)}")
        tensors[name] = TensorEntry(name, dtype, shape, start, end)
    return SafetensorsFile(mv, data_start, metadata, tensors)


def read_file(path, writable: bool = False) -> SafetensorsFile:
    """Read a whole file into memory the caller owns (writable if asked: the runtime patches it in place)."""
    with open(path, "rb") as f:
        if writable:  # straight into the buffer we keep: no second copy, no transient 2x peak
            size = os.fstat(f.fileno()).st_size
            data = bytearray(size)
            if f.readinto(data) != size:
                raise SafetensorsError(f"{path}: the file changed size while being read")
        else:
            data = f.read()
    return parse(data, str(path))
