"""The Android app's plain-Java core, built and unit-tested (JUnit) on the host JVM against tests/vectors, and
checked against the Python runtime on a real export: the bytes the app would patch, bit for bit, and those
bytes run in the real engines."""
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {"PATH": "/usr/bin:/bin:/usr/local/bin"}


@pytest.fixture(scope="session")
def java_build(tmp_path_factory) -> Path:
    """shira-core compiled and its JUnit suite run (run_host_tests.sh), once a session; the classes stay for the
    tools below and the other Java test modules (test_java_inplace, test_java_bake)."""
    assert shutil.which("javac") and Path("/usr/share/java/junit4.jar").exists(), \
        "needs a JDK and Debian's junit4 package (.ci/run installs them)"
    out = tmp_path_factory.mktemp("java")
    r = subprocess.run(["sh", str(ROOT / "android_demo/shira-core/run_host_tests.sh")], capture_output=True, text=True,
                       timeout=600, env={**ENV, "SHIRA_JAVA_OUT": str(out)})
    log = r.stdout + r.stderr
    assert r.returncode == 0 and "OK (" in log, log[-3000:]
    return out


def test_java_core_junit_passes(java_build):
    assert (java_build / "test" / "org/shira/core/CrossLanguageTest.class").exists()


def _outside(size: int, regions) -> np.ndarray:
    keep = np.ones(size, bool)
    for begin, end in regions:
        keep[begin:end] = False
    return keep


@pytest.mark.parametrize("runtime", ["onnxruntime", "executorch"])
def test_app_core_patches_a_real_export_like_the_python_runtime(java_build, stylenet, runtime, tmp_path):
    """PatchableBase + WeightPatcher as the app runs them (a direct buffer over weights.safetensors for ONNX Runtime,
    a writable mapping of a copy of model.pte for ExecuTorch) on the exported style net, two of the shipped styles fused
    by the TIES rule: every patched weight equals the Python runtime's bit for bit, nothing else in the file
    changes, and the patched bytes run in the real engine to the Python session's output (for ExecuTorch: the
    program loaded again from the patched file, which is how the app makes XNNPACK repack its conv weights)."""
    import onnxruntime as ort
    from shira_runtime import ShiraSession

    scales, rule = {"sepia": 0.7, "pencil": 0.5}, "ties"
    blobs = {name: ROOT / "models/styles" / f"{name}.shira" for name in scales}  # the styles the app ships
    out = tmp_path / ("weights.safetensors" if runtime == "onnxruntime" else "model.pte")
    args = [f"{name}={blobs[name]}:{scale}" for name, scale in scales.items()]
    r = subprocess.run(["java", "-cp", f"{java_build}/main:{java_build}/test", "org.shira.core.PatchBaseTool",
                        str(stylenet.base_dir), runtime, str(out), rule, *args],
                       capture_output=True, text=True, timeout=300, env=ENV)
    assert r.returncode == 0, r.stdout + r.stderr
    with ShiraSession(stylenet.base_dir, runtime, mode="patchable") as s:
        for name in scales:
            s.load(blobs[name], name)
        s.fuse(scales, rule)
        want = s.live_buffers()
        reference = s.run(stylenet.inputs)
    assert sum(int(np.count_nonzero(v)) for v in want.values()) > 0
    original = np.fromfile(stylenet.base_dir / out.name, np.uint8)
    patched = np.fromfile(out, np.uint8)
    assert patched.size == original.size
    places = [p for t in s.manifest.tensors.values() for p in t.placements[runtime]]
    if runtime == "onnxruntime":
        from safetensors.numpy import load_file

        got = load_file(out)
        for p in places:
            assert np.array_equal(got[p.name].reshape(-1).view(np.uint32), want[p.name].reshape(-1).view(np.uint32)), p.name
        feeds = {**stylenet.inputs, **{p.name: got[p.name] for p in places}}
        sess = ort.InferenceSession(str(stylenet.base_dir / "model.onnx"), providers=["CPUExecutionProvider"])
        ran = sess.run(None, feeds)[0]
        changed = np.flatnonzero(patched != original)
        assert changed.size > 0
    else:
        import torch
        from executorch.runtime import Runtime

        regions = [(p.offset, p.offset + 4 * int(np.prod(p.shape))) for p in places]
        for p, (begin, end) in zip(places, regions):
            assert np.array_equal(patched[begin:end].view(np.uint32), want[p.name].reshape(-1).view(np.uint32)), p.name
        keep = _outside(original.size, regions)
        assert np.array_equal(patched[keep], original[keep])  # the program's other bytes are untouched
        touched = [p for p, (b, e) in zip(places, regions) if not np.array_equal(patched[b:e], original[b:e])]
        assert any(p.reload for p in touched) and not all(p.reload for p in touched)  # conv and linear weights
        assert "reload true" in r.stdout  # a conv weight XNNPACK packed at load changed: the app reloads
        image = [torch.from_numpy(stylenet.inputs["image"])]
        program = Runtime.get().load_program(out)
        ran = program.load_method("forward").execute(image)[0].numpy()
        # reload: false weights are live without a reload: a program loaded (mapped) from a copy of the base,
        # then written through a shared mapping of that file, runs with the new linear weights at once
        live_file, linear_only = tmp_path / "live.pte", tmp_path / "linear.pte"
        shutil.copy(stylenet.base_dir / "model.pte", live_file)
        live = Runtime.get().load_program(live_file).load_method("forward")
        before = live.execute(image)[0].numpy()
        mapping = np.memmap(live_file, np.uint8, "r+")
        expect = original.copy()
        for p, (begin, end) in zip(places, regions):
            if not p.reload:
                mapping[begin:end] = patched[begin:end]
                expect[begin:end] = patched[begin:end]
        mapping.flush()
        expect.tofile(linear_only)
        after = live.execute(image)[0].numpy()
        want_live = Runtime.get().load_program(linear_only).load_method("forward").execute(image)[0].numpy()
        assert np.abs(after - before).max() > 1e-4
        np.testing.assert_allclose(after, want_live, rtol=0, atol=1e-6)
        del mapping
    np.testing.assert_allclose(ran, reference["styled"], rtol=0, atol=1e-6)
    with ShiraSession(stylenet.base_dir, runtime, mode="patchable") as base:
        assert np.abs(base.run(stylenet.inputs)["styled"] - ran).max() > 1e-3  # the adapters changed the image
