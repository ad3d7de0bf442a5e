"""Read and fully validate a packed SHiRA adapter blob (spec: docs/FORMAT.md).

Validation is complete before the caller sees anything, so a refused adapter can never leave a session half
patched. Decoding is vectorized numpy (runtime/codings.py); nothing loops per nonzero.
"""
from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .codings import INDEX_CODINGS, VALUE_BUFFER_DTYPE, VALUE_CODINGS, decode_indices, decode_values
from .errors import AdapterError
from .manifest import Manifest
from .safetensors_file import SafetensorsError, parse

FORMAT = "shira-adapter"
VERSION = "1"


@dataclass
class AdapterTensor:
    target: str
    shape: tuple[int, ...]
    indices: np.ndarray  # int64, strictly increasing flat indices into the torch-layout weight
    values: np.ndarray  # float32 deltas
    index_coding: str = "flat-u32"
    value_coding: str = "f32"
    stored_bytes: int = 0  # bytes of this tensor's buffers in the file
    crc32: int = 0


@dataclass
class Adapter:
    name: str
    base_fingerprint: str
    tensors: dict[str, AdapterTensor]
    source: str
    file_bytes: int = 0
    data_crc32: int = 0

    @property
    def nnz(self) -> int:
        return sum(t.indices.size for t in self.tensors.values())


def read_adapter(blob, manifest: Manifest | None = None, source: str | None = None) -> Adapter:
    """`blob` is a path or the file's bytes. With a manifest, also check the base it was made for."""
    if isinstance(blob, (str, Path)):
        source = source or str(blob)
        try:
            blob = Path(blob).read_bytes()
        except OSError as e:
            raise AdapterError(f"{source}: cannot read: {e.strerror}") from None
    source = source or "<adapter bytes>"
    try:
        st = parse(blob, source)
    except SafetensorsError as e:
        raise AdapterError(str(e)) from None
    meta = st.metadata

    def fail(msg):
        raise AdapterError(f"{source}: {msg}")

    if meta.get("shira.format") != FORMAT:
        fail(f"not a SHiRA adapter blob (shira.format={meta.get('shira.format')!r})")
    if meta.get("shira.version") != VERSION:
        fail(f"unsupported format version {meta.get('shira.version')!r}; this runtime reads version {VERSION}")
    name = meta.get("shira.name", "")
    fingerprint = meta.get("shira.base_fingerprint", "")
    if manifest is not None and fingerprint != manifest.base_fingerprint:
        fail(f"made for base {fingerprint[:19]}..., but this base is {manifest.base_fingerprint[:19]}... "
             f"({manifest.path})")
    try:
        data_crc = int(meta["shira.data_crc32"])
        tensors_json = meta["shira.tensors"]
        header_crc = int(meta["shira.header_crc32"])
    except (KeyError, ValueError) as e:
        fail(f"corrupt metadata: {e.__class__.__name__}: {e}")
    if header_crc32(name, fingerprint, tensors_json) != header_crc:
        fail("checksum mismatch over the header (edited or corrupt metadata)")
    if zlib.crc32(st.data) != data_crc:
        fail("checksum mismatch over the data region (corrupt or truncated file)")
    try:
        entries = json.loads(tensors_json)
        assert isinstance(entries, list)
    except (ValueError, AssertionError):
        fail("corrupt tensor table")

    tensors: dict[str, AdapterTensor] = {}
    for e in entries:
        t = _read_tensor(e, st, manifest, fail)
        if t.target in tensors:
            fail(f"tensor {t.target}: listed twice")
        tensors[t.target] = t
    return Adapter(name or Path(source).stem, fingerprint, tensors, source, len(st.buffer), data_crc)


def header_crc32(name: str, fingerprint: str, tensors_json: str) -> int:
    """CRC-32 of UTF-8 `name + "\n" + base_fingerprint + "\n" + tensors_json`."""
    return zlib.crc32(f"{name}\n{fingerprint}\n{tensors_json}".encode("utf-8"))


def _read_tensor(e, st, manifest, fail) -> AdapterTensor:
    try:
        target, shape, nnz = e["target"], tuple(e["shape"]), e["nnz"]
        icoding, ikey, iparams = e["index_coding"], e.get("index_key"), e.get("index_params") or {}
        vcoding, vkey, vparams = e["value_coding"], e["value_key"], e.get("value_params") or {}
        skey, crc = e.get("scale_key"), e["crc32"]
        ok = (all(isinstance(x, str) for x in (target, icoding, vcoding, vkey))
              and all(isinstance(x, (str, type(None))) for x in (ikey, skey))
              and all(type(x) is int for x in (*shape, nnz, crc)) and isinstance(iparams, dict)
              and isinstance(vparams, dict))
    except (KeyError, TypeError, AttributeError):
        ok = False
    if not ok:
        fail(f"corrupt tensor entry {str(e)[:80]}")
    where = f"tensor {target}"
    if manifest is not None:
        info = manifest.tensors.get(target)
        if info is None:
            fail(f"{where}: not a patchable tensor of this base ({manifest.path})")
        if info.shape != shape:
            fail(f"{where}: shape {list(shape)} does not match the base's {list(info.shape)}")
    if icoding not in INDEX_CODINGS or vcoding not in VALUE_CODINGS:
        fail(f"{where}: unknown index coding {icoding!r} or value coding {vcoding!r}")
    if len(shape) < 1 or nnz < 0 or nnz > int(np.prod(shape, dtype=np.int64)):
        fail(f"{where}: nnz {nnz} impossible for shape {list(shape)}")
    wanted = {vkey: (VALUE_BUFFER_DTYPE[vcoding], (nnz,))}
    if icoding != "seed":
        wanted[ikey] = ("U32" if icoding in ("flat-u32", "rowcol") else "U8", None)
    if vcoding == "int8-row":
        wanted[skey] = ("F32", (shape[0],))
    raw = {}
    for key, (dtype, want_shape) in wanted.items():
        te = st.tensors.get(key) if isinstance(key, str) else None
        if te is None or te.dtype != dtype or len(te.shape) != 1 or (want_shape and te.shape != want_shape):
            fail(f"{where}: buffer {key!r} missing or not {dtype}{list(want_shape or ['n'])}")
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
    return AdapterTensor(target, shape, idx, vals, icoding, vcoding, sum(len(r) for r in raw.values()), crc)
