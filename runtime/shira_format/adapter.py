"""The adapter blob (spec: docs/FORMAT.md): SparseTensor, the one sparse-delta type, and the blob's reader and writer.

Reading validates everything before the caller sees anything, so a refused adapter can never leave a session
half patched. Writing is deterministic: the same tensors always give the same bytes. The safetensors library
writes the container; reading uses safetensors_file.py (why: see there). Decoding is vectorized numpy.
"""
from __future__ import annotations

import json
import math
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .atomic import write_bytes
from .codings import (
    INDEX_CODINGS,
    VALUE_BUFFER_DTYPE,
    VALUE_CODINGS,
    choose_index_coding,
    decode_indices,
    decode_values,
    encode_indices,
    encode_values,
)
from .errors import AdapterError, printable
from .manifest import FINGERPRINT, MAX_RANK, Manifest, is_int, valid_shape
from .safetensors_file import SafetensorsError, parse, strict_json

FORMAT = "shira-adapter"
VERSION = "1"


@dataclass
class SparseTensor:
    """A sparse delta to one weight, in torch coordinates: what packers produce, blobs store and sessions patch."""

    target: str  # torch parameter name, e.g. model.layers.0.mlp.up_proj.weight
    shape: tuple[int, ...]  # torch shape of that weight
    indices: np.ndarray  # int64, strictly increasing flat row-major indices into the torch-layout weight
    values: np.ndarray  # float32 deltas
    seed: int | None = None  # the mask is codings.seeded_indices(seed, numel, nnz): `seed` coding stores no indices
    # as read from a blob (None/0 for a tensor not read from a file)
    index_coding: str | None = None
    value_coding: str | None = None
    stored_bytes: int = 0  # bytes of this tensor's buffers in the file
    crc32: int = 0
    stats: dict = field(default_factory=dict)  # what a packer measured, e.g. the sparsification error

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass
class Adapter:
    name: str
    base_fingerprint: str
    tensors: dict[str, SparseTensor]
    source: str
    file_bytes: int = 0
    data_crc32: int = 0

    @property
    def nnz(self) -> int:
        return sum(t.indices.size for t in self.tensors.values())


MAX_ADAPTER_HEADER = 16 * 1024 * 1024  # bytes of safetensors header; a 1B-parameter model's table is ~100 KB
MAX_NUMEL = 2**40
MAX_FLAT_NUMEL = 2**32  # flat-u32 and seed (FORMAT.md §4)
MAX_NAME = 1024
_DECIMAL_U32 = re.compile(r"[0-9]{1,10}")
_DECIMAL_U64 = re.compile(r"[0-9]{1,20}")
META_FORMAT, META_VERSION, META_NAME = "shira.format", "shira.version", "shira.name"
META_FINGERPRINT, META_TENSORS = "shira.base_fingerprint", "shira.tensors"
META_HEADER_CRC, META_DATA_CRC = "shira.header_crc32", "shira.data_crc32"
REQUIRED_META = (META_FORMAT, META_VERSION, META_NAME, META_FINGERPRINT, META_TENSORS, META_HEADER_CRC, META_DATA_CRC)
DEFAULT_VALUES = "f16"
# index/value params: coding -> {key: check}; every other coding takes an empty object
INDEX_PARAMS = {"elias-fano": ("low_bits",), "seed": ("seed",)}
VALUE_PARAMS = {"int8": ("scale",)}


def _u32_decimal(text) -> int | None:
    return int(text) if isinstance(text, str) and _DECIMAL_U32.fullmatch(text) and int(text) < 2**32 else None


def read_adapter(blob, manifest: Manifest | None = None, source: str | None = None) -> Adapter:
    """`blob` is a path or the file's bytes. With a manifest, also check the base it was made for.

    Every malformed input raises AdapterError (one line, naming the file): FORMAT.md §7, read strictly."""
    if isinstance(blob, (str, Path)):
        source = source or str(blob)
        try:
            blob = Path(blob).read_bytes()
        except OSError as e:
            raise AdapterError(f"{source}: cannot read: {e.strerror or e}") from None
    source = source or "<adapter bytes>"
    try:
        return _read(blob, manifest, source)
    except MemoryError:
        raise AdapterError(f"{source}: too large to decode in this process's memory") from None


