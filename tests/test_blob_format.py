"""The adapter blob format (docs/FORMAT.md): every coding round-trips, sizes meet the targets, corruption is refused."""
import json
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shira_runtime import AdapterError, read_adapter
from shira_format.codings import ef_low_bits, ef_sizes, seeded_indices
from shira_format.adapter import SparseTensor, encode_adapter
from shira_format.codings import choose_index_coding

FP = "sha256:" + "5a" * 32

VALUE_CODINGS = ["f32", "f16", "bf16", "int8", "int8-row"]
SHAPE = (48, 40)
NUMEL = 48 * 40


def _struct_mask(shape, every_row=8, every_col=16, diag=True):
    r, c = shape
    m = np.zeros(shape, dtype=bool)
    m[::every_row, :] = True
    m[:, ::every_col] = True
    if diag:
        d = np.arange(min(r, c))
        m[d, d] = True
    return np.flatnonzero(m)


MASKS = {  # name -> (indices, seed or None, codings that can represent it)
    "random-1%": (np.sort(np.random.default_rng(1).choice(NUMEL, 19, replace=False)), None, ["flat-u32", "elias-fano", "bitmap"]),
    "random-30%": (np.sort(np.random.default_rng(2).choice(NUMEL, 576, replace=False)), None, ["flat-u32", "elias-fano", "bitmap"]),
    "struct": (_struct_mask(SHAPE), None, ["flat-u32", "elias-fano", "bitmap", "rowcol"]),
    "seeded": (seeded_indices(77, NUMEL, 96), 77, ["flat-u32", "elias-fano", "bitmap", "seed"]),
    "empty": (np.zeros(0, dtype=np.int64), None, ["flat-u32", "elias-fano", "bitmap"]),
    "single": (np.array([NUMEL - 1]), None, ["flat-u32", "elias-fano", "bitmap"]),
    "full": (np.arange(NUMEL), None, ["flat-u32", "elias-fano", "bitmap", "rowcol"]),
}


def _values(n, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(0, 0.02, n) * rng.choice([1, 10], n)).astype(np.float32)


def _bound(coding, v, idx):
    """The documented worst-case error of each value coding (FORMAT.md §5)."""
    a = np.abs(v)
    if coding == "f32":
        return np.zeros_like(a)
    if coding == "f16":
        return a * 2.0**-11 + 2.0**-25
    if coding == "bf16":
        return a * 2.0**-8
    if coding == "int8":
        return np.full_like(a, a.max(initial=0) / 127 / 2 * 1.0001)
    row = idx // SHAPE[1]
    rmax = np.zeros(SHAPE[0])
    np.maximum.at(rmax, row, a)
    return rmax[row] / 127 / 2 * 1.0001


@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("vcoding", VALUE_CODINGS)
def test_every_coding_round_trips(mask, vcoding):
    idx, seed, icodings = MASKS[mask]
    v = _values(idx.size)
    for icoding in icodings:
        d = SparseTensor("layer.weight", SHAPE, idx.astype(np.int64), v, seed=seed)
        a = read_adapter(encode_adapter("t", FP, [d], vcoding, icoding))
        t = a.tensors["layer.weight"]
        assert t.index_coding == icoding and t.value_coding == vcoding
        np.testing.assert_array_equal(t.indices, idx)
        assert np.all(np.abs(t.values - v) <= _bound(vcoding, v, idx)), (mask, icoding, vcoding)


