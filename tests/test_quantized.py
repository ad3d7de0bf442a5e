"""Quantized bases (docs/QUANTIZATION.md): int8/int4 MatMulNBits exports of tiny-llama, the shipped task adapters
written into the integers with the base's scales, fused in float and re-quantized once, reset bit for bit."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import snapshot

ROOT = Path(__file__).resolve().parents[1]
ADAPTERS = {n: ROOT / "models" / "lm_tasks" / f"{n}.shira" for n in ("upper", "reverse")}


# int4 in the default run (nibbles, the harder layout); int8 with the long cases
@pytest.fixture(scope="module", params=[pytest.param("int8", marks=pytest.mark.long), "int4"])
def qbase(request, tmp_path_factory) -> tuple[str, Path]:
    from shira_toolchain.export import export_model
    from shira_toolchain.model_source import resolve

    out = tmp_path_factory.mktemp(f"tiny-llama-{request.param}")
    export_model(resolve("tiny-llama"), out, formats=("onnx",), log=lambda *a: None, quantize=request.param)
    return request.param, out


# ExecuTorch's quantized export lowers through torchao and probes every weight with a method reload (about a
# minute for tiny-llama): with the long cases. The default run checks the signed bytes and program scales below,
# and the Java/Python vectors (tests/vectors/patch_quant) hold a signed int8 weight.
@pytest.fixture(scope="module", params=[pytest.param("int8", marks=pytest.mark.long),
                                        pytest.param("int4", marks=pytest.mark.long)])
def qbase_et(request, tmp_path_factory) -> tuple[str, Path]:
    from shira_toolchain.export import export_model
    from shira_toolchain.model_source import resolve

    out = tmp_path_factory.mktemp(f"tiny-llama-pte-{request.param}")
    export_model(resolve("tiny-llama"), out, formats=("pte",), log=lambda *a: None, quantize=request.param)
    return request.param, out


def test_signed_bytes_and_program_scales_decode_as_the_spec_says():
    """ExecuTorch's forms (docs/QUANTIZATION.md): a signed int8 byte is u XOR 0x80 both ways; bfloat16 scales
    widen exactly to float32; per-channel scales repeat over a row's blocks."""
    from shira_format.quant import Quant, decode_scales, dequantize, entries, pack_entries

    q8 = Quant(8, 32, None, True, True, 0, "float32")
    raw = np.array([0x00, 0x7F, 0x80, 0xFF], dtype=np.uint8)  # q = 0, 127, -128, -1
    e = entries(raw, q8)
    assert e[np.arange(4)].tolist() == [128, 255, 0, 127]
    e[np.array([3])] = np.array([130], dtype=np.uint8)  # q = 2
    assert raw.tolist() == [0x00, 0x7F, 0x80, 0x02] and pack_entries(np.array([128, 0]), q8).tolist() == [0, 0x80]
    s = decode_scales(np.array([0.5, 2.0], dtype="<f4").view(np.uint8), q8, 2, 64)
    assert s.tolist() == [0.5, 0.5, 2.0, 2.0]
    w = dequantize(np.full(128, 0x01, dtype=np.uint8), s, q8, 2, 64)  # q = 1 everywhere
    assert w[0, 0] == 0.5 and w[1, 63] == 2.0
    q4 = Quant(4, 32, None, False, False, 0, "bfloat16")
    bf = np.array([0x3F80, 0x3E20], dtype="<u2")  # bfloat16 1.0 and 0.15625
    assert decode_scales(bf.view(np.uint8), q4, 1, 64).tolist() == [1.0, 0.15625]


def test_nibbles_address_entries_and_keep_their_neighbours():
    from shira_format.quant import Nibbles

    data = np.array([0x21, 0x43, 0x65], dtype=np.uint8)
    nib = Nibbles(data)
    assert nib.size == 6 and nib[np.arange(6)].tolist() == [1, 2, 3, 4, 5, 6]
    nib[np.array([0, 1, 5])] = np.array([15, 14, 0], dtype=np.uint8)  # both halves of byte 0 at once
    assert data.tolist() == [0xEF, 0x43, 0x05]


def test_quantize_is_symmetric_per_block_and_per_channel():
    from shira_format.quant import Quant, dequantize, quantize

    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 64)).astype(np.float32)
    w[1] = 0  # an all-zero row stays exact
    for bits, per_channel in ((4, False), (8, True)):
        stored, scales = quantize(w, bits, 32, per_channel)
        q = Quant(bits, 32, "s", per_channel)
        assert stored.shape == q.storage_shape(4, 64) and scales.shape == (8,)
        back = dequantize(stored, scales, q, 4, 64)
        assert np.all(back[1] == 0)
        # each entry within half a step of its block's scale; the block's largest entry exactly representable
        step = np.repeat(scales, 32).reshape(4, 64)
        assert np.all(np.abs(back - w) <= step / 2 + 1e-7)
        if per_channel:
            assert np.all(scales[0::2] == scales[1::2])
        else:
            blocks = np.abs(w).reshape(4, 2, 32).max(-1).reshape(-1)
            assert np.allclose(scales[blocks > 0], blocks[blocks > 0] / 7)


