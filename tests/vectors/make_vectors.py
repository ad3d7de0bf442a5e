"""Cross-language test vectors: small blobs plus their decoded content as JSON.

A second reader (the Android app's Java reader) must decode every `NAME.shira` to `NAME.json`, or refuse it
with the error named there. The blobs come from shira_format's writer; what they decode to, and the patch
sequence's bytes, come from tests/reference (a loop-based reader and patcher written from FORMAT.md alone,
sharing no code with runtime/), so the runtime and the Java core are both checked against an independent
reading of the spec. Regenerate with `python -m tests.vectors.make_vectors`; the test suite checks that the
committed files equal what this script writes (the writer is deterministic).
"""
from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np

from shira_format import layouts
from shira_format.adapter import SparseTensor, encode_adapter
from shira_format.codings import seeded_indices

from ..reference.shira_reference import ReferencePatcher, ReferenceQuantPatcher, RefError, read_blob

FINGERPRINT = "sha256:" + "ab" * 32
HERE = Path(__file__).parent


def _vals(n, seed):
    return np.round(np.random.default_rng(seed).normal(0, 0.05, n), 4).astype(np.float32)


def build_vectors() -> dict[str, tuple[bytes, dict]]:
    rng = np.random.default_rng(2024)
    shape = (12, 10)
    conv = (4, 3, 3, 3)
    rand = np.sort(rng.choice(120, 9, replace=False))
    struct = np.flatnonzero(np.add.outer(np.arange(12) % 4 == 0, np.arange(10) % 5 == 0) | np.eye(12, 10, dtype=bool))
    cases = {
        "flat_u32_f32": ([SparseTensor("fc.weight", shape, rand, _vals(9, 1))], "f32", "flat-u32"),
        "elias_fano_f16": ([SparseTensor("fc.weight", shape, rand, _vals(9, 2))], "f16", "elias-fano"),
        "bitmap_bf16": ([SparseTensor("fc.weight", shape, np.sort(rng.choice(120, 50, replace=False)), _vals(50, 3))],
                        "bf16", "bitmap"),
        "rowcol_int8": ([SparseTensor("fc.weight", shape, struct, _vals(struct.size, 4))], "int8", "rowcol"),
        "seed_int8_row": ([SparseTensor("fc.weight", shape, seeded_indices(12345, 120, 15), _vals(15, 5), seed=12345)],
                          "int8-row", "seed"),
        "conv_elias_fano_f32": ([SparseTensor("conv.weight", conv, np.sort(rng.choice(108, 7, replace=False)),
                                             _vals(7, 6))], "f32", "elias-fano"),
        "two_tensors_auto_f16": ([SparseTensor("a.weight", shape, rand, _vals(9, 7)),
                                  SparseTensor("b.weight", conv, np.array([0, 107]), _vals(2, 8))], "f16", "auto"),
        "empty_tensor": ([SparseTensor("fc.weight", shape, np.zeros(0, dtype=np.int64), np.zeros(0, np.float32))],
                         "f32", "flat-u32"),
        "seed_large_prng": ([SparseTensor("big.weight", (64, 48), seeded_indices(2**63 + 7, 3072, 40), _vals(40, 9),
                                         seed=2**63 + 7)], "f32", "seed"),
    }
    out = {}
    for name, (deltas, vcoding, icoding) in cases.items():
        blob = encode_adapter(name, FINGERPRINT, deltas, vcoding, icoding)
        ref = read_blob(blob)  # the independent reading of FORMAT.md
        out[name] = (blob, {
            "name": ref["name"], "base_fingerprint": ref["base_fingerprint"], "file_crc32": zlib.crc32(blob),
            "tensors": {target: {k: t[k] for k in ("shape", "index_coding", "value_coding", "indices", "values")}
                        for target, t in ref["tensors"].items()}})
    good = out["elias_fano_f16"][0]
    flipped = bytearray(good)
    flipped[-3] ^= 0x10
    out["corrupt_data_crc"] = (bytes(flipped), {"error": "checksum mismatch over the data region"})
    out["truncated"] = (good[:-5], {"error": "truncated"})
    for name, (blob, error) in strict_refusals(good, out["seed_int8_row"][0], out["rowcol_int8"][0]).items():
        try:
            read_blob(blob)
        except RefError:
            out[name] = (blob, {"error": error})
            continue
        raise AssertionError(f"the reference accepts the refusal vector {name}")
    return out


