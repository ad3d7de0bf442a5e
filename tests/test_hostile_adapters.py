"""Hostile adapter blobs: every malformed header is refused with AdapterError (one line), never a raw exception,
and the runtime agrees with the independent reference reader (tests/reference) on what is valid and on what a
valid blob decodes to.

The structural fuzz edits the header's JSON (types, nesting, huge or negative numbers, strings that are not
Unicode) and then RECOMPUTES the header checksum, so the edits reach the parser instead of stopping at the CRC.
The default run draws 1,000 cases; `pytest -m fuzz` runs 10,000.
"""
from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shira_runtime import AdapterError, read_adapter
from shira_format.codings import seeded_indices
from shira_format.adapter import SparseTensor, encode_adapter

from .reference.shira_reference import RefError, read_blob

FP = "sha256:" + "c3" * 32


def _blob() -> bytes:
    rng = np.random.default_rng(3)
    vals = lambda n, s: np.round(np.random.default_rng(s).normal(0, 0.1, n), 3).astype(np.float32)  # noqa: E731
    return encode_adapter("hostile", FP, [
        SparseTensor("a.weight", (16, 12), np.sort(rng.choice(192, 11, replace=False)), vals(11, 1)),
        SparseTensor("b.weight", (8, 3, 3, 3), seeded_indices(77, 216, 9), vals(9, 2), seed=77),
        SparseTensor("c.weight", (6, 10), np.flatnonzero(np.arange(60) % 10 == 0), vals(6, 3)),
    ], "int8")


BLOB = _blob()


def reframe(header: dict, data: bytes, fix_crc: bool = True) -> bytes:
    meta = header.get("__metadata__")
    if fix_crc and isinstance(meta, dict) and all(isinstance(meta.get(k), str) for k in
                                                  ("shira.name", "shira.base_fingerprint", "shira.tensors")):
        text = f"{meta['shira.name']}\n{meta['shira.base_fingerprint']}\n{meta['shira.tensors']}"
        meta["shira.header_crc32"] = str(zlib.crc32(text.encode("utf-8", "surrogatepass")))
    h = json.dumps(header, separators=(",", ":")).encode("utf-8", "surrogatepass")
    h += b" " * (-len(h) % 8)
    return len(h).to_bytes(8, "little") + h + data


def split(blob: bytes) -> tuple[dict, list, bytes]:
    hlen = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + hlen])
    return header, json.loads(header["__metadata__"]["shira.tensors"]), blob[8 + hlen :]


def with_entries(entries, blob=BLOB, meta_edit=None) -> bytes:
    header, _, data = split(blob)
    header["__metadata__"]["shira.tensors"] = json.dumps(entries, separators=(",", ":"))
    if meta_edit:
        meta_edit(header["__metadata__"])
    return reframe(header, data)


def assert_refused(blob: bytes, needle: str = "") -> str:
    with pytest.raises(AdapterError) as e:
        read_adapter(blob)
    msg = str(e.value)
    assert "\n" not in msg and needle in msg, msg
    with pytest.raises(RefError):  # the independent reading of FORMAT.md refuses it too
        read_blob(blob)
    return msg


def _entry_edit(i: int, key: str, value):
    _, entries, _ = split(BLOB)
    entries[i][key] = value
    return entries


def _deep(n: int):
    v: object = 1
    for _ in range(n):
        v = [v]
    return v