def test_auto_coding_picks_the_smallest_applicable():
    pick = {m: choose_index_coding(SparseTensor("w", SHAPE, idx.astype(np.int64), _values(idx.size), seed=s))
            for m, (idx, s, _) in MASKS.items()}
    assert pick["seeded"] == "seed" and pick["struct"] == "rowcol" and pick["random-1%"] == "elias-fano"
    big = np.sort(np.random.default_rng(3).choice(NUMEL, NUMEL // 2, replace=False))
    assert choose_index_coding(SparseTensor("w", SHAPE, big, _values(big.size))) == "bitmap"


def test_size_targets_on_a_realistic_layer_set_at_one_percent():
    """Llama-style block (hidden 1024, MLP 2816): indices <= 1.25 B/nonzero, whole file <= 3.25 with f16."""
    rng = np.random.default_rng(0)
    shapes = {f"l.{n}.weight": s for n, s in [("q", (1024, 1024)), ("k", (1024, 1024)), ("v", (1024, 1024)),
                                               ("o", (1024, 1024)), ("gate", (2816, 1024)), ("up", (2816, 1024)),
                                               ("down", (1024, 2816))]}
    deltas = []
    for name, shape in shapes.items():
        numel = int(np.prod(shape))
        idx = np.sort(rng.choice(numel, numel // 100, replace=False))
        deltas.append(SparseTensor(name, shape, idx, rng.normal(0, 1e-3, idx.size).astype(np.float32)))
    blob = encode_adapter("size", FP, deltas)  # defaults: auto indices, f16 values
    a = read_adapter(blob)
    nnz = a.nnz
    index_bytes = sum(sum(ef_sizes(int(np.prod(t.shape)), t.indices.size,
                                   ef_low_bits(int(np.prod(t.shape)), t.indices.size))) for t in a.tensors.values())
    assert {t.index_coding for t in a.tensors.values()} == {"elias-fano"}
    assert index_bytes / nnz <= 1.25, index_bytes / nnz
    assert len(blob) / nnz <= 3.25, len(blob) / nnz


def _sample_blob() -> bytes:
    rng = np.random.default_rng(9)
    ds = [SparseTensor("a.weight", SHAPE, MASKS["random-30%"][0], _values(576)),
          SparseTensor("b.weight", SHAPE, MASKS["struct"][0], _values(MASKS["struct"][0].size)),
          SparseTensor("c.weight", (8, 4, 3, 3), np.sort(rng.choice(288, 20, replace=False)), _values(20))]
    return encode_adapter("fuzz", FP, ds, "int8-row")


SAMPLE = _sample_blob()
REFERENCE = read_adapter(SAMPLE)


def _refused_or_identical(data: bytes):
    """A damaged blob must raise AdapterError (one line) - or, if the damage changed nothing, decode the same."""
    try:
        a = read_adapter(data)
    except AdapterError as e:
        assert "\n" not in str(e)
        return
    assert data == SAMPLE or all(np.array_equal(a.tensors[k].indices, t.indices) and
                                 np.array_equal(a.tensors[k].values, t.values) for k, t in REFERENCE.tensors.items())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(SAMPLE) - 1), st.integers(0, 7)), min_size=1, max_size=4))
def test_fuzz_bit_flips_are_refused(flips):
    data = bytearray(SAMPLE)
    for pos, bit in flips:
        data[pos] ^= 1 << bit
    if bytes(data) != SAMPLE:
        with pytest.raises(AdapterError):
            read_adapter(bytes(data))


@settings(max_examples=150, deadline=None)
@given(st.integers(0, len(SAMPLE) - 1))
def test_fuzz_truncation_is_refused(n):
    with pytest.raises(AdapterError):
        read_adapter(SAMPLE[:n])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_header_edits_never_crash(data):
    """Edit the JSON header structurally (values swapped for other valid JSON) and re-frame the file."""
    hlen = int.from_bytes(SAMPLE[:8], "little")
    header = json.loads(SAMPLE[8 : 8 + hlen])
    meta = header["__metadata__"]
    entries = json.loads(meta["shira.tensors"])
    which = data.draw(st.sampled_from(["entry", "meta", "tensor"]))
    crc_fixed = False
    junk = st.one_of(st.integers(-2**40, 2**40), st.text(max_size=8), st.none(), st.lists(st.integers(0, 99), max_size=3))
    if which == "entry":
        e = data.draw(st.sampled_from(entries))
        e[data.draw(st.sampled_from(sorted(e)))] = data.draw(junk)
        meta["shira.tensors"] = json.dumps(entries, separators=(",", ":"))
        if data.draw(st.booleans()):  # an adversary who also fixes the header checksum
            from shira_format.adapter import header_crc32

            crc_fixed = True
            meta["shira.header_crc32"] = str(header_crc32(meta["shira.name"], meta["shira.base_fingerprint"],
                                                          meta["shira.tensors"]))
    elif which == "meta":
        meta[data.draw(st.sampled_from(sorted(meta)))] = str(data.draw(junk))
    else:
        t = header[data.draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))]
        t[data.draw(st.sampled_from(sorted(t)))] = data.draw(junk)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    edited = len(h).to_bytes(8, "little") + h + SAMPLE[8 + hlen:]
    if not crc_fixed:
        _refused_or_identical(edited)
        return
    try:  # with a recomputed checksum the file may be a new, valid adapter; it must still never crash
        read_adapter(edited)
    except AdapterError as e:
        assert "\n" not in str(e)