def edit_blob(blob: bytes, meta_edit=None, entry_edit=None, table_edit=None) -> bytes:
    """Re-frame `blob` after editing its metadata or its first tensor entry; the header CRC is recomputed, so a
    reader must refuse the result for the edit itself, not for a checksum."""
    hlen = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + hlen])
    meta = header["__metadata__"]
    if entry_edit is not None:
        entries = json.loads(meta["shira.tensors"])
        entry_edit(entries[0])
        meta["shira.tensors"] = json.dumps(entries, separators=(",", ":"))
    if table_edit is not None:
        meta["shira.tensors"] = table_edit(meta["shira.tensors"])
    if meta_edit is not None:
        meta_edit(meta)
    name, fp, table = meta.get("shira.name", ""), meta.get("shira.base_fingerprint", ""), meta.get("shira.tensors", "")
    meta["shira.header_crc32"] = str(zlib.crc32(f"{name}\n{fp}\n{table}".encode("utf-8", "surrogatepass")))
    h = json.dumps(header, separators=(",", ":")).encode("utf-8", "surrogatepass")
    h += b" " * (-len(h) % 8)
    return len(h).to_bytes(8, "little") + h + blob[8 + hlen :]


def strict_refusals(ef: bytes, seed: bytes, rowcol: bytes) -> dict[str, tuple[bytes, str]]:
    """Blobs a lenient reader would accept and FORMAT.md refuses: name -> (blob, a phrase the error contains)."""
    def setp(key, field, value):
        return lambda e: e[key].__setitem__(field, value)

    def dup_nnz(table):  # the first entry's "nnz" twice (json.dumps cannot write that)
        return table.replace('"nnz":9,', '"nnz":9,"nnz":9,', 1)

    def deep(e):
        nested = "x"
        for _ in range(40):
            nested = [nested]
        e["extra"] = nested

    return {
        "strict_missing_name": (edit_blob(ef, meta_edit=lambda m: m.pop("shira.name")), "missing shira.name"),
        "strict_params_null": (edit_blob(ef, entry_edit=lambda e: e.__setitem__("index_params", None)),
                               "index_params"),
        "strict_low_bits_string": (edit_blob(ef, entry_edit=setp("index_params", "low_bits", "4")), "low_bits"),
        "strict_seed_integer": (edit_blob(seed, entry_edit=setp("index_params", "seed", 12345)),
                                "seed must be a decimal string"),
        "strict_int8_scale_string": (edit_blob(rowcol, entry_edit=lambda e: e["value_params"].__setitem__(
            "scale", str(e["value_params"]["scale"]))), "int8 scale"),
        "strict_deep_nesting": (edit_blob(ef, entry_edit=deep), "nests deeper"),
        "strict_duplicate_key": (edit_blob(ef, table_edit=dup_nnz), "twice"),
        "strict_huge_shape": (edit_blob(ef, entry_edit=lambda e: e.__setitem__("shape", [2**32, 2**32])), "shape"),
        "strict_lone_surrogate": (edit_blob(ef, meta_edit=lambda m: m.__setitem__("shira.name", "\ud800")),
                                  "surrogate"),
        "strict_scale_key_without_int8_row": (edit_blob(ef, entry_edit=lambda e: e.__setitem__("scale_key", "x")),
                                              "scale_key"),
    }


# (scales, merge rule) per fuse; the rules (FORMAT.md §6.1) differ only where a and b overlap
PATCH_STEPS = [({"a": 1.0}, "sum"), ({"b": 1.0}, "sum"), ({"a": 0.7, "b": -0.4}, "sum"), ({"b": 2.0}, "sum"),
               ({"a": 1.0, "b": 1.0}, "sum"), ({"a": 1.0, "b": 1.0}, "mean"), ({"a": 0.7, "b": -0.4}, "ties"),
               ({"a": 1.0, "b": 1.0}, "ties"), ({"a": 1.0, "b": -1.0}, "magnitude"), ({}, "sum")]