# ---- the classes seen escaping as raw exceptions, and the lenient parses --------------------------------------
@pytest.mark.parametrize("case,needle", [
    ("deep nesting in the tensor table (RecursionError)", "nests deeper"),
    ("deep nesting in the safetensors header (RecursionError)", "nests deeper"),
    ("an integer of 5000 digits (ValueError)", "digits"),
    ("a shape entry of 2^64 (OverflowError)", "shape"),
    ("a lone surrogate in shira.name (UnicodeEncodeError)", "surrogate"),
    ("shape [0] (ZeroDivisionError without a manifest)", "shape"),
    ("shape [2^32, 2^32] (count wraps to 0)", "shape"),
    ("seed coding with shape [2^40] (MemoryError)", "2^32"),
    ("index_params missing", "index_params"),
    ("index_params null", "index_params"),
    ("index_params false", "index_params"),
    ("value_params missing", "value_params"),
    ("low_bits as the string '2'", "low_bits"),
    ("low_bits as 2.0", "low_bits"),
    ("seed as a JSON integer", "seed must be a decimal string"),
    ("seed of 2^64", "seed must be a decimal string"),
    ("int8 scale as the string '0.01'", "int8 scale"),
    ("int8 scale true", "int8 scale"),
    ("shira.name missing", "missing shira.name"),
    ("shira.name empty", "shira.name"),
    ("a CRC field with a sign", "decimal"),
    ("nnz as a float", "nnz"),
    ("nnz true", "nnz"),
    ("a duplicate key in an entry", "twice"),
    ("NaN in the table", "NaN"),
    ("1e400 in the table", "overflows"),
    ("a header longer than 16 MiB", "more than"),
    ("scale_key without int8-row", "scale_key"),
    ("the fingerprint not sha256", "base_fingerprint"),
])
def test_each_malformed_class_is_refused(case, needle):
    header, entries, data = split(BLOB)
    ef = next(i for i, e in enumerate(entries) if e["index_coding"] == "elias-fano")
    seed = next(i for i, e in enumerate(entries) if e["index_coding"] == "seed")
    deep = "[" * 5000 + "1" + "]" * 5000  # as text: json.dumps itself cannot write this deep
    if case.startswith("deep nesting in the tensor table"):
        header["__metadata__"]["shira.tensors"] = json.dumps(entries, separators=(",", ":")).replace(
            '"nnz":', f'"extra":{deep},"nnz":', 1)
        blob = reframe(header, data)
    elif case.startswith("deep nesting in the safetensors header"):
        header["junk"] = "DEEP"
        blob = reframe(header, data)
        hlen = int.from_bytes(blob[:8], "little")
        h = blob[8 : 8 + hlen].rstrip().replace(b'"DEEP"', deep.encode())
        h += b" " * (-len(h) % 8)
        blob = len(h).to_bytes(8, "little") + h + data
    elif case.startswith("an integer of 5000"):
        table = json.dumps(entries, separators=(",", ":")).replace('"nnz":', '"nnz":' + "1" * 5000, 1)
        header["__metadata__"]["shira.tensors"] = table
        blob = reframe(header, data)
    elif case.startswith("a shape entry of 2^64"):
        blob = with_entries(_entry_edit(ef, "shape", [2**64, 1]))
    elif case.startswith("a lone surrogate"):
        header["__metadata__"]["shira.name"] = "\ud800"
        blob = reframe(header, data)
    elif case.startswith("shape [0]"):
        blob = with_entries(_entry_edit(ef, "shape", [0]))
    elif case.startswith("shape [2^32"):
        blob = with_entries(_entry_edit(ef, "shape", [2**32, 2**32]))
    elif case.startswith("seed coding with shape"):
        blob = with_entries(_entry_edit(seed, "shape", [2**20, 2**20]))
    elif case == "index_params missing":
        e = split(BLOB)[1]
        del e[ef]["index_params"]
        blob = with_entries(e)
    elif case == "index_params null":
        blob = with_entries(_entry_edit(ef, "index_params", None))
    elif case == "index_params false":
        blob = with_entries(_entry_edit(ef, "index_params", False))
    elif case == "value_params missing":
        e = split(BLOB)[1]
        del e[0]["value_params"]
        blob = with_entries(e)
    elif case.startswith("low_bits as the string"):
        blob = with_entries(_entry_edit(ef, "index_params", {"low_bits": str(entries[ef]["index_params"]["low_bits"])}))
    elif case.startswith("low_bits as 2.0"):
        blob = with_entries(_entry_edit(ef, "index_params", {"low_bits": float(entries[ef]["index_params"]["low_bits"])}))
    elif case == "seed as a JSON integer":
        blob = with_entries(_entry_edit(seed, "index_params", {"seed": 77}))
    elif case == "seed of 2^64":
        blob = with_entries(_entry_edit(seed, "index_params", {"seed": str(2**64)}))
    elif case.startswith("int8 scale as the string"):
        blob = with_entries(_entry_edit(0, "value_params", {"scale": "0.01"}))
    elif case == "int8 scale true":
        blob = with_entries(_entry_edit(0, "value_params", {"scale": True}))
    elif case == "shira.name missing":
        blob = with_entries(entries, meta_edit=lambda m: m.pop("shira.name"))
    elif case == "shira.name empty":
        blob = with_entries(entries, meta_edit=lambda m: m.__setitem__("shira.name", ""))
    elif case == "a CRC field with a sign":
        header["__metadata__"]["shira.data_crc32"] = "+" + header["__metadata__"]["shira.data_crc32"]
        blob = reframe(header, data)
    elif case == "nnz as a float":
        blob = with_entries(_entry_edit(ef, "nnz", float(entries[ef]["nnz"])))
    elif case == "nnz true":
        blob = with_entries(_entry_edit(ef, "nnz", True))
    elif case == "a duplicate key in an entry":
        table = json.dumps(entries, separators=(",", ":")).replace('"nnz":', '"nnz":1,"nnz":', 1)
        header["__metadata__"]["shira.tensors"] = table
        blob = reframe(header, data)
    elif case == "NaN in the table":
        header["__metadata__"]["shira.tensors"] = json.dumps(_entry_edit(0, "value_params", {"scale": float("nan")}))
        blob = reframe(header, data)
    elif case == "1e400 in the table":
        table = json.dumps(entries, separators=(",", ":"))
        header["__metadata__"]["shira.tensors"] = table.replace('"scale":', '"scale":1e400,"x":', 1)
        blob = reframe(header, data)
    elif case == "a header longer than 16 MiB":
        header["pad"] = "x" * (17 << 20)
        blob = reframe(header, data)
    elif case == "scale_key without int8-row":
        blob = with_entries(_entry_edit(0, "scale_key", "k"))
    else:  # fingerprint
        header["__metadata__"]["shira.base_fingerprint"] = "md5:" + "0" * 32
        blob = reframe(header, data)
    assert_refused(blob, needle)


