"""In place without a bake (inplace/live.py): ORT's packed copies found in the live session's own memory."""
from __future__ import annotations

import ctypes
import json
import mmap
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file
from shira_format.errors import ShiraError
from shira_runtime import ShiraSession
from shira_runtime.inplace import live
from shira_runtime.inplace.layout import BakeError, panel_forms, panel_positions


def test_a_live_session_answers_as_the_baked_one_and_leaves_no_bake(llama, tmp_path):
    ids = llama.inputs
    with ShiraSession(llama.base_dir, cache_dir=tmp_path / "baked", bake="always") as ref:
        assert ref.engine.route == "baked"
        ref.load(llama.blobs["zen"], name="zen")
        want_base = ref.run(ids)["logits"]
        ref.switch("zen")
        want_zen = ref.run(ids)["logits"]
    with ShiraSession(llama.base_dir, cache_dir=tmp_path / "live", mode="in-place") as s:
        assert s.mode == "in-place" and s.engine.route == "live"
        np.testing.assert_array_equal(s.run(ids)["logits"], want_base)
        s.load(llama.blobs["zen"], name="zen")
        s.switch("zen")
        np.testing.assert_array_equal(s.run(ids)["logits"], want_zen)
        assert np.abs(want_zen - want_base).max() > 1e-3
        s.reset()
        np.testing.assert_array_equal(s.run(ids)["logits"], want_base)
    kept = list((tmp_path / "live").iterdir())
    assert [p.suffixes[-2:] for p in kept] == [[".live", ".json"]]  # the proof's record: no baked file
    stored = load_file(str(llama.base_dir / "weights.safetensors"))  # the record's largest magnitudes: the export's
    placements = json.loads(kept[0].read_text())["placements"]
    assert {n: e["absmax"] for n, e in placements.items()} == {n: float(np.abs(w).max()) for n, w in stored.items()}


def test_later_opens_use_the_kept_proof_and_a_closed_session_leaves_no_copy_behind(llama, tmp_path, monkeypatch):
    with ShiraSession(llama.base_dir, cache_dir=tmp_path, bake="never") as s:
        base = s.run(llama.inputs)["logits"]

    def no_reference(*a, **k):
        raise AssertionError("the proof ran again")

    monkeypatch.setattr(live, "reference_outputs", no_reference)
    for _ in range(2):  # the first's copies were cleared at close: each open finds exactly its own
        with ShiraSession(llama.base_dir, cache_dir=tmp_path, bake="never") as s:
            assert s.engine.route == "live"
            np.testing.assert_array_equal(s.run(llama.inputs)["logits"], base)


def test_two_live_sessions_of_one_base_in_one_process_keep_their_own_patches(llama, tmp_path):
    """The second session's copies are the ones its creation added: the first's are left alone."""
    ids = llama.inputs
    with ShiraSession(llama.base_dir, cache_dir=tmp_path, bake="never") as s1:
        base = s1.run(ids)["logits"]
        s1.load(llama.blobs["zen"], name="zen")
        s1.switch("zen")
        zen = s1.run(ids)["logits"]
        with ShiraSession(llama.base_dir, cache_dir=tmp_path, bake="never") as s2:
            assert s2.engine.route == "live"
            assert not {b.ctypes.data for b in s2.engine.buffers.values()} & {b.ctypes.data for b in s1.engine.buffers.values()}
            np.testing.assert_array_equal(s2.run(ids)["logits"], base)  # s1's patch is not s2's
            s2.load(llama.blobs["json-doc"], name="json")
            s2.switch("json")
            np.testing.assert_array_equal(s1.run(ids)["logits"], zen)  # nor s2's s1's
            assert not np.array_equal(s2.run(ids)["logits"], base)


def test_the_export_ships_the_proofs_reference_and_the_first_open_computes_none(llama, tmp_path, monkeypatch):
    from shira_format import manifest as manifest_format
    from shira_format.weights import safetensors_views
    from shira_runtime.inplace.bake import _mapped_weights

    m = manifest_format.load(llama.base_dir)
    shipped = live.exported_reference(m)
    assert shipped is not None and set(shipped) == {"logits"}
    weights = m.file(m.files_of("onnxruntime").weights)
    stored = safetensors_views(m, _mapped_weights(weights), weights)
    here = live.reference_outputs(m, live.proof_patch(stored), 1, m.sample_inputs())
    np.testing.assert_allclose(shipped["logits"], here["logits"], rtol=0, atol=1e-5 * np.abs(here["logits"]).max())

    def no_reference(*a, **k):
        raise AssertionError("the first open computed the reference the export ships")

    monkeypatch.setattr(live, "reference_outputs", no_reference)
    with ShiraSession(llama.base_dir, cache_dir=tmp_path / "shipped", bake="never") as s:
        assert s.engine.route == "live"
    # an export without it (an older shira-export), or of another proof version: computed at the first open
    old = tmp_path / "old-base"
    shutil.copytree(llama.base_dir, old)
    with np.load(old / "sample.npz") as z:
        kept = {k: z[k] for k in z.files if not k.startswith("proof:")}
    for sample in (kept, {**kept, "proof:version": np.array(live.PROOF_VERSION + 1), "proof:logits": shipped["logits"]}):
        np.savez(old / "sample.npz", **sample)
        calls = []
        monkeypatch.setattr(live, "reference_outputs", lambda *a: calls.append(1) or here)
        for f in (tmp_path / "old").glob("*.live.json"):
            f.unlink()
        with ShiraSession(old, cache_dir=tmp_path / "old", bake="never") as s:
            assert s.engine.route == "live" and calls == [1]