def _read(blob, manifest, source) -> Adapter:
    head = bytes(memoryview(blob).cast("B")[:9])
    if len(head) == 9 and head[8:9] != b"{":  # every blob starts with its header length, then a JSON object
        raise AdapterError(f"{source}: not a SHiRA adapter blob (no safetensors header at its start)")
    try:
        st = parse(blob, source, max_header=MAX_ADAPTER_HEADER)
    except SafetensorsError as e:
        raise AdapterError(str(e)) from None
    meta = st.metadata

    def fail(msg):
        raise AdapterError(f"{source}: {printable(msg)}")

    if meta.get(META_FORMAT) != FORMAT:
        fail(f"not a SHiRA adapter blob (shira.format={str(meta.get('shira.format'))[:40]!r})")
    if meta.get(META_VERSION) != VERSION:
        fail(f"unsupported format version {str(meta.get('shira.version'))[:20]!r}; this runtime reads version {VERSION}")
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        fail(f"corrupt metadata: missing {', '.join(missing)}")
    name, fingerprint, tensors_json = meta[META_NAME], meta[META_FINGERPRINT], meta[META_TENSORS]
    if not 0 < len(name) <= MAX_NAME or any(ord(ch) < 0x20 for ch in name):
        fail(f"corrupt metadata: shira.name must be 1 to {MAX_NAME} printable characters")
    if not FINGERPRINT.fullmatch(fingerprint):
        fail("corrupt metadata: shira.base_fingerprint is not 'sha256:' and 64 lowercase hex digits")
    if manifest is not None and fingerprint != manifest.base_fingerprint:
        fail(f"made for base {fingerprint[:19]}..., but this base is {manifest.base_fingerprint[:19]}... "
             f"({manifest.path}): the adapter belongs to another model or another export")
    header_crc, data_crc = _u32_decimal(meta[META_HEADER_CRC]), _u32_decimal(meta[META_DATA_CRC])
    if header_crc is None or data_crc is None:
        fail("corrupt metadata: shira.header_crc32 and shira.data_crc32 must be decimal numbers below 2^32")
    if header_crc32(name, fingerprint, tensors_json) != header_crc:
        fail("checksum mismatch over the header (edited or corrupt metadata)")
    if zlib.crc32(st.data) != data_crc:
        fail("checksum mismatch over the data region (corrupt or truncated file)")
    try:
        entries = strict_json(tensors_json, "the tensor table")
    except ValueError as e:
        fail(f"corrupt tensor table: {e}")
    if not isinstance(entries, list):
        fail("corrupt tensor table: not a JSON array")

    tensors: dict[str, SparseTensor] = {}
    for e in entries:
        t = _read_tensor(e, st, manifest, fail)
        if t.target in tensors:
            fail(f"tensor {t.target}: listed twice")
        tensors[t.target] = t
    return Adapter(name, fingerprint, tensors, source, len(st.buffer), data_crc)


def header_crc32(name: str, fingerprint: str, tensors_json: str) -> int:
    """CRC-32 of UTF-8 `name + "\n" + base_fingerprint + "\n" + tensors_json`."""
    return zlib.crc32(f"{name}\n{fingerprint}\n{tensors_json}".encode("utf-8"))