def test_refusal_never_patches_a_session(llama):
    """End to end: a damaged blob leaves the live weights byte-identical (runtime checks all before writing)."""
    from shira_runtime import ShiraSession

    from .helpers import snapshot

    sess = ShiraSession(llama.base_dir)
    good = llama.blobs["zen"].read_bytes()
    before = snapshot(sess)
    rng = np.random.default_rng(0)
    for i in range(40):
        bad = bytearray(good)
        bad[int(rng.integers(0, len(bad)))] ^= 1 << int(rng.integers(0, 8))
        with pytest.raises(AdapterError):
            sess.load(bytes(bad), name=f"bad{i}")
        assert snapshot(sess) == before
    assert sess.adapters == {}


# ---- cross-language test vectors -----------------------------------------------------------------------------
VECTORS = Path(__file__).parent / "vectors"


def test_vectors_decode_to_their_json_and_regenerate_identically():
    from .vectors.make_vectors import build_vectors

    built = build_vectors()
    names = sorted(p.stem for p in VECTORS.glob("*.shira"))
    assert names == sorted(built) and len(names) >= 8
    for name in names:
        blob = (VECTORS / f"{name}.shira").read_bytes()
        assert blob == built[name][0], f"{name}.shira is stale: run python -m tests.vectors.make_vectors"
        expect = json.loads((VECTORS / f"{name}.json").read_text())
        if expect.get("error"):
            with pytest.raises(AdapterError, match=expect["error"]):
                read_adapter(blob)
            continue
        a = read_adapter(blob)
        assert a.name == expect["name"] and a.base_fingerprint == expect["base_fingerprint"]
        assert sorted(a.tensors) == sorted(expect["tensors"])
        for target, t in expect["tensors"].items():
            np.testing.assert_array_equal(a.tensors[target].indices, t["indices"])
            np.testing.assert_array_equal(a.tensors[target].values, np.array(t["values"], dtype=np.float32))
            assert a.tensors[target].index_coding == t["index_coding"]
        assert zlib.crc32(blob) == expect["file_crc32"]


def test_patch_case_for_other_runtimes_regenerates_identically():
    """tests/vectors/patch: the bytes a second runtime (android_demo/shira-core) must reproduce."""
    from .vectors.make_vectors import PATCH_STEPS, build_patch_case

    built = build_patch_case()
    for fname, data in built.items():
        assert (VECTORS / "patch" / fname).read_bytes() == data, f"patch/{fname} is stale: run make_vectors"
    case = json.loads(built["steps.json"])
    assert [(s["scales"], s["rule"]) for s in case["steps"]] == [({}, "sum")] + [(a, r) for a, r in PATCH_STEPS]
    assert case["steps"][0]["buffers"] == case["steps"][-1]["buffers"]  # reset is bit-exact
    assert len({json.dumps(s["buffers"]) for s in case["steps"]}) == len(PATCH_STEPS)  # every other state differs