def test_the_untouched_blob_is_valid_to_both_readers():
    a, ref = read_adapter(BLOB), read_blob(BLOB)
    assert sorted(a.tensors) == sorted(ref["tensors"])
    for k, t in ref["tensors"].items():
        assert a.tensors[k].indices.tolist() == t["indices"]
        assert a.tensors[k].values.tolist() == t["values"]


# ---- the structural fuzz --------------------------------------------------------------------------------------
JUNK = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
              st.text(max_size=6), st.sampled_from(["\ud800", "1" * 30, "-1", "NaN", "sha256:" + "0" * 64]),
              st.sampled_from([0, 1, 2**31, 2**32, 2**40, 2**63, 2**64, -1])),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=6)


@st.composite
def mutated_blobs(draw, blob=BLOB):
    header, entries, data = split(blob)
    meta = header["__metadata__"]
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(["entry field", "entry params", "entry removed field", "entries", "meta",
                                      "buffer entry", "deep"]))
        dicts = [e for e in entries if isinstance(e, dict)]
        if not dicts and where.startswith(("entry", "deep")):
            continue
        if where == "entry field":
            e = draw(st.sampled_from(dicts))
            e[draw(st.sampled_from(sorted(e) + ["extra"]))] = draw(JUNK)
        elif where == "entry params":
            e = draw(st.sampled_from(dicts))
            key = draw(st.sampled_from(["index_params", "value_params"]))
            if isinstance(e.get(key), dict) and draw(st.booleans()):
                e[key][draw(st.sampled_from(["low_bits", "seed", "scale", "x"]))] = draw(JUNK)
            else:
                e[key] = draw(JUNK)
        elif where == "entry removed field":
            e = draw(st.sampled_from(dicts))
            if e:
                e.pop(draw(st.sampled_from(sorted(e))), None)
        elif where == "entries":
            op = draw(st.sampled_from(["dup", "drop", "junk"]))
            if op == "dup" and dicts:
                entries.append(dict(draw(st.sampled_from(dicts))))
            elif op == "drop" and entries:
                entries.pop(draw(st.integers(0, len(entries) - 1)))
            else:
                entries.append(draw(JUNK))
        elif where == "meta":
            key = draw(st.sampled_from(sorted(meta) + ["shira.extra"]))
            if draw(st.booleans()):
                meta.pop(key, None)
            else:
                meta[key] = draw(st.one_of(st.text(max_size=8), st.sampled_from(["\ud800", "1" * 40, "", " 1"])))
        elif where == "buffer entry":
            k = draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
            if isinstance(header[k], dict):
                header[k][draw(st.sampled_from(["dtype", "shape", "data_offsets"]))] = draw(JUNK)
        else:
            draw(st.sampled_from(dicts))["deep"] = _deep(draw(st.sampled_from([14, 15, 17, 400])))
    meta["shira.tensors"] = json.dumps(entries, separators=(",", ":"))
    return reframe(header, data)