def test_export_writes_matmulnbits_and_a_version_4_manifest(qbase):
    import onnx

    mode, base = qbase
    raw = json.loads((base / "manifest.json").read_text())
    assert raw["format_version"] == 4 and raw["quantization"]["mode"] == mode
    assert raw["quantization"]["patchable"] == len(raw["tensors"])
    bits = {"int8": 8, "int4": 4}[mode]
    for t in raw["tensors"].values():
        (pl,) = t["placements"]["onnxruntime"]
        assert pl["layout"] == "identity" and pl["shape"] == t["shape"] and pl["quant"]["bits"] == bits
    for name in ("model.onnx", "model_prepacked.onnx"):
        g = onnx.load(str(base / name), load_external_data=False).graph
        weights = {i.name for i in g.initializer} | {i.name for i in g.input}
        nbits = [n for n in g.node if n.op_type == "MatMulNBits"]
        assert len(nbits) == len(raw["tensors"]), name
        # what MatMul is left multiplies activations (attention), never a weight
        assert not [n.input[1] for n in g.node if n.op_type == "MatMul" and n.input[1] in weights], name


def _requantized(u: np.ndarray, d: np.ndarray, s: np.ndarray, bits: int) -> np.ndarray:
    """The spec's formula, entry by entry in plain Python floats (binary64), ties to even."""
    z = 1 << (bits - 1)
    out = []
    for ui, di, si in zip(u.tolist(), d.tolist(), s.tolist()):
        t = round((ui - z) + di / si)  # Python's round(): half to even
        out.append(min(max(t, -z), z - 1) + z)
    return np.array(out, dtype=np.uint8)


def _entries(session, pname, p):
    from shira_format.quant import entries

    return entries(session.live_buffers()[pname], p.quant)


def test_switch_requantizes_with_the_base_scales_and_reset_is_bit_exact(qbase):
    from shira_format.adapter import read_adapter
    from shira_runtime import ShiraSession

    mode, base = qbase
    with ShiraSession(base, mode="patchable") as s:
        before = snapshot(s)
        s.load(ADAPTERS["upper"])
        s.switch("upper")
        adapter = read_adapter(ADAPTERS["upper"], s.manifest)
        clamped = 0
        for t in adapter.tensors.values():
            info = s.manifest.tensors[t.target]
            (p,) = info.placements["onnxruntime"]
            base_u = _entries_of_bytes(before[p.name], p)[t.indices]
            scale = p.quant.scale_of(s.engine.scales[p.name], t.indices, info.shape[1])
            want = _requantized(base_u, t.values, scale, p.quant.bits)
            assert np.array_equal(_entries(s, p.name, p)[t.indices], want), t.target
            z = p.quant.zero_point
            target = np.rint(base_u.astype(np.float64) - z + t.values.astype(np.float64) / scale)
            clamped += int(np.count_nonzero((target < -z) | (target > z - 1)))
            untouched = np.setdiff1d(np.arange(int(np.prod(info.shape))), t.indices)
            assert np.array_equal(_entries(s, p.name, p)[untouched], base_u_all(before[p.name], p)[untouched])
        assert s.clamped == clamped > 0  # these adapters were trained on the float base: many leave its range
        s.reset()
        assert snapshot(s) == before and s.clamped == 0


def _entries_of_bytes(raw: bytes, p):
    from shira_format.quant import entries

    return entries(np.frombuffer(raw, dtype=np.uint8).copy(), p.quant)


def base_u_all(raw: bytes, p) -> np.ndarray:
    e = _entries_of_bytes(raw, p)
    return e[np.arange(e.size)]


def test_fusion_sums_in_float_and_requantizes_once(qbase):
    from shira_format.adapter import read_adapter
    from shira_runtime import ShiraSession

    _, base = qbase
    with ShiraSession(base, mode="patchable") as s:
        before = snapshot(s)
        for name, path in ADAPTERS.items():
            s.load(path, name)
        s.fuse({"upper": 1.0, "reverse": -0.5})
        a, b = (read_adapter(ADAPTERS[n], s.manifest) for n in ("upper", "reverse"))
        overlap = 0
        for target, ta in a.tensors.items():
            tb = b.tensors.get(target)
            info = s.manifest.tensors[target]
            (p,) = info.placements["onnxruntime"]
            both, ia, ib = np.intersect1d(ta.indices, tb.indices, return_indices=True) if tb else ([], [], [])
            if not len(both):
                continue
            overlap += len(both)
            d = (ta.values[ia].astype(np.float64) - 0.5 * tb.values[ib].astype(np.float64)).astype(np.float32)
            scale = p.quant.scale_of(s.engine.scales[p.name], both, info.shape[1])
            want = _requantized(_entries_of_bytes(before[p.name], p)[both], d, scale, p.quant.bits)
            assert np.array_equal(_entries(s, p.name, p)[both], want), target
        assert overlap > 0  # the two adapters share entries: the sum is what is tested
        s.reset()
        assert snapshot(s) == before


