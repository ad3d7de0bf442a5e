"""An independent reader and patcher of SHiRA adapter blobs, written literally from docs/FORMAT.md §1-§7.

It shares no code with runtime/ (no numpy either): plain loops over bytes, bits and entries, Python integers
for every count and offset, `struct` for every float conversion. It is slow on purpose and short enough to
check line by line against the spec. The golden vectors in tests/vectors are generated from it, and the
runtime and the Java core are both checked against those vectors, so a misreading of FORMAT.md that the
runtime and the Java core happened to share would show up here as a disagreement.
"""
from __future__ import annotations

import json
import math
import re
import struct
import zlib


class RefError(Exception):
    """The blob is refused (FORMAT.md §7)."""


# ---- §1 container and the strict JSON rules -----------------------------------------------------------------
MAX_HEADER = 16 * 1024 * 1024
ELEMENT = {"U32": 4, "F32": 4, "F16": 2, "BF16": 2, "U8": 1, "I8": 1}


def _json(text: str, what: str):
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:  # nesting depth, outside strings
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    if deepest > 16:
        raise RefError(f"{what}: nested deeper than 16")

    def pairs(items):
        d = {}
        for k, v in items:
            if k in d:
                raise RefError(f"{what}: duplicate key {k!r}")
            d[k] = v
        return d

    def integer(s):
        if len(s.lstrip("-")) > 20:
            raise RefError(f"{what}: integer of more than 20 digits")
        return int(s)

    def number(s):
        v = float(s)
        if math.isinf(v):
            raise RefError(f"{what}: number out of binary64 range")
        return v

    def constant(s):
        raise RefError(f"{what}: {s} is not JSON")

    try:
        value = json.loads(text, object_pairs_hook=pairs, parse_int=integer, parse_float=number,
                           parse_constant=constant)
    except json.JSONDecodeError as e:
        raise RefError(f"{what}: invalid JSON ({e.msg})") from None

    def walk(v):
        if isinstance(v, str):
            for ch in v:
                if 0xD800 <= ord(ch) <= 0xDFFF:
                    raise RefError(f"{what}: lone surrogate in a string")
        elif isinstance(v, list):
            for x in v:
                walk(x)
        elif isinstance(v, dict):
            for k, x in v.items():
                walk(k)
                walk(x)

    walk(value)
    return value


def _int(x) -> bool:
    return type(x) is int


def parse_container(data: bytes):
    if len(data) < 8:
        raise RefError("truncated: shorter than 8 bytes")
    n = int.from_bytes(data[0:8], "little")
    if n > MAX_HEADER:
        raise RefError("header larger than 16 MiB")
    if 8 + n > len(data):
        raise RefError("truncated: header runs past the end")
    try:
        text = data[8 : 8 + n].decode("utf-8")
    except UnicodeDecodeError:
        raise RefError("header is not UTF-8") from None
    header = _json(text, "header")
    if not isinstance(header, dict):
        raise RefError("header is not a JSON object")
    region = data[8 + n :]
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise RefError("__metadata__ must map strings to strings")
    buffers = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(e, dict) or not isinstance(e.get("dtype"), str) or not isinstance(e.get("shape"), list) \
                or not isinstance(e.get("data_offsets"), list) or len(e["data_offsets"]) != 2:
            raise RefError(f"buffer {name}: malformed entry")
        if not all(_int(x) for x in e["shape"] + e["data_offsets"]) or len(e["shape"]) > 8:
            raise RefError(f"buffer {name}: malformed entry")
        if e["dtype"] not in ELEMENT:
            raise RefError(f"buffer {name}: dtype {e['dtype']} not allowed")
        begin, end = e["data_offsets"]
        count = 1
        for d in e["shape"]:
            if d < 0:
                raise RefError(f"buffer {name}: negative dimension")
            count *= d
        if not (0 <= begin <= end <= len(region)):
            raise RefError(f"buffer {name}: outside the data region (truncated)")
        if end - begin != count * ELEMENT[e["dtype"]]:
            raise RefError(f"buffer {name}: length does not fit its shape")
        buffers[name] = (e["dtype"], e["shape"], region[begin:end])
    return meta, buffers, region


# ---- §2 metadata, §3 tensor entries -------------------------------------------------------------------------
def _decimal_u32(s):
    if not isinstance(s, str) or not re.fullmatch(r"[0-9]{1,10}", s) or int(s) >= 2**32:
        raise RefError("checksum field is not a decimal number below 2^32")
    return int(s)