def _differential(blob: bytes) -> None:
    try:
        ours = read_adapter(blob)
    except AdapterError as e:
        assert "\n" not in str(e)
        ours = None
    try:
        ref = read_blob(blob)
    except RefError:
        ref = None
    assert (ours is None) == (ref is None), f"runtime {'refused' if ours is None else 'accepted'}, reference did not"
    if ours is not None:
        for k, t in ref["tensors"].items():
            assert ours.tensors[k].indices.tolist() == t["indices"] and ours.tensors[k].values.tolist() == t["values"]


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(mutated_blobs())
def test_structural_fuzz_never_escapes_and_agrees_with_the_reference(blob):
    _differential(blob)


@pytest.mark.fuzz
@settings(max_examples=10_000, deadline=None, suppress_health_check=list(HealthCheck))
@given(mutated_blobs())
def test_structural_fuzz_long(blob):
    _differential(blob)


def _session_untouched_on_refusal(sess, blob: bytes, before: dict) -> None:
    from .helpers import snapshot

    try:
        name = sess.load(blob, name="candidate")
    except AdapterError as e:
        assert "\n" not in str(e)
    else:  # a mutation that left a valid adapter: it loads, and nothing is patched until a switch
        sess.unload(name)
    assert snapshot(sess) == before and sess.active == {"zen": 1.0}


@pytest.fixture(scope="module")
def live(llama):
    from shira_runtime import ShiraSession

    from .helpers import snapshot

    sess = ShiraSession(llama.base_dir, mode="patchable")
    sess.load(llama.blobs["zen"], name="zen")
    sess.switch("zen")
    yield sess, llama.blobs["json-doc"].read_bytes(), snapshot(sess)
    sess.close()


def test_mutated_real_blobs_never_touch_a_live_session(live):
    sess, real, before = live

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(mutated_blobs(real))
    def run(blob):
        _session_untouched_on_refusal(sess, blob, before)

    run()


@pytest.mark.fuzz
def test_mutated_real_blobs_never_touch_a_live_session_long(live):
    sess, real, before = live

    @settings(max_examples=10_000, deadline=None, suppress_health_check=list(HealthCheck))
    @given(mutated_blobs(real))
    def run(blob):
        _session_untouched_on_refusal(sess, blob, before)

    run()
