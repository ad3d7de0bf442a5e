"""Cross-language test vectors: small blobs plus their decoded content as JSON.

A second reader (the Android app's Java reader) must decode every `NAME.shira` to `NAME.json`, or refuse it
with the error named there. Regenerate with `python -m tests.vectors.make_vectors`; the test suite checks
that the committed files equal what this script writes (the writer is deterministic).
"""
from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np

from shira_runtime.codings import seeded_indices
from shira_toolchain.blob_writer import SparseDelta, encode_blob

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
        "flat_u32_f32": ([SparseDelta("fc.weight", shape, rand, _vals(9, 1))], "f32", "flat-u32"),
        "elias_fano_f16": ([SparseDelta("fc.weight", shape, rand, _vals(9, 2))], "f16", "elias-fano"),
        "bitmap_bf16": ([SparseDelta("fc.weight", shape, np.sort(rng.choice(120, 50, replace=False)), _vals(50, 3))],
                        "bf16", "bitmap"),
        "rowcol_int8": ([SparseDelta("fc.weight", shape, struct, _vals(struct.size, 4))], "int8", "rowcol"),
        "seed_int8_row": ([SparseDelta("fc.weight", shape, seeded_indices(12345, 120, 15), _vals(15, 5), seed=12345)],
                          "int8-row", "seed"),
        "conv_elias_fano_f32": ([SparseDelta("conv.weight", conv, np.sort(rng.choice(108, 7, replace=False)),
                                             _vals(7, 6))], "f32", "elias-fano"),
        "two_tensors_auto_f16": ([SparseDelta("a.weight", shape, rand, _vals(9, 7)),
                                  SparseDelta("b.weight", conv, np.array([0, 107]), _vals(2, 8))], "f16", "auto"),
        "empty_tensor": ([SparseDelta("fc.weight", shape, np.zeros(0, dtype=np.int64), np.zeros(0, np.float32))],
                         "f32", "flat-u32"),
        "seed_large_prng": ([SparseDelta("big.weight", (64, 48), seeded_indices(2**63 + 7, 3072, 40), _vals(40, 9),
                                         seed=2**63 + 7)], "f32", "seed"),
    }
    out = {}
    for name, (deltas, vcoding, icoding) in cases.items():
        blob = encode_blob(name, FINGERPRINT, deltas, vcoding, icoding)
        from shira_runtime import read_adapter

        a = read_adapter(blob)
        out[name] = (blob, {
            "name": name, "base_fingerprint": FINGERPRINT, "file_crc32": zlib.crc32(blob),
            "tensors": {t.target: {"shape": list(t.shape), "index_coding": t.index_coding,
                                   "value_coding": t.value_coding, "indices": t.indices.tolist(),
                                   "values": [float(v) for v in t.values]} for t in a.tensors.values()}})
    good = out["elias_fano_f16"][0]
    flipped = bytearray(good)
    flipped[-3] ^= 0x10
    out["corrupt_data_crc"] = (bytes(flipped), {"error": "checksum mismatch over the data region"})
    out["truncated"] = (good[:-5], {"error": "truncated"})
    return out


PATCH_STEPS = [{"a": 1.0}, {"b": 1.0}, {"a": 0.7, "b": -0.4}, {"b": 2.0}, {"a": 1.0, "b": 1.0}, {}]


def build_patch_case() -> dict[str, bytes]:
    """A patch sequence for a second runtime: two base buffers (one stored transposed, one channels-last), two
    adapters, and the exact float32 bits of every buffer after each fuse() of the Python WeightPatcher."""
    from shira_runtime.manifest import Placement
    from shira_runtime.patcher import WeightPatcher

    rng = np.random.default_rng(7)
    fc, conv = (12, 10), (4, 3, 3, 3)
    torch_base = {"fc.weight": rng.normal(0, 0.5, fc).astype(np.float32),
                  "conv.weight": rng.normal(0, 0.5, conv).astype(np.float32)}
    places = {"fc.weight": Placement("fc_T", (10, 12), "transpose2d"),
              "conv.weight": Placement("conv_OHWI", (4, 3, 3, 3), "channels_last")}
    store = {"fc_T": torch_base["fc.weight"].T.copy().reshape(-1),
             "conv_OHWI": np.moveaxis(torch_base["conv.weight"], 1, -1).copy().reshape(-1)}
    shared = np.sort(rng.choice(120, 20, replace=False))
    adapters = {
        "a": encode_blob("a", FINGERPRINT, [SparseDelta("fc.weight", fc, shared, _vals(20, 11)),
                                            SparseDelta("conv.weight", conv, np.sort(rng.choice(108, 9, replace=False)),
                                                        _vals(9, 12))], "f16", "elias-fano"),
        "b": encode_blob("b", FINGERPRINT, [SparseDelta("fc.weight", fc, np.union1d(shared[::2], [0, 119]),
                                                        _vals(12, 13) * 40)], "f32", "flat-u32"),
    }
    from shira_runtime import read_adapter

    mapped = {}
    for name, blob in adapters.items():
        mapped[name] = {}
        for t in read_adapter(blob).tensors.values():
            p = places[t.target]
            idx = p.map_indices(t.indices, t.shape)
            order = np.argsort(idx, kind="stable")
            mapped[name][p.name] = (idx[order], t.values[order])
    patcher = WeightPatcher(store, threads=1)
    bits = lambda: {n: b.view(np.uint32).tolist() for n, b in store.items()}  # noqa: E731
    steps = [{"scales": {}, "buffers": bits()}]
    for plan in PATCH_STEPS:
        terms = {}
        for name, scale in plan.items():
            for buf, (i, d) in mapped[name].items():
                terms.setdefault(buf, []).append((i, d, scale))
        patcher.commit(patcher.plan(terms))
        steps.append({"scales": plan, "buffers": bits()})
    case = {"placements": {t: {"buffer": p.name, "layout": p.layout, "torch_shape": list(torch_base[t].shape)}
                           for t, p in places.items()},
            "adapters": {n: f"{n}.shira" for n in adapters}, "steps": steps}
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


if __name__ == "__main__":
    main()