def build_patch_case() -> dict[str, bytes]:
    """A patch sequence for a second runtime: three base buffers (one stored transposed, one channels-last, one a
    depthwise kernel folded with a BatchNorm and stored [1, kh, kw, C]), two adapters, and the exact float32 bits
    of every buffer after each fuse() of the reference patcher."""
    from shira_format.manifest import Placement

    rng = np.random.default_rng(7)
    fc, conv, dw = (12, 10), (4, 3, 3, 3), (4, 1, 3, 3)
    torch_base = {"fc.weight": rng.normal(0, 0.5, fc).astype(np.float32),
                  "conv.weight": rng.normal(0, 0.5, conv).astype(np.float32),
                  "dw.weight": rng.normal(0, 0.5, dw).astype(np.float32)}
    scale = (rng.uniform(0.5, 2.0, 4).astype(np.float32)).tolist()
    places = {"fc.weight": Placement("fc_T", (10, 12), "transpose2d"),
              "conv.weight": Placement("conv_OHWI", (4, 3, 3, 3), "channels_last"),
              "dw.weight": Placement("dw_HWC", (9, 4), "transpose2d", channel_scale=tuple(scale))}
    store = {p.name: np.ascontiguousarray(layouts.to_stored(p.layout, torch_base[t])).reshape(-1)
             for t, p in places.items()}
    shared = np.sort(rng.choice(120, 20, replace=False))
    adapters = {
        "a": encode_adapter("a", FINGERPRINT, [SparseTensor("fc.weight", fc, shared, _vals(20, 11)),
                                            SparseTensor("conv.weight", conv, np.sort(rng.choice(108, 9, replace=False)),
                                                        _vals(9, 12)),
                                            SparseTensor("dw.weight", dw, np.array([0, 5, 9, 20, 35]), _vals(5, 14))],
                              "f16", "elias-fano"),
        "b": encode_adapter("b", FINGERPRINT, [SparseTensor("fc.weight", fc, np.union1d(shared[::2], [0, 119]),
                                                        _vals(12, 13) * 40)], "f32", "flat-u32"),
    }
    placements = {t: {"buffer": p.name, "layout": p.layout, "torch_shape": list(torch_base[t].shape)}
                  for t, p in places.items()}
    placements["dw.weight"]["channel_scale"] = scale
    decoded = {name: read_blob(blob) for name, blob in adapters.items()}
    patcher = ReferencePatcher({n: b.view(np.uint32).tolist() for n, b in store.items()}, placements)
    steps = [{"scales": {}, "rule": "sum", "buffers": patcher.live}]
    for plan, rule in PATCH_STEPS:
        patcher.fuse([(decoded[name], scale) for name, scale in plan.items()], rule)
        steps.append({"scales": plan, "rule": rule, "buffers": patcher.live})
    case = {"placements": placements,
            "adapters": {n: f"{n}.shira" for n in adapters}, "steps": steps}
    files = {f"{n}.shira": b for n, b in adapters.items()}
    files["steps.json"] = (json.dumps(case) + "\n").encode()
    return files


QUANT_STEPS = [({"a": 1.0}, "sum"), ({"b": 1.0}, "sum"), ({"a": 0.7, "b": -0.4}, "sum"), ({"a": 3.0}, "sum"),
               ({"a": 1.0, "b": 1.0}, "sum"), ({"a": 1.0, "b": 1.0}, "mean"), ({"a": 0.7, "b": -0.4}, "ties"),
               ({"a": 1.0, "b": 1.0}, "magnitude"), ({}, "sum")]