def test_the_engine_computes_with_the_patched_integers(qbase):
    """The patchable engine's output equals torch's with the dequantized patched weights (the engine computes in
    float32 from the integers it reads): the bytes written are the bytes run."""
    from shira_models import BUILTIN
    from shira_runtime import ShiraSession
    from shira_toolchain.model_source import resolve

    assert "tiny-llama" in BUILTIN
    subject = resolve("tiny-llama")
    with ShiraSession(qbase[1], mode="patchable") as s:
        s.load(ADAPTERS["reverse"])
        s.switch("reverse")
        x = s.manifest.sample_inputs()
        out = s.run(x)
        params = dict(subject.model.named_parameters())
        with torch.no_grad():
            for target in s.manifest.tensors:
                params[target].copy_(torch.from_numpy(s.weight(target)))
            ref = subject.export_module()(*(torch.from_numpy(v) for v in x.values()))
    ref = ref[0] if isinstance(ref, tuple) else ref
    (key,) = out
    assert np.max(np.abs(out[key] - ref.numpy())) < 1e-3 * np.max(np.abs(ref.numpy()))


def test_a_refused_fusion_leaves_the_integers_untouched(qbase):
    from shira_format.errors import AdapterError
    from shira_runtime import ShiraSession

    with ShiraSession(qbase[1], mode="patchable") as s:
        s.load(ADAPTERS["upper"])
        s.switch("upper")
        live = snapshot(s)
        with pytest.raises(AdapterError):
            s.fuse({"upper": 1e38, "missing": 1.0})
        with pytest.raises(AdapterError, match="non-finite"):
            s.fuse({"upper": 3e38})  # the float sum overflows before any re-quantization
        assert snapshot(s) == live and s.active == {"upper": 1.0}


@pytest.mark.parametrize("edit, message", [
    (lambda pl: pl["quant"].update(bits=3), "quant bits must be one of"),
    (lambda pl: pl["quant"].update(block=24), "quant block must be one of"),
    (lambda pl: pl.update(layout="transpose2d", shape=pl["shape"][::-1]), "identity layout"),
    (lambda pl: pl["quant"].pop("scales"), "quant scales"),
    (lambda pl: pl["quant"].update(scales_offset=0), "executorch placements only"),
])
def test_a_damaged_quant_entry_is_refused_in_one_line(qbase, tmp_path, edit, message):
    import shutil

    from shira_format.errors import ManifestError
    from shira_runtime import ShiraSession

    base = tmp_path / "base"
    shutil.copytree(qbase[1], base)
    raw = json.loads((base / "manifest.json").read_text())
    edit(next(iter(raw["tensors"].values()))["placements"]["onnxruntime"][0])
    (base / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match=message) as e:
        ShiraSession(base, mode="patchable")
    assert "\n" not in str(e.value) and str(base / "manifest.json") in str(e.value)


def test_an_older_version_and_a_changed_scale_are_refused(qbase, tmp_path):
    import shutil

    from shira_format.errors import ManifestError
    from shira_format.safetensors_file import read_file
    from shira_runtime import ShiraSession

    base = tmp_path / "base"
    shutil.copytree(qbase[1], base)
    raw = json.loads((base / "manifest.json").read_text())
    (base / "manifest.json").write_text(json.dumps({**raw, "format_version": 3}))
    with pytest.raises(ManifestError, match="needs manifest version 4"):
        ShiraSession(base, mode="patchable")
    (base / "manifest.json").write_text(json.dumps(raw))
    st = read_file(base / "weights.safetensors")
    scales = next(iter(raw["tensors"].values()))["placements"]["onnxruntime"][0]["quant"]["scales"]
    e = st.tensors[scales]
    data = bytearray((base / "weights.safetensors").read_bytes())
    data[st.data_start + e.start + 2] ^= 0x01  # a scale's low mantissa bits: still a valid positive float
    (base / "weights.safetensors").write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="does not match the checksum"):
        ShiraSession(base, mode="patchable")