def test_runtime_patcher_reproduces_the_patch_case_bit_for_bit():
    """The Python runtime's own path (Placement.patch_terms, which scales folded weights, and WeightPatcher) lands on the reference patcher's bits at every step, folded depthwise kernel included."""
    from shira_format.manifest import Placement
    from shira_runtime.patcher import WeightPatcher

    case = json.loads((VECTORS / "patch" / "steps.json").read_text())
    buffers = {n: np.array(bits, dtype=np.uint32).view(np.float32) for n, bits in case["steps"][0]["buffers"].items()}
    places = {t: Placement(p["buffer"], (1,), p["layout"],
                           channel_scale=tuple(p["channel_scale"]) if "channel_scale" in p else None)
              for t, p in case["placements"].items()}
    assert any(p.channel_scale for p in places.values())
    shapes = {t: tuple(p["torch_shape"]) for t, p in case["placements"].items()}
    mapped = {}
    for name, fname in case["adapters"].items():
        ad = read_adapter((VECTORS / "patch" / fname).read_bytes())
        mapped[name] = {places[t.target].name: places[t.target].patch_terms(t.indices, t.values, shapes[t.target])
                        for t in ad.tensors.values()}
    patcher = WeightPatcher(buffers)
    for step in case["steps"][1:]:
        terms = {}
        for name, scale in step["scales"].items():
            for buf, (idx, delta) in mapped[name].items():
                terms.setdefault(buf, []).append((idx, delta, float(scale)))
        patcher.commit(patcher.plan(terms, rule=step["rule"]))
        for n, bits in step["buffers"].items():
            assert buffers[n].view(np.uint32).tolist() == bits, (step["scales"], step["rule"], n)


def test_quantized_patch_case_regenerates_identically_and_the_runtime_reproduces_it():
    """tests/vectors/patch_quant: int8 and int4 bytes after each fuse (docs/QUANTIZATION.md), from the loop-based
    reference patcher; the runtime's WeightPatcher (whole-byte plans, a plan made ahead for one adapter) lands on
    the same bytes and clamp counts at every step, and the last step is the base again."""
    from shira_format.quant import Quant, matrix_shape
    from shira_runtime.patcher import WeightPatcher

    from .vectors.make_vectors import QUANT_STEPS, build_quant_patch_case

    built = build_quant_patch_case()
    for fname, data in built.items():
        assert (VECTORS / "patch_quant" / fname).read_bytes() == data, f"patch_quant/{fname} is stale"
    case = json.loads(built["steps.json"])
    assert [(s["scales"], s["rule"]) for s in case["steps"]] == [({}, "sum")] + [(a, r) for a, r in QUANT_STEPS]
    assert case["steps"][0]["buffers"] == case["steps"][-1]["buffers"]
    buffers = {n: np.array(b, dtype=np.uint8) for n, b in case["steps"][0]["buffers"].items()}
    quant = {p["buffer"]: Quant(p["bits"], p["block"], "s", p["per_channel"], p.get("signed", False))
             for p in case["placements"].values()}
    assert any(q.signed for q in quant.values()) and any(len(p["torch_shape"]) == 4 for p in case["placements"].values())
    mapped = {}
    for name, fname in case["adapters"].items():
        ad = read_adapter((VECTORS / "patch_quant" / fname).read_bytes())
        mapped[name] = {}
        for t in ad.tensors.values():
            p = case["placements"][t.target]
            scales = np.array(p["scales"], dtype=np.float32)
            mapped[name][p["buffer"]] = (t.indices, t.values,
                                         quant[p["buffer"]].scale_of(scales, t.indices,
                                                                     matrix_shape(p["torch_shape"])[1]))
    patcher = WeightPatcher(buffers, quant=quant)
    for step in case["steps"][1:]:
        terms = {}
        for name, scale in step["scales"].items():
            for buf, (idx, delta, qs) in mapped[name].items():
                terms.setdefault(buf, []).append((idx, delta, float(scale), qs))
        plans = patcher.plan(terms, rule=step["rule"])
        patcher.commit(plans)
        assert sum(p.clamped for p in plans.values()) == step["clamped"], (step["scales"], step["rule"])
        for n, b in step["buffers"].items():
            assert buffers[n].tolist() == b, (step["scales"], n)