def _entry_fields(e, fail) -> tuple:
    """Every field of a tensor entry, type- and range-checked before any arithmetic (FORMAT.md §3)."""
    if not isinstance(e, dict):
        fail(f"corrupt tensor entry: not a JSON object: {str(e)[:60]}")
    target = e.get("target")
    where = f"tensor {str(target)[:120]}"
    if not isinstance(target, str) or not 0 < len(target) <= MAX_NAME:
        fail(f"corrupt tensor entry: target must be a non-empty string: {str(e)[:60]}")
    shape = e.get("shape")
    if not valid_shape(shape):
        fail(f"{where}: shape must be 1 to {MAX_RANK} integers in [1, 2^31), got {str(shape)[:60]}")
    numel = 1
    for d in shape:
        numel *= d
    if numel > MAX_NUMEL:
        fail(f"{where}: shape {shape} has more than 2^40 entries")
    nnz = e.get("nnz")
    if not is_int(nnz) or not 0 <= nnz <= numel:
        fail(f"{where}: nnz {str(nnz)[:30]} impossible for shape {shape}")
    crc = e.get("crc32")
    if not is_int(crc) or not 0 <= crc < 2**32:
        fail(f"{where}: crc32 must be an integer in [0, 2^32)")
    icoding, vcoding = e.get("index_coding"), e.get("value_coding")
    if icoding not in INDEX_CODINGS:
        fail(f"{where}: unknown index coding {str(icoding)[:30]!r}")
    if vcoding not in VALUE_CODINGS:
        fail(f"{where}: unknown value coding {str(vcoding)[:30]!r}")
    ikey, vkey, skey = e.get("index_key"), e.get("value_key"), e.get("scale_key")
    if icoding == "seed" and ikey is not None:
        fail(f"{where}: index_key must be null for seed coding")
    if icoding != "seed" and (not isinstance(ikey, str) or not ikey):
        fail(f"{where}: index_key must be a buffer name")
    if not isinstance(vkey, str) or not vkey:
        fail(f"{where}: value_key must be a buffer name")
    if vcoding == "int8-row" and (not isinstance(skey, str) or not skey):
        fail(f"{where}: scale_key must be a buffer name for int8-row values")
    if vcoding != "int8-row" and skey is not None:
        fail(f"{where}: scale_key is only allowed with int8-row values")
    if len({k for k in (ikey, vkey, skey) if k is not None}) != sum(k is not None for k in (ikey, vkey, skey)):
        fail(f"{where}: index, value and scale buffers must be distinct")
    iparams, vparams = e.get("index_params"), e.get("value_params")
    for label, params, coding, spec in (("index_params", iparams, icoding, INDEX_PARAMS),
                                        ("value_params", vparams, vcoding, VALUE_PARAMS)):
        if not isinstance(params, dict):
            fail(f"{where}: {label} must be a JSON object")
        if set(params) != set(spec.get(coding, ())):
            fail(f"{where}: {label} of {coding} must hold exactly {list(spec.get(coding, ())) or 'nothing'}, "
                 f"got {sorted(params)[:5]}")
    if icoding == "elias-fano" and (not is_int(iparams["low_bits"]) or not 0 <= iparams["low_bits"] <= 40):
        fail(f"{where}: low_bits must be an integer in [0, 40]")
    if icoding == "seed":
        seed = iparams["seed"]
        if not isinstance(seed, str) or not _DECIMAL_U64.fullmatch(seed) or int(seed) >= 2**64:
            fail(f"{where}: seed must be a decimal string below 2^64")
    if icoding in ("flat-u32", "seed") and numel > MAX_FLAT_NUMEL:
        fail(f"{where}: {icoding} coding is limited to 2^32 entries, shape {shape} has {numel}")
    if vcoding == "int8":
        scale = vparams["scale"]
        if type(scale) not in (int, float) or not math.isfinite(scale) or scale < 0:
            fail(f"{where}: int8 scale must be a finite non-negative JSON number")
    return target, tuple(shape), nnz, crc, icoding, ikey, iparams, vcoding, vkey, vparams, skey


def _read_tensor(e, st, manifest, fail) -> SparseTensor:
    target, shape, nnz, crc, icoding, ikey, iparams, vcoding, vkey, vparams, skey = _entry_fields(e, fail)
    where = f"tensor {target}"
    if manifest is not None:
        info = manifest.tensors.get(target)
        if info is None:
            fail(f"{where}: not a patchable tensor of this base ({manifest.path})")
        if info.shape != shape:
            fail(f"{where}: shape {list(shape)} does not match the base's {list(info.shape)}")
    wanted = {vkey: (VALUE_BUFFER_DTYPE[vcoding], (nnz,))}
    if icoding != "seed":
        wanted[ikey] = ("U32" if icoding in ("flat-u32", "rowcol") else "U8", None)
    if vcoding == "int8-row":
        wanted[skey] = ("F32", (shape[0],))
    raw = {}
    for key, (dtype, want_shape) in wanted.items():
        te = st.tensors.get(key)
        if te is None or te.dtype != dtype or len(te.shape) != 1 or (want_shape and te.shape != want_shape):
            fail(f"{where}: buffer {key[:80]!r} missing or not {dtype}{list(want_shape or ['n'])}")
        raw[key] = st.raw(key)
    running = 0
    for key in (ikey, vkey, skey):  # CRC over the tensor's buffers in this order
        if key in raw:
            running = zlib.crc32(raw[key], running)
    if running != crc:
        fail(f"{where}: checksum mismatch")
    try:
        idx = decode_indices(icoding, iparams, bytes(raw[ikey]) if ikey in raw else None, nnz, shape)
        vals = decode_values(vcoding, vparams, raw[vkey], raw.get(skey), idx, shape)
    except (ValueError, KeyError, TypeError, OverflowError, IndexError) as err:
        fail(f"{where}: {err}")
    if not np.all(np.isfinite(vals)):
        fail(f"{where}: {int(np.count_nonzero(~np.isfinite(vals)))} non-finite values (NaN/inf)")
    seed = int(iparams["seed"]) if icoding == "seed" else None
    return SparseTensor(target, shape, idx, vals, seed, icoding, vcoding, sum(len(r) for r in raw.values()), crc)