def read_blob(data: bytes, fingerprint: str | None = None) -> dict:
    """-> {"name", "base_fingerprint", "tensors": {target: {"shape", "index_coding", "value_coding",
    "indices": [int], "values": [float32 as Python float]}}}, or RefError."""
    meta, buffers, region = parse_container(data)
    if meta.get("shira.format") != "shira-adapter":
        raise RefError("not a SHiRA adapter blob")
    if meta.get("shira.version") != "1":
        raise RefError("unsupported format version")
    for k in ("shira.name", "shira.base_fingerprint", "shira.tensors", "shira.header_crc32", "shira.data_crc32"):
        if k not in meta:
            raise RefError(f"missing {k}")
    name, fp, table = meta["shira.name"], meta["shira.base_fingerprint"], meta["shira.tensors"]
    if not 1 <= len(name) <= 1024 or any(ord(c) < 0x20 for c in name):
        raise RefError("bad shira.name")
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", fp):
        raise RefError("bad shira.base_fingerprint")
    if fingerprint is not None and fp != fingerprint:
        raise RefError("made for another base")
    header_crc, data_crc = _decimal_u32(meta["shira.header_crc32"]), _decimal_u32(meta["shira.data_crc32"])
    if zlib.crc32((name + "\n" + fp + "\n" + table).encode("utf-8")) != header_crc:
        raise RefError("checksum mismatch over the header")
    if zlib.crc32(region) != data_crc:
        raise RefError("checksum mismatch over the data region")
    entries = _json(table, "shira.tensors")
    if not isinstance(entries, list):
        raise RefError("shira.tensors is not an array")
    out = {}
    for e in entries:
        t = _tensor(e, buffers)
        if t["target"] in out:
            raise RefError(f"tensor {t['target']} listed twice")
        out[t.pop("target")] = t
    return {"name": name, "base_fingerprint": fp, "tensors": out}


def _tensor(e, buffers) -> dict:
    if not isinstance(e, dict):
        raise RefError("tensor entry is not an object")
    target, shape, nnz, crc = e.get("target"), e.get("shape"), e.get("nnz"), e.get("crc32")
    if not isinstance(target, str) or not 1 <= len(target) <= 1024:
        raise RefError("bad target")
    if not isinstance(shape, list) or not 1 <= len(shape) <= 8 or not all(_int(d) and 1 <= d < 2**31 for d in shape):
        raise RefError(f"{target}: bad shape")
    numel = 1
    for d in shape:
        numel *= d
    if numel > 2**40:
        raise RefError(f"{target}: more than 2^40 entries")
    R, C = shape[0], numel // shape[0]
    if not _int(nnz) or not 0 <= nnz <= numel:
        raise RefError(f"{target}: bad nnz")
    if not _int(crc) or not 0 <= crc < 2**32:
        raise RefError(f"{target}: bad crc32")
    ic, vc = e.get("index_coding"), e.get("value_coding")
    if ic not in ("flat-u32", "elias-fano", "bitmap", "rowcol", "seed"):
        raise RefError(f"{target}: unknown index coding")
    if vc not in ("f32", "f16", "bf16", "int8", "int8-row"):
        raise RefError(f"{target}: unknown value coding")
    ikey, vkey, skey = e.get("index_key"), e.get("value_key"), e.get("scale_key")
    if ic == "seed":
        if ikey is not None:
            raise RefError(f"{target}: index_key must be null for seed")
    elif not isinstance(ikey, str) or ikey == "":
        raise RefError(f"{target}: bad index_key")
    if not isinstance(vkey, str) or vkey == "":
        raise RefError(f"{target}: bad value_key")
    if vc == "int8-row":
        if not isinstance(skey, str) or skey == "":
            raise RefError(f"{target}: bad scale_key")
    elif skey is not None:
        raise RefError(f"{target}: scale_key only with int8-row")
    keys = [k for k in (ikey, vkey, skey) if k is not None]
    if len(set(keys)) != len(keys):
        raise RefError(f"{target}: buffers not distinct")
    ip, vp = e.get("index_params"), e.get("value_params")
    if not isinstance(ip, dict) or not isinstance(vp, dict):
        raise RefError(f"{target}: params must be objects")
    if sorted(ip) != {"elias-fano": ["low_bits"], "seed": ["seed"]}.get(ic, []):
        raise RefError(f"{target}: wrong index_params")
    if sorted(vp) != {"int8": ["scale"]}.get(vc, []):
        raise RefError(f"{target}: wrong value_params")
    if ic == "elias-fano" and (not _int(ip["low_bits"]) or not 0 <= ip["low_bits"] <= 40):
        raise RefError(f"{target}: bad low_bits")
    if ic == "seed" and (not isinstance(ip["seed"], str) or not re.fullmatch(r"[0-9]{1,20}", ip["seed"])
                         or int(ip["seed"]) >= 2**64):
        raise RefError(f"{target}: bad seed")
    if ic in ("flat-u32", "seed") and numel > 2**32:
        raise RefError(f"{target}: too many entries for {ic}")
    if vc == "int8" and (type(vp["scale"]) not in (int, float) or not math.isfinite(vp["scale"]) or vp["scale"] < 0):
        raise RefError(f"{target}: bad int8 scale")

    def buffer(key, dtype, length=None):
        if key not in buffers:
            raise RefError(f"{target}: missing buffer")
        bdt, bshape, raw = buffers[key]
        if bdt != dtype or len(bshape) != 1 or (length is not None and bshape[0] != length):
            raise RefError(f"{target}: buffer of the wrong dtype or length")
        return raw

    ibuf = None if ic == "seed" else buffer(ikey, "U32" if ic in ("flat-u32", "rowcol") else "U8")
    vbuf = buffer(vkey, {"f32": "F32", "f16": "F16", "bf16": "BF16", "int8": "I8", "int8-row": "I8"}[vc], nnz)
    sbuf = buffer(skey, "F32", R) if vc == "int8-row" else None
    running = 0
    for b in (ibuf, vbuf, sbuf):
        if b is not None:
            running = zlib.crc32(b, running)
    if running != crc:
        raise RefError(f"{target}: checksum mismatch")
    idx = _indices(ic, ip, ibuf, nnz, numel, R, C, target)
    if len(idx) != nnz:
        raise RefError(f"{target}: decoded {len(idx)} indices, nnz says {nnz}")
    for i in range(1, len(idx)):
        if idx[i] <= idx[i - 1]:
            raise RefError(f"{target}: indices not strictly increasing")
    if idx and (idx[0] < 0 or idx[-1] >= numel):
        raise RefError(f"{target}: index out of range")
    vals = _values(vc, vp, vbuf, sbuf, idx, C, target)
    for v in vals:
        if not math.isfinite(v):
            raise RefError(f"{target}: non-finite value")
    return {"target": target, "shape": shape, "index_coding": ic, "value_coding": vc, "indices": idx, "values": vals}


