"""The app's Java bake (android_demo/shira-core: Baker, OnnxRegions, PositionForms) against the Python runtime's
inplace/bake.py, on the host. The host has no ONNX Runtime Java jar, so the one step that needs ORT (optimize a model and
save it with its packed weights) is played by this process: BakeTool prints "bake SOURCE OUT", and Python runs
onnxruntime with exactly bake._bake_once's options. Everything else (the coded sources, reading baked.onnx's
regions, decoding, the bit-for-bit proof, the position forms, bake.json and its maps) is the Java code's."""
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tests.test_java_core import ENV, ROOT, java_build  # noqa: F401 - the module's JDK build, as a fixture here

THREADS = 2
STYLES = {name: ROOT / "models/styles" / f"{name}.shira" for name in ("sepia", "pencil")}  # the app's styles


@pytest.fixture(scope="module")
def onnx_base(tmp_path_factory) -> Path:
    """The style net exported for ONNX Runtime only (the base the committed styles were trained on)."""
    from shira_toolchain.export import export_model
    from shira_toolchain.model_source import resolve

    base = tmp_path_factory.mktemp("java-bake") / "base"
    export_model(resolve("style-net"), base, formats=("onnx",), log=lambda *a: None)
    return base


def _java_bake(build, base, out, fail_at=None):
    """BakeTool over `base` into `out`, its ORT requests baked here. Returns (exit status, its other lines); what
    it printed on stderr is the last line."""
    from shira_runtime.inplace.bake import BakeError, _bake_once

    tool = subprocess.Popen(["java", "-cp", f"{build}/main:{build}/test", "org.shira.core.BakeTool", str(base),
                             str(out), ort.__version__], env=ENV, text=True, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines, asked = [], 0
    try:
        for line in tool.stdout:
            if not line.startswith("bake "):
                lines.append(line.rstrip("\n"))
                continue
            _, source, into = line.split()
            try:
                if asked == fail_at:
                    raise BakeError("refused by the test")
                _bake_once(Path(source), Path(into), THREADS)
                reply = "done"
            except BakeError as e:
                reply = f"error {e}"
            asked += 1
            tool.stdin.write(reply + "\n")
            tool.stdin.flush()
    finally:
        tool.stdin.close()
        status = tool.wait(timeout=60)
    return status, lines + [tool.stderr.read()]


@pytest.fixture(scope="module")
def bakes(java_build, onnx_base, tmp_path_factory):  # noqa: F811
    """(the Python runtime's bake of the export, as ShiraSession made it; the Java bake; BakeTool's lines)."""
    from shira_runtime import ShiraSession

    tmp = tmp_path_factory.mktemp("bakes")
    with ShiraSession(onnx_base, threads=THREADS, cache_dir=tmp / "py-cache", bake="always") as py:
        assert py.mode == "in-place", py.mode_reason
        py_bake = py.engine.bake_dir
    status, lines = _java_bake(java_build, onnx_base, tmp / "java" / "bake")
    assert status == 0, lines
    assert sorted(p.name for p in (tmp / "java").iterdir()) == ["bake"]  # renamed into place, no temporary left
    return py_bake, tmp / "java" / "bake", lines


def _positions(bake_dir: Path, name: str, copy: dict, size: int) -> np.ndarray:
    """A copy's positions of every entry, read by the Python runtime's in-place backend."""
    from shira_runtime.inplace.engine import _Copy

    return _Copy(name, copy, bake_dir, size).positions(np.arange(size, dtype=np.int64))


def _form(copy: dict):
    p = copy["positions"]
    return "map" if isinstance(p, str) and p.startswith("maps/") else p


def test_java_bake_maps_every_weight_as_the_python_bake_does(bakes, onnx_base):
    """The same regions in baked.onnx; for every placement the same copies (region, kind, offset, length), the
    same position form, and equal positions for every entry; the .npy maps byte for byte numpy's; the same absmax."""
    from shira_format import manifest as manifest_mod
    from shira_runtime.inplace.regions import read_regions

    py_bake, java_bake, lines = bakes
    steps = [line.split(" ", 1)[1].rsplit(" in ", 1)[0] for line in lines if line.startswith("progress ")]
    assert steps == ["baked the base", "baked the row positions", "baked the col positions", "mapped 6 weights"], lines
    assert lines[-2:] == ["ok 6", ""], lines
    assert sorted(p.name for p in java_bake.iterdir()) == ["bake.json", "baked.bin", "baked.onnx", "maps"]
    assert read_regions((java_bake / "baked.onnx").read_bytes()) == read_regions((py_bake / "baked.onnx").read_bytes())
    want, got = (json.loads((d / "bake.json").read_text()) for d in (py_bake, java_bake))
    assert {k: v for k, v in got.items() if k != "placements"} == \
        {"format": 2, "onnxruntime": ort.__version__, "session_config": {}} == \
        {k: v for k, v in want.items() if k != "placements"}
    assert list(got["placements"]) == list(want["placements"])
    manifest = manifest_mod.load(onnx_base)
    sizes = {p.name: int(np.prod(p.shape)) for t in manifest.tensors.values() for p in t.placements["onnxruntime"]}
    forms = []
    for name, w in want["placements"].items():
        g = got["placements"][name]
        assert g["absmax"] == w["absmax"], name
        assert len(g["copies"]) == len(w["copies"]), name
        for gc, wc in zip(g["copies"], w["copies"]):
            assert [gc[k] for k in ("region", "kind", "offset", "length")] == \
                [wc[k] for k in ("region", "kind", "offset", "length")], name
            assert _form(gc) == _form(wc), name
            if _form(gc) == "map":
                assert (java_bake / gc["positions"]).read_bytes() == (py_bake / wc["positions"]).read_bytes(), name
            assert np.array_equal(_positions(java_bake, name, gc, sizes[name]),
                                  _positions(py_bake, name, wc, sizes[name])), name
            forms.append(f"{gc['kind']}:{_form(gc) if isinstance(_form(gc), str) else _form(gc)['form']}")
    assert sorted(forms) == ["data:map"] * 4 + ["prepacked:panels"] * 2, forms  # docs/INPLACE.md, x86 host


def test_a_switch_on_the_java_bake_gives_the_python_bakes_output(bakes, onnx_base, tmp_path):
    """inplace/bake.py's last steps, run here as the app's caller would run them, then the runtime itself on the Java bake:
    the baked model loads, a random patch written into it reaches ORT's output, and a ShiraSession whose cache holds
    the Java bake switches and fuses to the Python-baked session's outputs, bit for bit."""
    from shira_format import manifest as manifest_mod
    from shira_runtime import ShiraSession
    from shira_runtime.inplace import bake
    from shira_runtime.inplace.cache import bake_key
    from shira_format.weights import safetensors_views

    py_bake, java_bake, _ = bakes
    manifest = manifest_mod.load(onnx_base)
    bake._load_check(java_bake, THREADS)
    weights = onnx_base / "weights.safetensors"
    stored = safetensors_views(manifest, bake._mapped_weights(weights), weights)
    bake._prove_patches_reach_the_engine(manifest, java_bake, onnx_base / "model_prepacked.onnx", weights.name, stored,
                                         THREADS)
    key_dir = tmp_path / "cache" / f"{manifest.root.name}-{bake_key(manifest)}"
    shutil.copytree(java_bake, key_dir)
    x = {"image": np.load(onnx_base / "sample.npz")["input:image"]}
    states = [None, {"sepia": 1.0}, ({"sepia": 0.7, "pencil": 0.5}, "ties"), {"pencil": 1.0}, {}]
    out = {}
    for cache in (tmp_path / "cache", py_bake.parent):
        with ShiraSession(onnx_base, threads=THREADS, cache_dir=cache, bake="always") as s:
            assert s.mode == "in-place", s.mode_reason
            for name, blob in STYLES.items():
                s.load(blob, name)
            runs = []
            for state in states:
                if isinstance(state, tuple):
                    s.fuse(*state)
                elif state is not None:
                    s.fuse(state)
                runs.append(s.run(x)["styled"])
            out[cache] = (s.engine.bake_dir, runs)
    (java_dir, java_runs), (py_dir, py_runs) = out.values()
    assert java_dir == key_dir and py_dir == py_bake
    assert sorted(p.name for p in key_dir.parent.iterdir()) == [key_dir.name]  # the session baked nothing itself
    assert json.loads((key_dir / "bake.json").read_text()) == json.loads((java_bake / "bake.json").read_text())
    for i, (a, b) in enumerate(zip(java_runs, py_runs)):
        assert np.array_equal(a, b), (states[i], float(np.abs(a - b).max()))
    assert np.abs(java_runs[1] - java_runs[0]).max() > 1e-3  # the style reached the engine
    assert np.array_equal(java_runs[-1], java_runs[0])  # reset


def test_java_bake_refuses_quantized_and_damaged_exports_and_leaves_nothing(java_build, onnx_base, tmp_path):  # noqa: F811
    """A quantized placement is refused before anything is baked, a damaged export (a weight off its CRC-32) too,
    and an ORT failure in the middle of the bake leaves no temporary directory behind."""
    base = tmp_path / "base"
    shutil.copytree(onnx_base, base)
    manifest = json.loads((base / "manifest.json").read_text())
    quantized = json.loads(json.dumps(manifest))
    next(iter(quantized["tensors"].values()))["placements"]["onnxruntime"][0]["quant"] = {"bits": 8}
    (base / "manifest.json").write_text(json.dumps(quantized))
    status, lines = _java_bake(java_build, base, tmp_path / "out" / "bake")
    assert status == 3 and lines[-2].startswith("unsupported ") and "quantized placements are not baked" in lines[-2], lines
    (base / "manifest.json").write_text(json.dumps(manifest))
    data = bytearray((base / "weights.safetensors").read_bytes())
    data[-1] ^= 0x40  # inside the last tensor's bytes
    (base / "weights.safetensors").write_bytes(data)
    status, lines = _java_bake(java_build, base, tmp_path / "out" / "bake")
    assert status == 3 and lines[-2].startswith("damaged ") and "checksum" in lines[-2], lines
    shutil.copy(onnx_base / "weights.safetensors", base / "weights.safetensors")
    status, lines = _java_bake(java_build, base, tmp_path / "out" / "bake", fail_at=1)  # the row pass fails
    assert status != 0 and "refused by the test" in lines[-1], lines
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