def test_executorch_holds_xnnpack_integers_and_scales_by_offset(qbase_et):
    """The .pte holds XNNPACK's integers (int4: nibbles as MatMulNBits; int8: signed bytes) and scales (int4:
    bfloat16 per block; int8: float32 per channel) at the manifest's offsets: they dequantize to the float weights
    within half a step, and every quantized placement is patched by method reload."""
    from shira_format.manifest import load
    from shira_format.quant import dequantize, entries
    from shira_runtime.backends.executorch import ExecuTorchEngine
    from shira_toolchain.model_source import resolve

    mode, base = qbase_et
    raw = json.loads((base / "manifest.json").read_text())
    assert raw["quantization"]["executorch"]["patchable"] == len(raw["tensors"])
    manifest = load(base)
    backend = ExecuTorchEngine(manifest)
    params = dict(resolve("tiny-llama").model.named_parameters())
    try:
        for target, info in manifest.tensors.items():
            (p,) = info.placements["executorch"]
            q = p.quant
            assert p.reload and p.layout == "identity" and q.signed == (mode == "int8")
            assert q.scales_dtype == {"int8": "float32", "int4": "bfloat16"}[mode] and q.per_channel == (mode == "int8")
            u = entries(backend.buffers[p.name].copy(), q)[np.arange(int(np.prod(info.shape)))]
            assert int(u.min()) >= 0 and int(u.max()) <= 2 * q.zero_point - 1
            w = params[target].detach().numpy()
            back = dequantize(backend.buffers[p.name].copy(), backend.scales[p.name], q, *info.shape)
            step = np.repeat(backend.scales[p.name], q.block).reshape(info.shape)
            assert np.all(np.abs(back - w) <= step / 2 * 1.0001 + 1e-7), target
    finally:
        backend.close()


def _torchao_twin(session):
    """tiny-llama quantized by torchao as the export does, then given the session's current integers."""
    from shira_format.quant import entries
    from shira_toolchain.export.quantize_executorch import quantize_linears
    from shira_toolchain.model_source import resolve

    q = json.loads((session.manifest.path.parent / "manifest.json").read_text())["quantization"]
    twin, ours, _, _ = quantize_linears(resolve("tiny-llama"), set(session.manifest.tensors), q["mode"],
                                        q["headroom"], q["patchable_mode"], log=lambda *a: None)
    modules = dict(twin.model.named_modules())
    for target, info in session.manifest.tensors.items():
        (p,) = info.placements["executorch"]
        e = entries(session.live_buffers()[p.name], p.quant)
        u = e[np.arange(int(np.prod(info.shape)))].reshape(info.shape)
        qt = modules[target.rsplit(".", 1)[0]].weight
        with torch.no_grad():
            qt.qdata.copy_(torch.from_numpy(u.astype(np.int16) - p.quant.zero_point))
    return twin


def test_executorch_switch_requantizes_reloads_and_resets_bit_exactly(qbase_et):
    """A switch writes q' with the program's own scales into the .pte's integers and reloads the method: the
    output is torchao's for the same integers (XNNPACK computes with the bytes written); reset gives the base's
    bytes and output back exactly."""
    from shira_format.adapter import read_adapter
    from shira_runtime import ShiraSession

    mode, base = qbase_et
    with ShiraSession(base, backend="executorch") as s:
        x = s.manifest.sample_inputs()
        before, out0 = snapshot(s), s.run(x)
        s.load(ADAPTERS["upper"])
        s.switch("upper")
        assert s.engine.program.reloads == 1
        adapter = read_adapter(ADAPTERS["upper"], s.manifest)
        for t in adapter.tensors.values():
            info = s.manifest.tensors[t.target]
            (p,) = info.placements["executorch"]
            base_u = _entries_of_bytes(before[p.name], p)[t.indices]
            scale = p.quant.scale_of(s.engine.scales[p.name], t.indices, info.shape[1])
            want = _requantized(base_u, t.values, scale, p.quant.bits)
            assert np.array_equal(_entries(s, p.name, p)[t.indices], want), t.target
        assert s.clamped > 0
        out = s.run(x)
        twin = _torchao_twin(s)
        with torch.no_grad():
            ref = twin.export_module()(*(torch.from_numpy(v) for v in x.values()))
        ref = (ref[0] if isinstance(ref, tuple) else ref).numpy()
        (key,) = out
        assert np.max(np.abs(out[key] - out0[key])) > 1e-2
        assert np.max(np.abs(out[key] - ref)) <= 1e-4 * np.max(np.abs(ref))
        s.reset()
        assert snapshot(s) == before and s.clamped == 0
        assert np.array_equal(s.run(x)[key], out0[key])


@pytest.mark.parametrize("edit, message", [
    (lambda q: q.update(bits=4, signed=True), "true only for 8 bits"),
    (lambda q: q.pop("scales_offset"), "needs scales_offset"),
    (lambda q: q.update(scales_dtype="float16"), "needs scales_offset"),
    (lambda q: q.update(scales="w.scales"), "no scales name"),
])
def test_a_damaged_executorch_quant_entry_is_refused_in_one_line(qbase_et, tmp_path, edit, message):
    import shutil

    from shira_format.errors import ManifestError
    from shira_runtime import ShiraSession

    base = tmp_path / "base"
    shutil.copytree(qbase_et[1], base)
    raw = json.loads((base / "manifest.json").read_text())
    edit(next(iter(raw["tensors"].values()))["placements"]["executorch"][0]["quant"])
    (base / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match=message) as e:
        ShiraSession(base, backend="executorch")
    assert "\n" not in str(e.value) and str(base / "manifest.json") in str(e.value)