# ---- writing ------------------------------------------------------------------------------------------------
def encode_adapter(name: str, base_fingerprint: str, tensors: list[SparseTensor], value_coding: str = DEFAULT_VALUES,
                   index_coding: str = "auto") -> bytes:
    """The blob's bytes. `index_coding="auto"` picks the smallest coding per tensor (codings.choose_index_coding).

    Needs the safetensors and ml_dtypes packages (installed with the toolchain; a device only reads)."""
    import ml_dtypes
    from safetensors.numpy import save

    numpy_dtype = {"U32": "<u4", "F32": "<f4", "F16": "<f2", "BF16": ml_dtypes.bfloat16, "U8": "u1", "I8": "i1"}
    buffers: dict[str, np.ndarray] = {}
    entries = []
    for t in sorted(tensors, key=lambda t: t.target):
        ic = choose_index_coding(t) if index_coding == "auto" else index_coding
        ibuf, idtype, iparams = encode_indices(ic, t)
        vbuf, vparams, sbuf = encode_values(value_coding, t)
        ikey, vkey, skey = f"{t.target}:indices", f"{t.target}:values", f"{t.target}:row_scales"
        entry = {"target": t.target, "shape": list(t.shape), "nnz": int(t.indices.size),
                 "index_coding": ic, "index_key": ikey if ibuf is not None else None, "index_params": iparams,
                 "value_coding": value_coding, "value_key": vkey, "value_params": vparams}
        crc = 0  # over the tensor's buffers in the order index, value, scale
        for key, dtype, buf in ((ikey, idtype, ibuf), (vkey, VALUE_BUFFER_DTYPE[value_coding], vbuf),
                                (skey, "F32", sbuf)):
            if buf is not None:
                buffers[key] = np.frombuffer(buf, dtype=numpy_dtype[dtype])
                crc = zlib.crc32(buf, crc)
        if sbuf is not None:
            entry["scale_key"] = skey
        entry["crc32"] = crc
        entries.append(entry)
    tensors_json = json.dumps(entries, separators=(",", ":"))
    meta = {META_FORMAT: FORMAT, META_VERSION: VERSION, META_NAME: name, META_FINGERPRINT: base_fingerprint,
            META_TENSORS: tensors_json, META_HEADER_CRC: str(header_crc32(name, base_fingerprint, tensors_json))}
    # the data CRC covers the data region, which safetensors lays out (by dtype size, then name) independently
    # of the metadata: serialize once to learn it, then again with its CRC
    meta[META_DATA_CRC] = "0"
    first = save(buffers, metadata=meta)
    meta[META_DATA_CRC] = str(zlib.crc32(memoryview(first)[8 + int.from_bytes(first[:8], "little"):]))
    return _sorted_metadata(save(buffers, metadata=meta))


def _sorted_metadata(blob: bytes) -> bytes:
    """The same file with `__metadata__` keys in sorted order. Why: safetensors emits them in hash order (a
    different order per process), and a blob must be byte-deterministic (same adapter, same bytes, same CRC)."""
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (n - len(text))
    if len(text) != n:
        raise AssertionError("re-serialized safetensors header changed length")
    return blob[:8] + text + blob[8 + n :]


def write_adapter(path, name: str, base_fingerprint: str, tensors: list[SparseTensor],
                  value_coding: str = DEFAULT_VALUES, index_coding: str = "auto") -> int:
    """Write the blob atomically; -> its size in bytes."""
    blob = encode_adapter(name, base_fingerprint, tensors, value_coding, index_coding)
    write_bytes(path, blob)
    return len(blob)
