"""Read and fully validate a packed SHiRA adapter blob (spec: docs/FORMAT.md).

Validation is complete before the caller sees anything, so a refused adapter can never leave a session half
patched. Decoding is vectorized numpy; nothing loops per nonzero.
"""
from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import AdapterError
from .manifest import Manifest
from .safetensors_file import SafetensorsError, parse

FORMAT = "shira-adapter"
VERSION = "1"
INDEX_CODINGS = {"flat-u32": "U32"}
VALUE_DTYPES = {"f32": "F32", "f16": "F16"}


@dataclass
class AdapterTensor:
    target: str
    indices: np.ndarray  # int64, strictly increasing flat indices into the torch-layout weight
    values: np.ndarray  # float32 deltas


@dataclass
class Adapter:
    name: str
    base_fingerprint: str
    tensors: dict[str, AdapterTensor]
    source: str

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
    name = meta.get("shira.name") or Path(source).stem
    fingerprint = meta.get("shira.base_fingerprint", "")
    if manifest is not None and fingerprint != manifest.base_fingerprint:
        fail(f"made for base {fingerprint[:19]}..., but this base is {manifest.base_fingerprint[:19]}... "
             f"({manifest.path})")
    try:
        data_crc = int(meta["shira.data_crc32"])
        entries = json.loads(meta["shira.tensors"])
    except (KeyError, ValueError) as e:
        fail(f"corrupt metadata: {e.__class__.__name__}: {e}")
    if zlib.crc32(st.data) != data_crc:
        fail("checksum mismatch over the data region (corrupt or truncated file)")

    tensors: dict[str, AdapterTensor] = {}
    for e in entries:
        try:
            target, shape, nnz = e["target"], tuple(e["shape"]), int(e["nnz"])
            icoding, vdtype, ikey, vkey, crc = (e["index_coding"], e["value_dtype"], e["index_key"],
                                                e["value_key"], int(e["crc32"]))
        except (KeyError, TypeError, ValueError):
            fail(f"corrupt tensor entry {e!r:.80}")
        where = f"tensor {target}"
        if target in tensors:
            fail(f"{where}: listed twice")
        if manifest is not None:
            info = manifest.tensors.get(target)
            if info is None:
                fail(f"{where}: not a patchable tensor of this base ({manifest.path})")
            if info.shape != shape:
                fail(f"{where}: shape {list(shape)} does not match the base's {list(info.shape)}")
        if icoding not in INDEX_CODINGS or vdtype not in VALUE_DTYPES:
            fail(f"{where}: unknown index coding {icoding!r} or value dtype {vdtype!r}")
        for key, want in ((ikey, INDEX_CODINGS[icoding]), (vkey, VALUE_DTYPES[vdtype])):
            te = st.tensors.get(key)
            if te is None or te.dtype != want or te.shape != (nnz,):
                fail(f"{where}: buffer {key!r} missing or not {want}[{nnz}]")
        if zlib.crc32(st.raw(vkey), zlib.crc32(st.raw(ikey))) != crc:
            fail(f"{where}: checksum mismatch")
        idx = st.array(ikey).astype(np.int64)
        vals = st.array(vkey).astype(np.float32)
        numel = int(np.prod(shape, dtype=np.int64))
        if nnz > 1 and not np.all(idx[1:] > idx[:-1]):
            fail(f"{where}: indices are not strictly increasing (unsorted or duplicated)")
        if nnz and idx[-1] >= numel:
            fail(f"{where}: index {int(idx[-1])} out of range for shape {list(shape)}")
        if not np.all(np.isfinite(vals)):
            fail(f"{where}: {int(np.count_nonzero(~np.isfinite(vals)))} non-finite values (NaN/inf)")
        tensors[target] = AdapterTensor(target, idx, vals)
    return Adapter(name, fingerprint, tensors, source)