def build_quant_patch_case() -> dict[str, bytes]:
    """Quantized buffers for a second runtime (docs/QUANTIZATION.md): an int8 weight with one scale per channel,
    the same stored signed (ExecuTorch), a conv weight [N, C, kh, kw] at 8 bits (block 16), and an int4 weight
    with one per block of 32; adapters that touch both nibbles of some bytes and push some entries
    past the scales (clamped); the exact bytes after each fuse() of the reference patcher."""
    from shira_format.quant import quantize

    rng = np.random.default_rng(11)
    shapes = {"q8.weight": (6, 64), "q4.weight": (4, 64)}
    places, base = {}, {}
    for target, (bits, per_channel) in (("q8.weight", (8, True)), ("q4.weight", (4, False))):
        stored, scales = quantize(rng.normal(0, 0.5, shapes[target]).astype(np.float32), bits, 32, per_channel,
                                  4.0 if bits == 8 else 1.0)
        buf = target.replace(".weight", "_B")
        base[buf] = stored.reshape(-1).tolist()
        places[target] = {"buffer": buf, "torch_shape": list(shapes[target]), "bits": bits, "block": 32,
                          "per_channel": per_channel, "scales": [float(v) for v in scales]}
    # ExecuTorch's int8 (XNNPACK qc8w): the same per-channel integers stored as signed bytes, u XOR 0x80
    stored, scales = quantize(np.random.default_rng(12).normal(0, 0.5, (5, 64)).astype(np.float32), 8, 32, True, 4.0)
    shapes["s8.weight"] = (5, 64)
    base["s8_B"] = (stored.reshape(-1) ^ np.uint8(0x80)).tolist()
    places["s8.weight"] = {"buffer": "s8_B", "torch_shape": [5, 64], "bits": 8, "block": 32, "per_channel": True,
                           "signed": True, "scales": [float(v) for v in scales]}
    # a conv weight [N, C, kh, kw] (int8 per channel, the matrix [N, C*kh*kw] = [4, 48], block 16)
    stored, scales = quantize(np.random.default_rng(14).normal(0, 0.5, (4, 48)).astype(np.float32), 8, 16, True, 4.0)
    shapes["c8.weight"] = (4, 3, 2, 8)
    base["c8_B"] = stored.reshape(-1).tolist()
    places["c8.weight"] = {"buffer": "c8_B", "torch_shape": [4, 3, 2, 8], "bits": 8, "block": 16,
                           "per_channel": True, "scales": [float(v) for v in scales]}
    c8 = np.sort(np.random.default_rng(15).choice(192, 30, replace=False))
    s8 = np.sort(np.random.default_rng(13).choice(320, 40, replace=False))
    pairs = np.array([10, 11, 40, 41, 100, 101, 254, 255])  # both nibbles of four int4 bytes
    a4 = np.union1d(pairs, np.sort(rng.choice(256, 30, replace=False)))
    adapters = {
        "a": encode_adapter("a", FINGERPRINT, [
            SparseTensor("q8.weight", shapes["q8.weight"], np.sort(rng.choice(384, 40, replace=False)),
                         _vals(40, 21) * 20),
            SparseTensor("q4.weight", shapes["q4.weight"], a4, _vals(a4.size, 22) * 20),
            SparseTensor("s8.weight", shapes["s8.weight"], s8, _vals(40, 24) * 20),
            SparseTensor("c8.weight", shapes["c8.weight"], c8, _vals(30, 26) * 20)], "f32", "flat-u32"),
        "b": encode_adapter("b", FINGERPRINT, [
            SparseTensor("q4.weight", shapes["q4.weight"], np.union1d(a4[::3], [0, 1, 255]),
                         _vals(np.union1d(a4[::3], [0, 1, 255]).size, 23) * 30),
            SparseTensor("s8.weight", shapes["s8.weight"], s8[::2], _vals(20, 25) * 30),
            SparseTensor("c8.weight", shapes["c8.weight"], c8[1::2], _vals(15, 27) * 30)], "f16", "elias-fano"),
    }
    decoded = {name: read_blob(blob) for name, blob in adapters.items()}
    patcher = ReferenceQuantPatcher(base, places)
    steps = [{"scales": {}, "rule": "sum", "buffers": patcher.live, "clamped": 0}]
    for plan, rule in QUANT_STEPS:
        patcher.fuse([(decoded[name], scale) for name, scale in plan.items()], rule)
        steps.append({"scales": plan, "rule": rule, "buffers": patcher.live, "clamped": patcher.clamped})
    assert any(s["clamped"] for s in steps), "the case must clamp somewhere"
    case = {"placements": places, "adapters": {n: f"{n}.shira" for n in adapters}, "steps": steps}
    files = {f"{n}.shira": b for n, b in adapters.items()}
    files["steps.json"] = (json.dumps(case) + "\n").encode()
    return files


def main():
    for name, (blob, expect) in build_vectors().items():
        (HERE / f"{name}.shira").write_bytes(blob)
        (HERE / f"{name}.json").write_text(json.dumps(expect, indent=1) + "\n")
        print(f"wrote {name}.shira ({len(blob)} bytes) and {name}.json")
    (HERE / "patch").mkdir(exist_ok=True)
    for fname, data in build_patch_case().items():
        (HERE / "patch" / fname).write_bytes(data)
        print(f"wrote patch/{fname}")
    (HERE / "patch_quant").mkdir(exist_ok=True)
    for fname, data in build_quant_patch_case().items():
        (HERE / "patch_quant" / fname).write_bytes(data)
        print(f"wrote patch_quant/{fname}")


if __name__ == "__main__":
    main()