def test_in_place_patches_the_packed_integers_at_once_and_resets_them(qbase, tmp_path):
    """The default session bakes the quantized base (MatMulNBits' packed integers mapped entry by entry) and
    writes adapters into ORT's own packed copy: its output after a switch equals a fresh constant-weight
    session built from the same patched integers, and reset gives the base's output back exactly."""
    import onnxruntime as ort
    from shira_format.quant import pack_entries
    from shira_format.safetensors_file import read_file
    from shira_runtime import ShiraSession

    _, base = qbase
    with ShiraSession(base, cache_dir=tmp_path / "cache") as s:
        assert s.mode == "in-place", s.mode_reason
        x = s.manifest.sample_inputs()
        before = s.run(x)
        for name, path in ADAPTERS.items():
            s.load(path, name)
        s.fuse({"upper": 1.0, "reverse": 0.5})
        got = s.run(x)
        with ShiraSession(base, mode="patchable") as plain:  # one count per entry, however many copies hold it
            for name, path in ADAPTERS.items():
                plain.load(path, name)
            plain.fuse({"upper": 1.0, "reverse": 0.5})
            assert s.clamped == plain.clamped > 0
        st = read_file(base / "weights.safetensors", writable=True)
        for info in s.manifest.tensors.values():
            (p,) = info.placements["onnxruntime"]
            st.array(p.name).reshape(-1)[:] = pack_entries(s.engine.placement_values(p.name), p.quant)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        data = bytes(st.buffer)
        opts.add_external_initializers_from_files_in_memory(["weights.safetensors"], [data], [len(data)])
        ref = ort.InferenceSession(str(base / "model_prepacked.onnx"), opts, providers=["CPUExecutionProvider"])
        want = dict(zip([o.name for o in ref.get_outputs()], ref.run(None, x)))
        for k in want:
            assert np.max(np.abs(got[k] - before[k])) > 1e-3  # the fusion changed the output
            assert np.max(np.abs(got[k] - want[k])) <= 1e-5 * np.max(np.abs(want[k]))
        s.reset()
        after = s.run(x)
        assert all(np.array_equal(after[k], before[k]) for k in before)
        assert all(np.array_equal(s.weight(t), _base_weight(base, s.manifest, t)) for t in s.manifest.tensors)


def _base_weight(base: Path, manifest, target: str) -> np.ndarray:
    from shira_format.quant import dequantize
    from shira_format.safetensors_file import read_file

    st = read_file(base / "weights.safetensors")
    info = manifest.tensors[target]
    (p,) = info.placements["onnxruntime"]
    return dequantize(st.array(p.name), st.array(p.quant.scales).reshape(-1), p.quant, *info.shape)


def test_headroom_defaults_and_limits(qbase):
    """int8 leaves 4x room above each row's largest weight for adapters (docs/QUANTIZATION.md measures why),
    int4 none; constants never get headroom."""
    from shira_toolchain.export import ExportError, export_model
    from shira_toolchain.model_source import resolve

    mode, base = qbase
    q = json.loads((base / "manifest.json").read_text())["quantization"]
    assert q["headroom"] == {"int8": 4.0, "int4": 1.0}[mode] and q["patchable_mode"] == mode
    with pytest.raises(ExportError, match="--headroom must be between 1 and 16"):
        export_model(resolve("tiny-llama"), base.parent / "never", formats=("onnx",), quantize=mode, headroom=0.5,
                     log=lambda *a: None)
    # the scales: each row's largest integer is at most (z - 1) / headroom away from the zero point
    from shira_format.safetensors_file import read_file
    from shira_format.quant import entries

    raw = json.loads((base / "manifest.json").read_text())
    st = read_file(base / "weights.safetensors")
    pl = next(iter(raw["tensors"].values()))["placements"]["onnxruntime"][0]
    u = entries(st.array(pl["name"]).reshape(-1), _quant(pl))
    z = 1 << (pl["quant"]["bits"] - 1)
    top = np.abs(u[np.arange(int(np.prod(pl["shape"])))].astype(np.int64) - z).max()
    assert top <= (z - 1) / q["headroom"] + 0.5 and top >= (z - 1) / q["headroom"] - 0.5


def _quant(pl):
    from shira_format.quant import Quant

    return Quant(pl["quant"]["bits"], pl["quant"]["block"], pl["quant"]["scales"], pl["quant"]["per_channel"])


