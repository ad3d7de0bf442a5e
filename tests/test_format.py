"""The format package on its own (no export, no engine): layouts both ways, the blob writer's determinism and
round trip, and the manifest's writer refusing what its reader refuses."""
import copy
import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shira_format import layouts
from shira_format import manifest as manifest_format
from shira_format.adapter import SparseTensor, encode_adapter, read_adapter
from shira_format.codings import seeded_indices
from shira_format.errors import ManifestError

FP = "sha256:" + "cd" * 32


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.integers(1, 5), min_size=2, max_size=4), st.sampled_from(layouts.LAYOUTS))
def test_layout_maps_are_inverse_and_agree_with_the_array_forms(shape, layout):
    if layout == "channels_last" and len(shape) < 3:
        layout = "identity"
    w = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    stored = np.ascontiguousarray(layouts.to_stored(layout, w))
    assert stored.shape == layouts.stored_shape(layout, tuple(shape))
    assert layouts.fits(layout, stored.shape, tuple(shape))
    flat = np.arange(w.size)
    mapped = layouts.to_stored_indices(layout, flat, tuple(shape))
    assert np.array_equal(stored.reshape(-1)[mapped], w.reshape(-1))  # torch entry f sits at stored mapped[f]
    np.testing.assert_array_equal(layouts.to_torch(layout, stored.reshape(-1), stored.shape, tuple(shape)), w)
    assert np.array_equal(layouts.to_torch_indices(layout, mapped, tuple(shape)), flat)
    assert np.array_equal(np.sort(mapped), flat)  # a permutation


def test_sorted_for_keeps_each_value_with_its_entry():
    shape = (3, 4)
    idx, vals = np.array([1, 2, 5, 11]), np.array([10, 20, 50, 110], np.float32)
    s_idx, s_vals = layouts.sorted_for("transpose2d", idx, vals, shape)
    assert np.all(np.diff(s_idx) > 0)
    back = layouts.to_torch_indices("transpose2d", s_idx, shape)
    assert dict(zip(back.tolist(), s_vals.tolist())) == dict(zip(idx.tolist(), vals.tolist()))


def _tensors():
    seed = 77
    return [SparseTensor("a.weight", (16, 8), seeded_indices(seed, 128, 5), np.linspace(-1, 1, 5, dtype=np.float32),
                         seed=seed),
            SparseTensor("b.weight", (4, 3, 3, 3), np.array([0, 7, 100]), np.array([0.5, -0.25, 2], np.float32))]


@pytest.mark.parametrize("values", ["f32", "f16", "bf16", "int8", "int8-row"])
def test_blob_round_trip_and_seed_survives(values):
    a = read_adapter(encode_adapter("x", FP, _tensors(), values))
    t = a.tensors["a.weight"]
    assert t.index_coding == "seed" and t.seed == 77 and t.stored_bytes > 0
    again = read_adapter(encode_adapter("x", FP, list(a.tensors.values()), values))  # what was read writes back
    for name in a.tensors:
        assert np.array_equal(again.tensors[name].indices, a.tensors[name].indices)
        assert np.array_equal(again.tensors[name].values, a.tensors[name].values)


def test_blob_bytes_are_the_same_in_every_process():
    """safetensors writes metadata in hash order; the writer must still give the same bytes every time."""
    code = ("import sys, zlib, numpy as np; sys.path.insert(0, 'tests'); from test_format import _tensors, FP; "
            "from shira_format.adapter import encode_adapter; "
            "print(zlib.crc32(encode_adapter('x', FP, _tensors(), 'f16')))")
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1]
    crcs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                           check=True).stdout.strip() for _ in range(4)}
    assert len(crcs) == 1, crcs


def _manifest() -> dict:
    place = {"name": "w0", "shape": [4, 3], "layout": "transpose2d", "crc32": 1}
    return {"format": manifest_format.FORMAT, "format_version": manifest_format.FORMAT_VERSION,
            "base_fingerprint": FP, "inputs": [{"name": "x", "dtype": "float32", "shape": [1, 3]}],
            "outputs": [{"name": "y", "dtype": "float32", "shape": [1, 4]}],
            "artifacts": {"onnxruntime": {"patchable": "model.onnx", "weights": "weights.safetensors",
                                          "prepacked": "model_prepacked.onnx"}},
            "tensors": {"fc.weight": {"module": "fc", "kind": "linear", "shape": [3, 4], "dtype": "float32",
                                      "sha256": "0" * 64, "placements": {"onnxruntime": [place]}}}}


