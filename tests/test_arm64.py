"""The phone's CPU, emulated: the device runtime on aarch64 under qemu, on bases exported on this x86 host.

tests/arm64/make_root.sh makes (and caches) a Debian arm64 root with PyPI's aarch64 wheels of numpy and
onnxruntime (the host's versions); tests/arm64/run_in_root.sh runs tests/arm64/check_states.py there as a given
CPU model, torch-free, as a device would: open each base (baked on that CPU), switch, fuse (sum, ties), switch
to the other adapter, reset. The same script runs on the host; the two are compared here.

CPU models: cortex-a72 (ARMv8.0: no dot product), cortex-a76 (ARMv8.2 with dot product, the class of most
phones since 2019) and qemu's max (SVE, i8mm, ...). ONNX Runtime's MLAS picks its kernels, hence its packing,
by these features, so each core bakes on its own. Emulated times are not phone times; none is asserted.

Marked `arm64`: CI runs it with the long cases (`pytest -m "long or fuzz or arm64"`); it needs root (apt-get,
mount, chroot), and the first run spends about 8 minutes making the root (cached in $SHIRA_ARM64_ROOT, else
~/.cache/shira/arm64-root).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.arm64
HERE = Path(__file__).resolve().parent / "arm64"
ROOT_DIR = Path(os.environ.get("SHIRA_ARM64_ROOT") or Path.home() / ".cache" / "shira" / "arm64-root")
CPUS = ("cortex-a72", "cortex-a76", "max")
MODELS = Path(__file__).resolve().parents[1] / "models"
FLOAT_TOL = 1e-4  # of an output's scale: float32 kernels differ in summation order only
# Quantized bases run MatMulNBits with int8 activations (accuracy level 4). Each CPU's kernel quantizes the
# activations its own way (per row or per block, symmetric or not), so an int4/int8 output moves by a few
# percent of its scale between x86 and ARM kernels, and between ARM cores with and without dot product; what
# must not move is the answer of one device for one state (checked bit for bit below).
QUANT_TOL = 0.1
SAME_ANSWER = 1e-4  # shira_runtime.session.SAME_ANSWER: where two engines may answer one state


@pytest.fixture(scope="module")
def arm_root() -> Path:
    if os.geteuid() != 0:
        pytest.skip("the arm64 root needs root (apt-get, mount, chroot); CI runs as root")
    import numpy
    import onnxruntime

    r = subprocess.run(["bash", str(HERE / "make_root.sh"), str(ROOT_DIR), f"numpy=={numpy.__version__}",
                        f"onnxruntime=={onnxruntime.__version__}"], capture_output=True, text=True, timeout=3600)
    assert r.returncode == 0, r.stderr[-3000:]
    return ROOT_DIR


def _finetune_blob(base: Path, model_dir: Path, seed: int, out: Path) -> Path:
    """A sparse diff of a 'fine-tune' that moved 2% of every conv weight (ResNet's folded convs included)."""
    from safetensors.numpy import load_file, save_file
    from shira_toolchain.pack import pack_adapter

    state = load_file(str(model_dir / "model.safetensors"))
    rng = np.random.default_rng(seed)
    for k, v in state.items():
        if v.ndim == 4:
            flat = v.reshape(-1).copy()
            idx = rng.choice(flat.size, max(1, flat.size // 50), replace=False)
            flat[idx] += rng.normal(0, 0.05, idx.size).astype(flat.dtype)
            state[k] = flat.reshape(v.shape)
    ft = out.with_suffix(".safetensors")
    save_file(state, str(ft))
    pack_adapter(ft, base, out, name=out.stem, value_coding="f32")
    return out


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """Bases exported on the host (ONNX Runtime only) with two adapters each, and the plan check_states reads."""
    from shira_models.architectures import save
    from shira_toolchain.export import export_model
    from shira_toolchain.model_source import resolve

    w = tmp_path_factory.mktemp("arm64")
    lm = [MODELS / "lm_tasks" / f"{t}.shira" for t in ("upper", "reverse")]
    styles = [MODELS / "styles" / f"{t}.shira" for t in ("sepia", "blue-fire")]
    cases = []

    def case(name, subject, blobs, **kw):
        """Export `subject` to w/name; `blobs`: adapter paths, or a function of the base that makes them."""
        export_model(subject, w / name, formats=("onnx",), log=lambda *a: None, **kw)
        mine = []
        for b in blobs(w / name) if callable(blobs) else blobs:
            if b.parent != w:
                shutil.copy(b, w / f"{name}-{b.name}")
            mine.append(b.name if b.parent == w else f"{name}-{b.name}")
        sample = np.load(w / name / "sample.npz")
        np.savez(w / f"{name}-inputs.npz", **{k.removeprefix("input:"): sample[k] for k in sample.files
                                              if k.startswith("input:")})
        cases.append({"name": name, "base": name, "blobs": mine, "inputs": f"{name}-inputs.npz"})

    case("llama-f32", resolve("tiny-llama"), lm)
    case("llama-int8", resolve("tiny-llama"), lm, quantize="int8")
    case("llama-int4", resolve("tiny-llama"), lm, quantize="int4")
    case("style-net", resolve("style-net"), styles)
    hf = save("resnet", w / "resnet-hf")  # a folded-BatchNorm conv net (docs/MODELS.md)
    case("resnet", resolve(str(hf)), lambda base: [_finetune_blob(base, hf, s, w / f"resnet-{n}.shira")
                                                   for s, n in ((1, "a"), (2, "b"))])
    # the float Llama once more, opened without a bake: ORT's packed copies found in the live session's memory
    cases.append({**cases[0], "name": "llama-f32-live", "bake": "auto"})
    (w / "plan.json").write_text(json.dumps({"cases": cases}))
    shutil.copy(HERE / "check_states.py", w / "check_states.py")
    return w


def _result(out: Path) -> tuple[dict, dict]:
    report = json.loads((out / "report.json").read_text())
    return report, {name: dict(np.load(out / f"{name}.npz")) for name in report["cases"]}


@pytest.fixture(scope="module")
def host(work) -> tuple[dict, dict]:
    out = work / "out-host"
    r = subprocess.run([sys.executable, "check_states.py", "plan.json", str(out)], cwd=work, capture_output=True,
                       text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    return _result(out)


@pytest.fixture(scope="module", params=CPUS)
def arm(request, arm_root, work) -> tuple[str, dict, dict]:
    cpu = request.param
    cmd = ["bash", str(HERE / "run_in_root.sh"), str(arm_root), cpu, str(work),
           "/bin/sh", "-c", f"cd /work && python3 check_states.py plan.json out-{cpu}"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    assert r.returncode == 0, r.stderr[-3000:]
    return (cpu, *_result(work / f"out-{cpu}"))


def test_the_emulated_core_is_the_one_asked_for(arm):
    cpu, report, _ = arm
    assert report["machine"] == "aarch64"
    assert report["cpu"]["asimddp"] == (cpu != "cortex-a72"), report["cpu"]
    assert report["cpu"]["sve"] == (cpu == "max"), report["cpu"]


def test_every_base_is_patched_in_place(arm):
    cpu, report, _ = arm
    fell_back = {n: f"{c['mode']}: {c['mode_reason']}" for n, c in report["cases"].items() if c["mode"] != "in-place"}
    assert not fell_back, f"{cpu}: {fell_back}"


def test_the_float_llama_is_found_in_the_live_sessions_memory(arm, host):
    """Where MLAS packs float MatMul weights in panels (x86, cores without SVE), no bake is needed."""
    cpu, report, _ = arm
    assert host[0]["cases"]["llama-f32-live"]["route"] == "live", host[0]["cases"]["llama-f32-live"]
    live = report["cases"]["llama-f32-live"]
    assert live["mode"] == "in-place", live
    if cpu != "max":  # qemu's max core packs with SVE kernels in a layout no form describes: it bakes
        assert live["route"] == "live", live


def test_outputs_match_the_host(arm, host):
    cpu, report, outs = arm
    _, host_outs = host
    worst = {}
    for name, states in outs.items():
        tol = QUANT_TOL if "int" in name else FLOAT_TOL
        for key, got in states.items():
            if "@full" in key:
                continue
            want = host_outs[name][key]
            err = float(np.max(np.abs(got - want))) / max(float(np.max(np.abs(want))), 1e-12)
            worst[name] = max(worst.get(name, 0.0), err)
            assert err <= tol, f"{cpu} {name} {key}: {err:.3g} of the output's scale from the host's"
    print(cpu, {k: f"{v:.2g}" for k, v in worst.items()})


def test_reset_is_bit_exact_and_the_engine_never_changes_the_answer(arm):
    cpu, report, outs = arm
    for name, states in outs.items():
        case = report["cases"][name]
        assert case["reset_weights_exact"], f"{cpu} {name}: a weight differs from the base after reset()"
        for key, v in states.items():
            if key.startswith("reset/"):
                assert np.array_equal(v, states["base/" + key.removeprefix("reset/")]), f"{cpu} {name}: {key}"
            if "@full" in key:  # two-phase: the packed engine must answer what the patchable one did
                ref = states[key.replace("@full", "")]
                err = float(np.max(np.abs(v - ref))) / max(float(np.max(np.abs(ref))), 1e-12)
                assert err <= SAME_ANSWER, f"{cpu} {name}: {key} differs by engine ({err:.2g} of its scale)"


def test_adapters_change_the_output(arm):
    cpu, _, outs = arm
    for name, states in outs.items():
        for key in states:
            if key.startswith("switch/"):
                moved = float(np.max(np.abs(states[key] - states["base/" + key.removeprefix("switch/")])))
                assert moved > 0, f"{cpu} {name}: the adapter changed nothing"
