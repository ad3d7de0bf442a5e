"""Damaged or edited exported base directories: every damage is refused with one ManifestError line naming the
file, under every mode, on both backends; damage the session does not read (a packed-engine file under
mode="patchable") does not stop it. Integrity is checked by default: a changed weight byte, a moved ExecuTorch
offset or an edited layout can no longer make patches land in the wrong place."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from shira_runtime import ManifestError, ShiraError, ShiraSession

MODES = ("patchable", "auto", "two-phase")
NOT_READ_IN_PLACE = ("model.onnx",)  # the in-place engine runs the baked model_prepacked.onnx, never model.onnx


def _copy(llama, tmp_path) -> Path:
    d = tmp_path / "base"
    shutil.copytree(llama.base_dir, d)
    return d


def _edit_manifest(d: Path, fn) -> None:
    m = json.loads((d / "manifest.json").read_text())
    fn(m)  # edits in place
    (d / "manifest.json").write_text(json.dumps(m))


def _first(m, backend="onnxruntime"):
    t = next(iter(m["tensors"].values()))
    return t, t["placements"][backend][0]


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _flip_inside_first_weight(d: Path, backend: str) -> None:
    m = json.loads((d / "manifest.json").read_text())
    _, p = _first(m, backend)
    if backend == "onnxruntime":
        from shira_format.safetensors_file import read_file

        st = read_file(d / "weights.safetensors")
        pos = st.data_start + st.tensors[p["name"]].start + 40
        path = d / "weights.safetensors"
    else:
        pos, path = p["offset"] + 40, d / "model.pte"
    data = bytearray(path.read_bytes())
    data[pos] ^= 0x01
    path.write_bytes(bytes(data))


# damage name -> (what it does, which backends it applies to, the file the error must name)
DAMAGE = {
    "manifest is []": (lambda d: (d / "manifest.json").write_text("[]"), "both", "manifest.json"),
    'manifest is "x"': (lambda d: (d / "manifest.json").write_text('"x"'), "both", "manifest.json"),
    "manifest not JSON": (lambda d: (d / "manifest.json").write_text("{"), "both", "manifest.json"),
    "manifest missing": (lambda d: (d / "manifest.json").unlink(), "both", "manifest.json"),
    "tensors as a list": (lambda d: _edit_manifest(d, lambda m: m.__setitem__("tensors", [])), "both", "manifest.json"),
    "placements as a list": (lambda d: _edit_manifest(d, lambda m: _first(m)[0].__setitem__("placements", [])),
                             "both", "manifest.json"),
    "a placement shape 5": (lambda d: _edit_manifest(d, lambda m: _first(m)[1].__setitem__("shape", 5)),
                            "both", "manifest.json"),
    'an ExecuTorch offset "12"': (lambda d: _edit_manifest(d, lambda m: _first(m, "executorch")[1].__setitem__(
        "offset", "12")), "both", "manifest.json"),
    "an artifact path leaving the directory": (lambda d: _edit_manifest(d, lambda m: m["artifacts"]["onnxruntime"]
                                               .__setitem__("patchable", "../model.onnx")), "both", "manifest.json"),
    "a version-1 manifest (an older export)": (lambda d: _edit_manifest(d, lambda m: m.__setitem__("format_version", 1)),
                                               "both", "manifest.json"),
    "an unknown runtime in artifacts": (lambda d: _edit_manifest(d, lambda m: m["artifacts"].__setitem__(
        "executorch-static", {"patchable": "model.pte"})), "both", "manifest.json"),
    "model.onnx truncated": (lambda d: _truncate(d / "model.onnx"), "onnxruntime", "model.onnx"),
    "model.onnx garbage": (lambda d: (d / "model.onnx").write_bytes(b"\x00garbage" * 100), "onnxruntime",
                           "model.onnx"),
    "model.onnx missing": (lambda d: (d / "model.onnx").unlink(), "onnxruntime", "model.onnx"),
    "weights.safetensors truncated": (lambda d: _truncate(d / "weights.safetensors"), "onnxruntime",
                                      "weights.safetensors"),
    "model.pte truncated": (lambda d: _truncate(d / "model.pte"), "executorch", "model.pte"),
    "model.pte truncated before its weights": (lambda d: _truncate(d / "model.pte", 0.05), "executorch", "model.pte"),
    "one weight byte changed (weights.safetensors)": (lambda d: _flip_inside_first_weight(d, "onnxruntime"),
                                                      "onnxruntime", "weights.safetensors"),
    "one weight byte changed (model.pte)": (lambda d: _flip_inside_first_weight(d, "executorch"), "executorch",
                                            "model.pte"),
    "an ExecuTorch offset moved by 4 bytes": (lambda d: _edit_manifest(d, lambda m: _first(m, "executorch")[1]
                                              .__setitem__("offset", _first(m, "executorch")[1]["offset"] + 4)),
                                              "executorch", "model.pte"),
    "a layout edited to identity": (lambda d: _edit_manifest(d, lambda m: [
        p.__setitem__("layout", "identity") for t in m["tensors"].values() for p in t["placements"]["onnxruntime"]
        if p["layout"] == "transpose2d"]), "onnxruntime", "weights.safetensors"),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damage_is_refused_naming_the_file(llama, tmp_path, damage, mode):
    fn, backends, file = DAMAGE[damage]
    d = _copy(llama, tmp_path)
    fn(d)
    for backend in ("onnxruntime", "executorch") if backends == "both" else (backends,):
        if backend == "onnxruntime" and mode == "auto" and file in NOT_READ_IN_PLACE:
            with ShiraSession(d, backend=backend, mode=mode) as s:  # not read, so no obstacle
                assert s.mode == "in-place"
            continue
        with pytest.raises(ManifestError) as e:
            ShiraSession(d, backend=backend, mode=mode)
        msg = str(e.value)
        assert "\n" not in msg and file in msg, msg


@pytest.mark.parametrize("backend,file", [("onnxruntime", "model_prepacked.onnx"), ("executorch", "model_prepacked.pte")])
def test_damaged_packed_engine_file(llama, tmp_path, backend, file):
    """Refused where it is read (auto, background); not read, so no obstacle, with mode="patchable"."""
    d = _copy(llama, tmp_path)
    _truncate(d / file)
    for mode in ("auto", "two-phase"):
        with pytest.raises(ManifestError, match=file):
            ShiraSession(d, backend=backend, mode=mode)
    with ShiraSession(d, backend=backend, mode="patchable") as s:
        assert s.run(llama.inputs)


def test_missing_sample_is_refused_where_it_is_needed(llama, tmp_path):
    d = _copy(llama, tmp_path)
    (d / "sample.npz").unlink()
    with pytest.raises(ManifestError, match="sample.npz"):
        ShiraSession(d, mode="auto", backend="executorch")  # "auto" measures both engines on the sample
    with ShiraSession(d, mode="two-phase") as s:
        assert s.run(llama.inputs)
    with pytest.raises(ManifestError, match="sample.npz"):  # the first bake proves its patches on the sample
        ShiraSession(d, mode="auto", cache_dir=tmp_path / "fresh-cache")
    with ShiraSession(d, mode="patchable") as s:
        assert s.run(llama.inputs)


def test_base_path_that_is_a_file_or_missing(llama, tmp_path):
    for path, what in ((llama.base_dir / "manifest.json", "not a directory"), (tmp_path / "nope", "not found")):
        with pytest.raises(ManifestError, match=what):
            ShiraSession(path)


def test_old_manifest_without_checksums(llama, tmp_path):
    d = _copy(llama, tmp_path)
    _edit_manifest(d, lambda m: [p.pop("crc32") for t in m["tensors"].values() for ps in t["placements"].values()
                                 for p in ps])
    with pytest.raises(ManifestError, match="export the model again"):
        ShiraSession(d)
    with ShiraSession(d, verify="off", mode="patchable") as s:  # the documented way to open it anyway
        assert s.run(llama.inputs)


def test_full_verify_catches_what_the_checksum_record_alone_would_not(llama, tmp_path):
    """verify="full" re-hashes each weight in torch layout: an edited sha256 in the manifest is caught."""
    d = _copy(llama, tmp_path)
    _edit_manifest(d, lambda m: _first(m)[0].__setitem__("sha256", "0" * 64))
    with ShiraSession(d, mode="patchable"):
        pass
    with pytest.raises(ManifestError, match="sha256"):
        ShiraSession(d, verify="full", mode="patchable")


# ---- session lifetime -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["onnxruntime", "executorch"])
def test_close_stops_threads_frees_engines_and_refuses_later_calls(llama, backend):
    import threading

    with ShiraSession(llama.base_dir, backend=backend, mode="two-phase") as s:
        s.load(llama.blobs["zen"], name="zen")
        s.switch("zen")
        assert any(t.name == "shira-two-phase" for t in threading.enumerate())
    assert s.closed and s.engine.prepacked is None
    assert not any(t.name == "shira-two-phase" and t.is_alive() for t in threading.enumerate())
    for call in (lambda: s.run(llama.inputs), lambda: s.switch("zen"), lambda: s.load(llama.blobs["zen"]),
                 lambda: s.reset(), lambda: s.weight(next(iter(s.manifest.tensors))), s.stop_two_phase):
        with pytest.raises(ShiraError, match="closed"):
            call()
    s.close()  # idempotent


def test_stop_two_phase_keeps_the_session_open(llama):
    with ShiraSession(llama.base_dir, mode="two-phase") as s:
        s.stop_two_phase()
        assert s.mode == "patchable" and s.rebuilder is None and not s.closed
        out = s.run(llama.inputs)
        assert np.isfinite(next(iter(out.values()))).all()


def test_background_without_a_prepacked_model_is_refused_and_auto_says_why(llama, tmp_path):
    d = _copy(llama, tmp_path)
    (d / "model_prepacked.onnx").unlink()  # an older export had none
    with pytest.raises(ShiraError, match="cannot switch in two phases"):
        ShiraSession(d, mode="two-phase")
    with ShiraSession(d, mode="auto", cache_dir=tmp_path / "cache") as s:
        assert s.mode == "patchable" and "two-phase switching needs" in s.mode_reason, s.mode_reason
        assert s.run(llama.inputs)