def test_patchable_int8_under_an_int4_base(tmp_path):
    """--quantize int4 --quantize-patchable int8: the weights adapters touch stay 8-bit (with headroom), the rest
    are 4-bit constants; the session switches in place and resets bit for bit."""
    from shira_runtime import ShiraSession
    from shira_toolchain.export import export_model
    from shira_toolchain.model_source import resolve

    base = tmp_path / "mixed"
    targets = r"(q_proj|v_proj|up_proj|down_proj)\.weight$"
    export_model(resolve("tiny-llama"), base, targets, formats=("onnx",), log=lambda *a: None, quantize="int4",
                 quantize_patchable="int8")
    raw = json.loads((base / "manifest.json").read_text())
    assert {pl["quant"]["bits"] for t in raw["tensors"].values() for pl in t["placements"]["onnxruntime"]} == {8}
    assert raw["quantization"]["constants"] > 0 and raw["quantization"]["mode"] == "int4"
    with ShiraSession(base, cache_dir=tmp_path / "cache") as s:
        assert s.mode == "in-place", s.mode_reason
        before = s.live_buffers()
        s.load(ADAPTERS["upper"])
        s.switch("upper")
        assert s.clamped < 0.1 * 5632  # 4x headroom: the float-trained adapter mostly fits
        s.reset()
        assert all(np.array_equal(v, before[k]) for k, v in s.live_buffers().items())


def test_an_adapter_trained_on_the_quantized_base_is_never_clamped(qbase, tmp_path):
    """shira-train --quantized-base keeps every value within its entry's range: the pack report and the session
    both count 0 clamped entries, where the same recipe trained on the float base is clamped."""
    from shira_runtime import ShiraSession
    from shira_toolchain.model_source import resolve
    from shira_toolchain.pack import pack_adapter
    from shira_toolchain.train import TrainConfig, train

    mode, base = qbase  # int4's range is the narrow one; int8 (long run) is checked the same way
    reports = {}
    for label, qb in (("on-base", str(base)), ("float", None)):
        cfg = TrainConfig(task="upper", mask="snip", r=1, steps=40, lr=5e-2, seed=0,
                          targets=r"(q_proj|v_proj)\.weight$", quantized_base=qb)
        train(resolve("tiny-llama"), cfg, tmp_path / label, log=lambda *a: None, progress=False)
        reports[label] = pack_adapter(tmp_path / label, base, tmp_path / f"{label}.shira")
    assert reports["on-base"].quantized["clamped"] == 0 and reports["on-base"].quantized["kept"] > 0.8
    if mode == "int4":  # no headroom: the float recipe overshoots the scales (int8's 4x headroom may hold it)
        assert reports["float"].quantized["clamped"] > 0
    with ShiraSession(base, mode="patchable") as s:
        s.load(tmp_path / "on-base.shira", "q")
        s.switch("q")
        assert s.clamped == 0


def test_a_full_finetune_is_packed_against_the_float_base(qbase, tmp_path):
    from safetensors.numpy import save_file
    from shira_toolchain.model_source import resolve
    from shira_toolchain.pack import PackError, pack_adapter

    state = {n: p.detach().numpy().copy() for n, p in resolve("tiny-llama").model.named_parameters()}
    save_file(state, str(tmp_path / "ft.safetensors"))
    with pytest.raises(PackError, match="pack it against the float32 export"):
        pack_adapter(tmp_path / "ft.safetensors", qbase[1], tmp_path / "ft.shira", density=0.01)


def test_the_packed_integer_forms_are_found_and_read_back_by_reshaping():
    """MatMulNBits' 4-bit packing seen at real size (groups of 4 rows, chunks of 64 with two blocks' nibbles
    interleaved) is described by a formula, not a position file, and read back without positions."""
    from shira_runtime.inplace.layout import describe, group_positions, unpack_groups

    rows, cols = 12, 512  # a group of 4 rows spans 2048 slots: more than a 'tiles' period
    perm = np.concatenate([np.arange(0, 64, 2), np.arange(1, 64, 2)])  # entry j of a chunk -> its slot
    form = {"form": "row_groups", "rows": rows, "cols": cols, "group": 4, "chunk": 64, "perm": perm.tolist()}
    positions = group_positions(np.arange(rows * cols), form)
    assert sorted(positions.tolist()) == list(range(rows * cols))  # a permutation of the slots
    assert positions[64] == 4 * 64 and positions[cols] == 64  # the next chunk after the group's 4 rows
    assert describe(positions, (rows, cols)) == form
    slots = np.random.default_rng(0).integers(0, 16, rows * cols).astype(np.uint8)
    assert np.array_equal(unpack_groups(slots, form), slots[positions])
    assert describe(np.random.default_rng(1).permutation(rows * cols), (rows, cols)) is None  # no formula: a map


def test_scales_that_are_not_positive_are_refused_before_any_engine(qbase, tmp_path):
    import shutil

    from shira_format.errors import ManifestError
    from shira_format.safetensors_file import read_file
    from shira_runtime import ShiraSession

    base = tmp_path / "base"
    shutil.copytree(qbase[1], base)
    raw = json.loads((base / "manifest.json").read_text())
    scales = next(iter(raw["tensors"].values()))["placements"]["onnxruntime"][0]["quant"]["scales"]
    st = read_file(base / "weights.safetensors")
    e = st.tensors[scales]
    data = bytearray((base / "weights.safetensors").read_bytes())
    data[st.data_start + e.start:st.data_start + e.start + 4] = np.float32(0).tobytes()  # a zero scale
    (base / "weights.safetensors").write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="not all finite and positive") as err:
        ShiraSession(base, mode="patchable")
    assert str(base / "weights.safetensors") in str(err.value)