def test_a_patch_that_misses_the_output_is_refused_and_the_base_is_baked(llama, tmp_path, monkeypatch):
    real = live.exported_reference
    monkeypatch.setattr(live, "exported_reference", lambda m: {k: v + 1.0 for k, v in real(m).items()})
    with pytest.raises(ShiraError, match="does not reach its output"):
        ShiraSession(llama.base_dir, cache_dir=tmp_path, mode="in-place", bake="never")
    monkeypatch.setattr(live, "exported_reference", real)
    assert "refused" in json.loads(next(tmp_path.glob("*.live.json")).read_text())  # kept: not tried again
    with pytest.raises(ShiraError, match="an earlier open found so"):
        ShiraSession(llama.base_dir, cache_dir=tmp_path, mode="in-place", bake="never")
    with ShiraSession(llama.base_dir, cache_dir=tmp_path) as s:
        assert s.mode == "in-place" and s.engine.route == "baked"


def test_quantized_and_tiny_weights_are_not_searched_for(tmp_path):
    from shira_toolchain.export import export_model
    from shira_toolchain.model_source import resolve

    export_model(resolve("tests.factories:smallest_mlp", inputs=("x:2x3",)), tmp_path / "b", formats=("onnx",),
                 log=lambda *a: None)
    with pytest.raises(ShiraError, match="fewer than 64 entries"):
        ShiraSession(tmp_path / "b", cache_dir=tmp_path / "cache", mode="in-place", bake="never")


def _panels(w: np.ndarray, form) -> np.ndarray:
    out = np.zeros(form["rows"] * form["aligned_n"], dtype=np.float32)
    out[panel_positions(np.arange(w.size), form)] = w.reshape(-1)
    return out


def _aligned(values: np.ndarray) -> np.ndarray:
    raw = np.zeros(values.nbytes + 64, dtype=np.uint8)
    at = (-raw.ctypes.data) % 64
    out = raw[at:at + values.nbytes].view(values.dtype)
    out[:] = values
    return out


@pytest.mark.parametrize("reader", ["process_vm_readv", "/proc/self/mem"])
def test_locate_takes_one_packed_copy_and_never_a_plain_one(reader):
    """A plain copy may be a freed buffer: never written. Two packed copies cannot be told apart: refused. The
    same with either way of reading memory (a sandbox without process_vm_readv reads /proc/self/mem)."""
    w = np.random.default_rng(0).standard_normal((300, 40)).astype(np.float32)
    form = next(panel_forms(w.shape))
    packed, other, plain = _aligned(_panels(w, form)), _aligned(_panels(w, form)), _aligned(w.reshape(-1))
    mem = live._Memory()
    if reader != "process_vm_readv":
        mem._readv = None
    try:
        page = mmap.mmap(-1, mmap.PAGESIZE)  # memory freed before it is read: reads nothing, never crashes
        view = (ctypes.c_char * mmap.PAGESIZE).from_buffer(page)
        gone = ctypes.addressof(view)
        del view
        page.close()
        assert mem.read(gone, 64).size == 0 and mem.gather(gone, np.array([0, 8])) is None
        assert mem.read(packed.ctypes.data, 64).tobytes() == packed[:16].tobytes()
        assert live.search(mem, [(packed.ctypes.data, packed.ctypes.data + packed.nbytes)], {live._key(w)}) == \
            {live._key(w): [packed.ctypes.data]}
        address, got = live._locate(mem, "w", w.shape, w, [plain.ctypes.data, packed.ctypes.data], None, True)
        assert (address, got) == (packed.ctypes.data, form)
        with pytest.raises(BakeError, match="only as a plain copy"):
            live._locate(mem, "w", w.shape, w, [plain.ctypes.data], None, True)
        both = [packed.ctypes.data, other.ctypes.data]
        with pytest.raises(BakeError, match="found 2 times"):  # neither there before: which is new cannot be told
            live._locate(mem, "w", w.shape, w, both, None, False)
        # the one that appeared with the session is its own; one that was there before is another's (or freed)
        assert live._locate(mem, "w", w.shape, w, both, None, False, earlier={other.ctypes.data})[0] == both[0]
        with pytest.raises(BakeError, match="found 2 times"):
            live._locate(mem, "w", w.shape, w, both, None, False, earlier=set(both))
        with pytest.raises(BakeError, match="0 of them new"):  # a copy only where one lay before: never taken
            live._locate(mem, "w", w.shape, w, both[:1], None, False, earlier={both[0]})
        sampled = set(live.sample_entries(w.size).tolist())  # one entry off, outside the sample _locate draws
        off = next(i for i in range(w.size // 2, w.size) if i not in sampled)
        packed[panel_positions(np.array([off]), form)] += 1.0
        with pytest.raises(BakeError, match="differs from the export"):
            live._locate(mem, "w", w.shape, w, [packed.ctypes.data], None, True)
    finally:
        mem.close()


def test_a_damaged_proof_record_is_proven_again(llama, tmp_path):
    with ShiraSession(llama.base_dir, cache_dir=tmp_path, bake="never") as s:
        base = s.run(llama.inputs)["logits"]
    record = next(tmp_path.glob("*.live.json"))
    for damage in ('{"format": 1, "placements": {"x": 1}}', record.read_text().replace('"panels"', '"tiles"'), "{"):
        record.write_text(damage)
        with ShiraSession(llama.base_dir, cache_dir=tmp_path, bake="never") as s:
            np.testing.assert_array_equal(s.run(llama.inputs)["logits"], base)
        assert '"panels"' in record.read_text()  # written anew
