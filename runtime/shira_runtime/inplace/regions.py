"""Where an optimized .onnx keeps its external weights: a minimal protobuf reader, so the runtime needs no `onnx`.

ORT writes an optimized model's large initializers into one data file; each initializer's `external_data`
gives its `offset` and `length` there, and a weight ORT prepacked carries `prepacked_<i>` entries
"<kernel key>|<offset>;<length>;<flags>" naming where its packed copy lies in the same file. That table is all
the in-place route needs to find every copy of a weight (inplace/bake.py).

Only the fields read here are decoded (onnx.proto3): ModelProto.graph = 7; GraphProto.node = 1,
GraphProto.initializer = 5; NodeProto.input = 1; TensorProto.name = 8, external_data = 13 (key = 1, value = 2).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Region:
    initializer: str  # the initializer whose bytes (or packed bytes) these are
    kind: str  # "data" (the initializer as stored) or "prepacked" (a kernel's packed copy)
    offset: int  # bytes into the data file
    length: int


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, i
        shift += 7


def _fields(buf: bytes):
    """(field number, wire type, value) of one message; length-delimited values as bytes."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 2:
            size, i = _varint(buf, i)
            value, i = buf[i:i + size], i + size
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield field, wire, value


def read_regions(model_bytes: bytes) -> tuple[list[Region], dict[str, int]]:
    """(every external region of the model's initializers, initializer name -> how many node inputs use it)."""
    graph = b"".join(v for f, w, v in _fields(model_bytes) if f == 7 and w == 2)
    regions: list[Region] = []
    uses: dict[str, int] = {}
    for f, w, v in _fields(graph):
        if w != 2:
            continue
        if f == 1:  # NodeProto
            for nf, nw, nv in _fields(v):
                if nf == 1 and nw == 2 and nv:
                    name = nv.decode()
                    uses[name] = uses.get(name, 0) + 1
        elif f == 5:  # TensorProto
            name, entries = "", {}
            for tf, tw, tv in _fields(v):
                if tf == 8 and tw == 2:
                    name = tv.decode()
                elif tf == 13 and tw == 2:
                    kv = {ef: ev.decode() for ef, ew, ev in _fields(tv) if ew == 2}
                    entries[kv.get(1, "")] = kv.get(2, "")
            if "offset" in entries or "length" in entries:
                regions.append(Region(name, "data", int(entries.get("offset", 0)), int(entries["length"])))
            for key, value in entries.items():
                if key.startswith("prepacked_"):
                    for blob in value.split("|", 1)[1].split("|") if "|" in value else ():
                        off, length = blob.split(";")[:2]
                        regions.append(Region(name, "prepacked", int(off), int(length)))
    return regions, uses