def test_export_cli_refuses_quantization_options_without_quantize(tmp_path):
    import subprocess
    import sys
    from pathlib import Path as P

    exe = P(sys.executable).parent / "shira-export"
    r = subprocess.run([str(exe), "model", "tiny-llama", "--out", str(tmp_path / "o"), "--format", "onnx",
                        "--headroom", "2"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "add --quantize" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_pack_reports_the_error_against_merging_in_float_then_quantizing(qbase, llama, tmp_path):
    """`shira-pack --float-base`: the adapter's added error on this quantized base, next to the reference the
    issue names (merge in float32, then quantize the whole model with the same settings)."""
    from shira_toolchain.pack import PackError, pack_adapter

    _, base = qbase
    r = pack_adapter(llama.peft_dirs["zen"], base, tmp_path / "a.shira", float_base=llama.base_dir)
    q = r.quantized
    assert q is not None and 0 < q["error_merged_then_quantized"] and 0 < q["error_patched"] < 1
    assert q["error_patched"] >= q["error_merged_then_quantized"] * 0.5  # same order: both quantize the same model
    with pytest.raises(PackError, match="applies to a quantized base"):
        pack_adapter(llama.peft_dirs["zen"], llama.base_dir, tmp_path / "b.shira", float_base=llama.base_dir)
    with pytest.raises(PackError, match="must be a float32 export"):
        pack_adapter(llama.peft_dirs["zen"], base, tmp_path / "c.shira", float_base=base)
    assert not (tmp_path / "b.shira").exists() and not (tmp_path / "c.shira").exists()


def test_an_executorch_only_base_is_packed_against_the_program_integers(qbase_et, llama, tmp_path):
    """Without ONNX Runtime files the pack report reads the .pte's integers and scales: its clamped count is the
    ExecuTorch session's, and the --float-base errors are reported as for ONNX Runtime."""
    from shira_runtime import ShiraSession
    from shira_toolchain.pack import pack_adapter

    base = qbase_et[1]
    r = pack_adapter(llama.peft_dirs["zen"], base, tmp_path / "a.shira", float_base=llama.base_dir)
    q = r.quantized
    assert q is not None and 0 < q["error_merged_then_quantized"] and 0 < q["error_patched"] < 1
    assert q["error_patched"] >= q["error_merged_then_quantized"] * 0.5
    with ShiraSession(base, backend="executorch") as s:
        s.load(tmp_path / "a.shira", "zen")
        s.switch("zen")
        assert s.clamped == q["clamped"]


def test_a_quantized_style_net_holds_its_convolutions_as_8_bit_integers_patched_in_place(tmp_path):
    """--quantize int4 on the conv style net: every conv weight with K a multiple of 16 becomes 8-bit integers per
    output channel behind a DequantizeLinear (no 4-bit conv kernel exists), the 4-bit Linear takes block 16
    where K = 48. A style adapter is written into the conv's integers by the spec's formula, in place (ORT's
    baked copy) and in the patchable engine alike, moves the output towards the style, and reset is bit-exact."""
    import onnxruntime as ort
    from shira_format.adapter import read_adapter
    from shira_format.quant import matrix_shape, pack_entries
    from shira_format.safetensors_file import read_file
    from shira_runtime import ShiraSession
    from shira_toolchain.export import export_model
    from shira_toolchain.model_source import resolve
    from shira_toolchain.train import photos
    from shira_toolchain.train.styles import STYLES

    base = tmp_path / "style-q4"
    export_model(resolve("style-net"), base, r"^(enc\.2|mix\.0|dec\.3)\.weight$", formats=("onnx",),
                 log=lambda *a: None, quantize="int4")
    raw = json.loads((base / "manifest.json").read_text())
    quants = {t: p["placements"]["onnxruntime"][0].get("quant") for t, p in raw["tensors"].items()}
    assert quants["enc.2.weight"] == {"bits": 8, "block": 16, "per_channel": True,
                                      "scales": "model.enc.2.weight_scales"}
    assert quants["dec.3.weight"]["bits"] == 8 and quants["mix.0.weight"]["bits"] == 4
    assert raw["tensors"]["enc.2.weight"]["placements"]["onnxruntime"][0]["shape"] == [48, 432]
    assert "model.enc.0.weight" in raw["quantization"]["skipped"]  # K = 27: stays float32
    sepia = ROOT / "models" / "styles" / "sepia.shira"
    image = photos.eval_crops(1, 48).numpy()  # the held-out photo
    target = STYLES["sepia"](torch.from_numpy(image)).numpy()
    outs = {}
    for mode in ("in-place", "patchable"):
        with ShiraSession(base, mode=mode, cache_dir=tmp_path / "cache") as s:
            before = {t: s.weight(t) for t in s.manifest.tensors}
            (plain,) = s.run({"image": image}).values()
            s.switch(s.load(sepia))
            (outs[mode],) = s.run({"image": image}).values()
            if mode == "in-place":  # the engine runs exactly the bytes written: a constant session of them
                st = read_file(base / "weights.safetensors", writable=True)
                for info in s.manifest.tensors.values():
                    (p,) = info.placements["onnxruntime"]
                    st.array(p.name).reshape(-1)[:] = pack_entries(s.engine.placement_values(p.name), p.quant)
                opts = ort.SessionOptions()
                data = bytes(st.buffer)
                opts.add_external_initializers_from_files_in_memory(["weights.safetensors"], [data], [len(data)])
                ref = ort.InferenceSession(str(base / "model_prepacked.onnx"), opts, providers=["CPUExecutionProvider"])
                (want,) = ref.run(None, {"image": image})
                assert np.max(np.abs(outs[mode] - want)) <= 1e-5 * np.max(np.abs(want))
            for t in read_adapter(sepia, s.manifest).tensors.values():
                info = s.manifest.tensors[t.target]
                (p,) = info.placements["onnxruntime"]
                rows, cols = matrix_shape(info.shape)
                scale = p.quant.scale_of(s.engine.placement_scales(p.name) if mode == "in-place"
                                         else s.engine.scales[p.name], t.indices, cols)
                base_u = np.rint(before[t.target].reshape(-1)[t.indices] / scale).astype(np.int64) + p.quant.zero_point
                want = _requantized(base_u, t.values, scale, p.quant.bits)
                live_u = np.rint(s.weight(t.target).reshape(-1)[t.indices] / scale).astype(np.int64)
                assert np.array_equal(live_u + p.quant.zero_point, want), (mode, t.target)
            s.reset()
            assert all(np.array_equal(s.weight(t), before[t]) for t in s.manifest.tensors)
        assert s.mode == mode
        assert np.mean((outs[mode] - target) ** 2) < 0.5 * np.mean((plain - target) ** 2)
    # the patchable engine runs MatMulNBits over unpacked graph inputs (float compute) where the packed one
    # quantizes activations per block (accuracy level 4): close, not equal
    assert np.max(np.abs(outs["in-place"] - outs["patchable"])) < 5e-3


def test_one_state_one_answer_where_in_place_is_not_possible(qbase, tmp_path):
    """Where a quantized base cannot be baked, "auto" would run two engines whose int8 kernels quantize the
    activations differently (1-2% apart): it keeps one engine instead, and says why, so that a state's output
    never depends on which engine answered."""
    from shira_format import manifest as manifest_format
    from shira_runtime import ShiraSession
    from shira_runtime.inplace.cache import bake_key
    from shira_runtime.session import SAME_ANSWER

    _, base = qbase
    m = manifest_format.load(base)
    (tmp_path / f"{m.root.name}-{bake_key(m)}.unbakeable").write_text("no bake here (test)\n")
    with ShiraSession(base, cache_dir=tmp_path) as s:
        assert s.calibration["engines_differ"] > SAME_ANSWER, s.calibration
        assert s.mode == "patchable" and "two-phase switching is off" in s.mode_reason, s.mode_reason
        x = m.sample_inputs()
        first = s.run(x)
        s.switch(s.load(ADAPTERS["upper"]))
        s.reset()
        assert all(np.array_equal(s.run(x)[k], v) for k, v in first.items())


def test_a_proof_failing_after_coded_passes_is_refused_once_not_baked_again(tmp_path, monkeypatch):
    """A base with float and integer placements whose floats the coded passes found: when the engine proof
    fails, the bake says why at once. Only a map that found floats by value is made again (with coded passes):
    baking again a map the coded passes made would end the same way, after every digit pass once more."""
    from shira_format import manifest as manifest_mod
    from shira_runtime.inplace import bake
    from shira_toolchain.export import export_model
    from shira_toolchain.model_source import resolve

    base = tmp_path / "style-q4"
    export_model(resolve("style-net"), base, r"^(enc\.0|mix\.0)\.weight$", formats=("onnx",), log=lambda *a: None,
                 quantize="int4")
    raw = json.loads((base / "manifest.json").read_text())
    quant = {t: "quant" in p["placements"]["onnxruntime"][0] for t, p in raw["tensors"].items()}
    assert quant == {"enc.0.weight": False, "mix.0.weight": True}  # K = 27 stays float32
    calls = []

    def proof(*a, **k):
        calls.append(1)
        raise bake.BakeError("made up")

    monkeypatch.setattr(bake, "_prove_patches_reach_the_engine", proof)
    monkeypatch.setattr(bake, "_find_by_value", lambda *a: None)  # the floats go to the coded passes
    (tmp_path / "out").mkdir()
    with pytest.raises(bake.BakeError, match="made up"):
        bake.learn_layout(manifest_mod.load(base), tmp_path / "out")
    assert len(calls) == 1