def test_manifest_writer_round_trips_and_refuses_what_readers_refuse(tmp_path):
    manifest_format.write(_manifest(), tmp_path / "manifest.json")
    m = manifest_format.load(tmp_path)
    assert m.files_of("onnxruntime").prepacked == "model_prepacked.onnx"
    assert m.tensors["fc.weight"].placements["onnxruntime"][0].layout == "transpose2d"
    bad = _manifest()
    bad["tensors"]["fc.weight"]["placements"]["onnxruntime"][0]["shape"] = [3, 4]  # does not fit transpose2d
    with pytest.raises(ManifestError, match="does not fit layout"):
        manifest_format.write(bad, tmp_path / "bad" / "manifest.json")
    assert not (tmp_path / "bad" / "manifest.json").exists()


def test_an_older_manifest_is_refused_with_the_way_out(tmp_path):
    old = _manifest()
    old["format_version"] = min(manifest_format.READS) - 1
    (tmp_path / "manifest.json").write_text(json.dumps(old))
    with pytest.raises(ManifestError, match="older shira-export.*export the base again"):
        manifest_format.load(tmp_path)


def test_folded_placements_are_checked_and_need_version_3(tmp_path):
    from shira_format.checksum import placement_crc32

    good = _manifest()
    place = good["tensors"]["fc.weight"]["placements"]["onnxruntime"][0]
    place.update(channel_scale=[0.5, 2.0, 1.25], folded_sha256="1" * 64)
    manifest_format.write(good, tmp_path / "manifest.json")
    p = manifest_format.load(tmp_path).tensors["fc.weight"].placements["onnxruntime"][0]
    # the stored delta is the torch delta times the scale of its output channel (row of the [3, 4] weight)
    assert p.stored_deltas(np.array([0, 5, 11]), np.ones(3, np.float32), (3, 4)).tolist() == [0.5, 2.0, 1.25]
    # the scale is part of the checksum: editing it is caught like editing the bytes
    stored = np.zeros(12, np.float32)
    edited = dataclasses.replace(p, channel_scale=(0.5, 2.0, 1.0))
    assert placement_crc32("fc.weight", (3, 4), p, stored) != placement_crc32("fc.weight", (3, 4), edited, stored)
    cases = {"one per output channel": dict(channel_scale=[1.0, 2.0]),
             "finite non-zero": dict(channel_scale=[1.0, 0.0, 2.0]),
             "needs folded_sha256": dict(folded_sha256=None)}
    for match, edit in cases.items():
        bad = copy.deepcopy(good)
        bad_place = bad["tensors"]["fc.weight"]["placements"]["onnxruntime"][0]
        bad_place.update(edit)
        bad_place = {k: v for k, v in bad_place.items() if v is not None}
        bad["tensors"]["fc.weight"]["placements"]["onnxruntime"][0] = bad_place
        with pytest.raises(ManifestError, match=match):
            manifest_format.write(bad, tmp_path / "bad.json")
    v2 = copy.deepcopy(good)
    v2["format_version"] = 2
    with pytest.raises(ManifestError, match="needs manifest version 3"):
        manifest_format.write(v2, tmp_path / "bad.json")


def test_layouts_are_the_same_map_only_where_every_entry_agrees():
    assert layouts.same_map("identity", "channels_last", (8, 4, 1, 1))  # 1x1 conv
    assert layouts.same_map("identity", "transpose2d", (5, 1))
    assert not layouts.same_map("identity", "transpose2d", (4, 4))  # a constant 4x4 has equal bytes, not maps
    assert not layouts.same_map("identity", "channels_last", (8, 4, 3, 3))
    assert layouts.same_map("identity", "transpose2d", (1, 1, 3, 3)) and not layouts.same_map(
        "identity", "transpose2d", (4, 1, 3, 3))  # a depthwise kernel is transposed unless it has one channel


def test_an_int8_scale_past_float32_is_refused_without_a_warning():
    import warnings

    from shira_format.codings import decode_values

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "overflow encountered in cast" would be an error here
        with pytest.raises(ValueError, match="bad int8 scale"):
            decode_values("int8", {"scale": 1e300}, bytes([1, 2]), None, np.array([0, 1]), (2,))


def test_stable_order_is_numpys_stable_argsort():
    """The radix sort the runtime orders positions with (layouts.stable_order) against numpy's own."""
    from shira_format.layouts import stable_order

    rng = np.random.default_rng(1)
    for n, top in [(10, 100), (5000, 70_000), (300_000, 2**20), (100_000, 2**40), (50_000, 50), (20_000, 2**62)]:
        keys = rng.integers(0, top, n)
        np.testing.assert_array_equal(stable_order(keys), np.argsort(keys, kind="stable"), err_msg=f"{n} < {top}")
    assert stable_order(np.array([3, -1, 2])).tolist() == [1, 2, 0]  # negative keys: numpy's sort