# ---- §4 index codings ---------------------------------------------------------------------------------------
def _bit(buf: bytes, i: int) -> int:
    return (buf[i // 8] >> (i % 8)) & 1


def _stream(buf: bytes, nbits: int, target: str) -> bytes:
    if len(buf) != (nbits + 7) // 8:
        raise RefError(f"{target}: bit stream of the wrong length")
    for i in range(nbits, 8 * len(buf)):
        if _bit(buf, i):
            raise RefError(f"{target}: nonzero padding bits")
    return buf


def _splitmix_key(seed: int, f: int) -> int:
    m = (1 << 64) - 1
    z = (seed + (f + 1) * 0x9E3779B97F4A7C15) & m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return z ^ (z >> 31)


def _indices(ic, ip, buf, nnz, numel, R, C, target) -> list[int]:
    if ic == "flat-u32":
        return [int.from_bytes(buf[4 * i : 4 * i + 4], "little") for i in range(len(buf) // 4)]
    if ic == "elias-fano":
        L = ip["low_bits"]
        want = 0  # floor(log2(numel / nnz)), exactly: the largest L with nnz * 2^L <= numel (0 if nnz = 0)
        while nnz and nnz * (1 << (want + 1)) <= numel:
            want += 1
        if L != want:
            raise RefError(f"{target}: low_bits is not floor(log2(numel/nnz))")
        H = nnz + (numel - 1) // (1 << L) + 1
        lo_len, hi_len = (nnz * L + 7) // 8, (H + 7) // 8
        if len(buf) != lo_len + hi_len:
            raise RefError(f"{target}: Elias-Fano buffer of the wrong length")
        low, high = _stream(buf[:lo_len], nnz * L, target), _stream(buf[lo_len:], H, target)
        ones = [p for p in range(H) if _bit(high, p)]
        if len(ones) != nnz:
            raise RefError(f"{target}: high stream holds the wrong number of entries")
        out = []
        for i, p in enumerate(ones):
            lo = 0
            for b in range(L):
                lo |= _bit(low, i * L + b) << b
            out.append((p - i) * (1 << L) + lo)
        return out
    if ic == "bitmap":
        bits = _stream(buf, numel, target)
        return [f for f in range(numel) if _bit(bits, f)]
    if ic == "rowcol":
        words = [int.from_bytes(buf[4 * i : 4 * i + 4], "little") for i in range(len(buf) // 4)]
        if len(words) < 3 or len(words) != 3 + words[0] + words[1] or words[2] > 1:
            raise RefError(f"{target}: malformed rowcol header")
        rows, cols = words[3 : 3 + words[0]], words[3 + words[0] :]
        if any(r >= R for r in rows) or any(c >= C for c in cols):
            raise RefError(f"{target}: row or column out of range")
        if any(b <= a for a, b in zip(rows, rows[1:])) or any(b <= a for a, b in zip(cols, cols[1:])):
            raise RefError(f"{target}: rows and columns must be strictly increasing")
        if len(rows) * C > nnz or len(cols) * R > nnz:
            raise RefError(f"{target}: rows and columns hold more than nnz entries")
        s = {r * C + c for r in rows for c in range(C)} | {r * C + c for c in cols for r in range(R)}
        if words[2]:
            s |= {d * C + d for d in range(min(R, C))}
        return sorted(s)
    seed = int(ip["seed"])  # seed
    ranked = sorted(range(numel), key=lambda f: (_splitmix_key(seed, f), f))
    return sorted(ranked[:nnz])


# ---- §5 value codings ---------------------------------------------------------------------------------------
def _f32(x: float) -> float:
    """Round a binary64 to binary32 (round to nearest even), as a Python float."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def _values(vc, vp, buf, sbuf, idx, C, target) -> list[float]:
    n = len(idx)
    if vc == "f32":
        return [struct.unpack("<f", buf[4 * i : 4 * i + 4])[0] for i in range(n)]
    if vc == "f16":
        return [struct.unpack("<e", buf[2 * i : 2 * i + 2])[0] for i in range(n)]
    if vc == "bf16":
        return [struct.unpack("<f", (int.from_bytes(buf[2 * i : 2 * i + 2], "little") << 16).to_bytes(4, "little"))[0]
                for i in range(n)]
    q = [struct.unpack("<b", buf[i : i + 1])[0] for i in range(n)]
    if vc == "int8":
        s = _f32(float(vp["scale"]))
        if not math.isfinite(s):
            raise RefError(f"{target}: int8 scale overflows binary32")
        return [_f32(q[i] * s) for i in range(n)]
    scales = [struct.unpack("<f", sbuf[4 * r : 4 * r + 4])[0] for r in range(len(sbuf) // 4)]
    for s in scales:
        if not math.isfinite(s) or s < 0:
            raise RefError(f"{target}: bad row scale")
    return [_f32(q[i] * scales[idx[i] // C]) for i in range(n)]


# ---- §6 semantics, placements of MANIFEST.md ----------------------------------------------------------------
def buffer_index(f: int, layout: str, torch_shape: list[int]) -> int:
    R = torch_shape[0]
    C = 1
    for d in torch_shape[1:]:
        C *= d
    if layout == "identity":
        return f
    if layout == "transpose2d":
        return (f % C) * R + f // C
    if layout == "channels_last":
        d1 = torch_shape[1]
        S = C // d1
        a, i, s = f // (d1 * S), (f // S) % d1, f % S
        return a * (d1 * S) + s * d1 + i
    raise RefError(f"unknown layout {layout}")


def merge_terms(ts: list[float], rule: str) -> float:
    """FORMAT.md §6.1: one entry's scaled deltas (binary64, in adapter order) -> its binary64 delta."""
    def total(xs):
        d = xs[0]
        for x in xs[1:]:
            d = d + x  # binary64, in adapter order
        return d

    if not all(math.isfinite(x) for x in ts):
        raise RefError("non-finite scaled delta")
    if rule == "sum":
        return total(ts)
    if rule == "mean":
        return total(ts) / len(ts)
    if rule == "ties":
        s = total(ts)
        kept = [x for x in ts if (x > 0 and s > 0) or (x < 0 and s < 0)]
        return total(kept) / len(kept) if kept else 0.0
    if rule == "magnitude":
        best = ts[0]
        for x in ts[1:]:
            if abs(x) > abs(best):  # strictly larger: the first among equals stays
                best = x
        return best
    raise RefError(f"unknown rule {rule}")


class ReferencePatcher:
    """Buffers as lists of float32 bit patterns; fuse() recomputes every touched entry from the base copy."""

    def __init__(self, base_bits: dict[str, list[int]], placements: dict[str, dict]):
        self.base = {k: list(v) for k, v in base_bits.items()}
        self.live = {k: list(v) for k, v in base_bits.items()}
        self.placements = placements  # target -> {"buffer", "layout", "torch_shape"[, "channel_scale"]}

    def fuse(self, adapters: list[tuple[dict, float]], rule: str = "sum") -> None:
        """`adapters`: (read_blob() result, scale) in order. FORMAT.md §6: binary64 scaled terms combined by
        `rule` (§6.1; "sum": their sum in adapter order), rounded once to binary32, added to the base in
        binary32; a single adapter at scale 1 adds its binary32 delta directly (the same thing). Untouched
        entries hold the base."""
        terms: dict[tuple[str, int], list[float]] = {}
        for blob, scale in adapters:
            for target, t in blob["tensors"].items():
                p = self.placements[target]
                per_channel = 1
                for d in p["torch_shape"][1:]:
                    per_channel *= d
                for f, v in zip(t["indices"], t["values"]):
                    if "channel_scale" in p:  # a folded weight: MANIFEST.md "Folded weights"
                        v = _f32(v * _f32(p["channel_scale"][f // per_channel]))
                    key = (p["buffer"], buffer_index(f, p["layout"], p["torch_shape"]))
                    terms.setdefault(key, []).append(float(scale) * v)  # binary64 product of two exact values
        single = len(adapters) == 1 and adapters[0][1] == 1.0
        self.live = {k: list(v) for k, v in self.base.items()}
        for (buf, i), ts in terms.items():
            w = struct.unpack("<f", struct.pack("<I", self.base[buf][i]))[0]
            if single:
                new = _f32(w + ts[0])  # the binary32 sum W + delta
            else:
                new = _f32(w + _f32(merge_terms(ts, rule)))
            if not math.isfinite(new):
                raise RefError(f"{buf}[{i}]: non-finite weight")
            self.live[buf][i] = struct.unpack("<I", struct.pack("<f", new))[0]


class ReferenceQuantPatcher:
    """Quantized buffers (docs/QUANTIZATION.md) as lists of bytes; fuse() recomputes every touched entry from the
    base bytes, entry by entry, in plain Python floats (binary64)."""

    def __init__(self, base_bytes: dict[str, list[int]], placements: dict[str, dict]):
        self.base = {k: list(v) for k, v in base_bytes.items()}
        self.live = {k: list(v) for k, v in base_bytes.items()}
        # target -> {"buffer", "torch_shape": [N, K] or [N, C, kh, kw], "bits", "block", "scales", "signed" (optional)}
        self.placements = placements
        self.clamped = 0

    @staticmethod
    def _get(buf: list[int], f: int, bits: int) -> int:
        return buf[f] if bits == 8 else (buf[f // 2] >> (4 * (f % 2))) & 15

    @staticmethod
    def _set(buf: list[int], f: int, bits: int, u: int) -> None:
        if bits == 8:
            buf[f] = u
        else:
            shift = 4 * (f % 2)
            buf[f // 2] = (buf[f // 2] & (0xF0 >> shift)) | (u << shift)

    def fuse(self, adapters: list[tuple[dict, float]], rule: str = "sum") -> None:
        terms: dict[tuple[str, int], list[float]] = {}
        for blob, scale in adapters:
            for target, t in blob["tensors"].items():
                p = self.placements[target]
                for f, v in zip(t["indices"], t["values"]):
                    terms.setdefault((target, f), []).append(float(scale) * v)
        single = len(adapters) == 1 and adapters[0][1] == 1.0
        self.live = {k: list(v) for k, v in self.base.items()}
        self.clamped = 0
        for (target, f), ts in terms.items():
            p = self.placements[target]
            bits, block = p["bits"], p["block"]
            cols = math.prod(p["torch_shape"][1:])  # a conv [N, C, kh, kw] is the matrix [N, C*kh*kw]
            d = _f32(ts[0] if single else merge_terms(ts, rule))
            if not math.isfinite(d):
                raise RefError(f"{target}[{f}]: non-finite delta")
            s = _f32(p["scales"][(f // cols) * (cols // block) + (f % cols) // block])
            z = 1 << (bits - 1)
            flip = 0x80 if p.get("signed") else 0  # signed int8: the byte is u - z in two's complement
            u = self._get(self.base[p["buffer"]], f, bits) ^ flip
            t = round((u - z) + d / s)  # binary64; Python's round() is half to even, as rint
            if t < -z or t > z - 1:
                self.clamped += 1
            self._set(self.live[p["buffer"]], f, bits, (min(max(t, -z), z - 1) + z) ^ flip)
