"""The placement checksum: a CRC-32 over where and how a patchable weight is stored, and over its bytes.

Part of the manifest format (docs/MANIFEST.md, "Integrity"): the exporter writes it, the runtime and
`shira-pack` check it. The record covers the placement's tensor, name, layout, shapes and offset (and a
quantized placement's scales), so a file changed after export or a layout edited in the manifest is caught,
not only damaged bytes.
"""
from __future__ import annotations

import zlib

import numpy as np


def placement_record(tensor: str, torch_shape, p) -> bytes:
    """`tensor|name|layout|stored shape|torch shape|offset` + newline, shapes as `AxBxC`, offset empty if none;
    a quantized placement adds `|q<bits>/<block>/<scales>/<c if per channel, else b>` before the newline, <scales>
    its scales' name, or `@<scales_offset>:<scales_dtype>` for scales held in a program, and `/s` after if signed."""
    dims = lambda s: "x".join(str(int(d)) for d in s)  # noqa: E731
    offset = "" if p.offset is None else str(int(p.offset))
    q = ""
    if p.quant is not None:
        qt = p.quant
        where = qt.scales if qt.scales_offset is None else f"@{qt.scales_offset}:{qt.scales_dtype}"
        q = f"|q{qt.bits}/{qt.block}/{where}/{'c' if qt.per_channel else 'b'}" + ("/s" if qt.signed else "")
    return f"{tensor}|{p.name}|{p.layout}|{dims(p.shape)}|{dims(torch_shape)}|{offset}{q}\n".encode("utf-8")


def placement_crc32(tensor: str, torch_shape, p, stored, scales=None) -> int:
    """CRC-32 of the placement's record, continued over its channel_scale as float32 little-endian bytes if it
    has one (a folded weight), over its quantization scales' bytes if it is quantized (`scales`: the float32
    array), then over its stored bytes (any buffer-protocol object)."""
    crc = zlib.crc32(placement_record(tensor, torch_shape, p))
    if p.channel_scale is not None:
        crc = zlib.crc32(p.scale_array().astype("<f4").tobytes(), crc)
    if p.quant is not None:
        crc = zlib.crc32(memoryview(np.ascontiguousarray(scales, dtype="<f4")).cast("B"), crc)
    return zlib.crc32(memoryview(stored).cast("B"), crc)
