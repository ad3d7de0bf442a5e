"""In place: ONNX Runtime's own packed weights, baked once per CPU, patched in the file the engine maps."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from shira_format.errors import ShiraError
from shira_runtime import ShiraSession
from shira_runtime.bake import BAKED_DATA, MAP_FILE, panel_positions
from shira_toolchain.train import peft_shira

SCALE_PLANS = [{"a": 1.0}, {"b": 1.0}, {"a": 0.7, "b": -0.4}, {}, {"a": 1.0}]


def _slots(cache):
    return sorted(p for p in cache.rglob("slot-*") if p.is_dir())


def test_in_place_equals_peft_merged_model_and_the_rebuilt_prepacked_engine(built, tmp_path):
    """Each switch is seen by the next run of the same engine, equal to PEFT's merge and bit for bit equal to
    a constant-weight ORT session built from the patched weights (what two-phase switching would install)."""
    sess = ShiraSession(built.base_dir, cache_dir=tmp_path)
    assert sess.mode == "in-place" and sess.rebuilder is None
    rebuilt = ShiraSession(built.base_dir, prepack="background")
    a, b = list(built.blobs)
    for s in (sess, rebuilt):
        for task, path in built.blobs.items():
            s.load(path, name=task)
    engine = sess.backend.session
    peft_model = peft_shira.load_peft(built.subject.model, built.peft_dirs)
    out_name = sess.output_names[0]
    base_out = sess.run(built.inputs)[out_name]
    for plan in SCALE_PLANS:
        scales = {{"a": a, "b": b}[k]: v for k, v in plan.items()}
        sess.fuse(scales)
        out = sess.run(built.inputs)[out_name]
        ref = peft_shira.reference_output(built.family, peft_shira.merged_model(peft_model, built.subject.model, scales),
                                          built.inputs)
        np.testing.assert_allclose(out, ref, atol=2e-5, rtol=1e-5, err_msg=f"after fuse({scales})")
        rebuilt.fuse(scales)
        assert rebuilt.wait_full_speed(30)
        np.testing.assert_array_equal(out, rebuilt.run(built.inputs)[out_name])
        if scales:
            assert np.max(np.abs(out - base_out)) > 1e-3
    assert sess.backend.session is engine  # never re-created
    for t in built.subject.model.state_dict():
        if t in sess.manifest.tensors:  # the live packed weight, read back, is the merged weight
            np.testing.assert_array_equal(sess.weight(t), rebuilt.weight(t))
    sess.close()
    rebuilt.close()


def test_a_slot_is_reused_after_close_and_a_second_session_gets_its_own(llama, tmp_path):
    ids = llama.inputs
    with ShiraSession(llama.base_dir, cache_dir=tmp_path) as s1:
        base = s1.run(ids)["logits"]
        s1.load(llama.blobs["zen"], name="zen")
        s1.switch("zen")
        zen = s1.run(ids)["logits"]
        with ShiraSession(llama.base_dir, cache_dir=tmp_path) as s2:  # slot-0 is s1's: a second bake
            assert s2.backend.slot.path != s1.backend.slot.path
            np.testing.assert_array_equal(s2.run(ids)["logits"], base)  # s1's patch is not s2's
            np.testing.assert_array_equal(s1.run(ids)["logits"], zen)
    slots = _slots(tmp_path)
    assert len(slots) == 2 and not any((s / "dirty").exists() for s in slots)
    stamp = (slots[0] / MAP_FILE).stat().st_mtime_ns
    with ShiraSession(llama.base_dir, cache_dir=tmp_path, verify="full") as s3:  # clean: reused, not baked again
        assert s3.backend.slot.path == slots[0]
        np.testing.assert_array_equal(s3.run(ids)["logits"], base)  # close() put the base back in the file
    assert (slots[0] / MAP_FILE).stat().st_mtime_ns == stamp and len(_slots(tmp_path)) == 2


CHILD = """
import os, sys, numpy as np
from shira_runtime import ShiraSession
s = ShiraSession(sys.argv[1], cache_dir=sys.argv[2])
s.load(sys.argv[3], name="zen")
s.switch("zen")
print(s.backend.slot.path, flush=True)
if sys.argv[4] == "kill":
    os._exit(0)  # dies patched: no close, no finalizer
# else: exits without close(); the finalizer puts the base back
"""


@pytest.mark.parametrize("how", ["kill", "forget"])
def test_a_session_that_dies_or_forgets_to_close_leaves_no_patched_base(llama, tmp_path, how):
    r = subprocess.run([sys.executable, "-c", CHILD, str(llama.base_dir), str(tmp_path), str(llama.blobs["zen"]), how],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    slot = r.stdout.split()[-1]
    assert os.path.exists(os.path.join(slot, "dirty")) == (how == "kill")
    with ShiraSession(llama.base_dir, cache_dir=tmp_path) as s:  # a dead owner's slot is baked again
        with ShiraSession(llama.base_dir, prepack="off") as ref:  # the base again, not zen
            np.testing.assert_allclose(s.run(llama.inputs)["logits"], ref.run(llama.inputs)["logits"], atol=2e-5)
        s.load(llama.blobs["zen"], name="zen")
        s.switch("zen")
        s.reset()  # bit-exact against the bake's own base (the CRC check at open proved it equals the export)
    assert len(_slots(tmp_path)) == 1


def test_a_damaged_baked_file_is_baked_again(llama, tmp_path):
    """The export checked out when it was baked, so a copy that no longer matches its checksum is a damaged
    cache: discarded and baked again, and the session opens on a good one."""
    with ShiraSession(llama.base_dir, cache_dir=tmp_path) as s:
        base = s.run(llama.inputs)["logits"]
        copy = next(iter(s.backend.copies.values()))[0]
        at = copy.offset + 4 * int(copy.positions(np.array([5]))[0])
    data = _slots(tmp_path)[0] / BAKED_DATA
    raw = bytearray(data.read_bytes())
    raw[at + 2] ^= 0x40
    data.write_bytes(bytes(raw))
    with ShiraSession(llama.base_dir, cache_dir=tmp_path) as s:
        np.testing.assert_array_equal(s.run(llama.inputs)["logits"], base)
    with ShiraSession(llama.base_dir, cache_dir=tmp_path, verify="off") as s:  # the damaged bytes are gone
        np.testing.assert_array_equal(s.run(llama.inputs)["logits"], base)


def test_mlas_panel_map_is_a_formula_checked_on_every_entry(llama, tmp_path):
    with ShiraSession(llama.base_dir, cache_dir=tmp_path):
        pass
    spec = json.loads((_slots(tmp_path)[0] / MAP_FILE).read_text())
    forms = [c["positions"] for e in spec["placements"].values() for c in e["copies"]]
    assert forms and all(isinstance(f, dict) and f["form"] == "panels" for f in forms)  # MatMul B: no map files
    f = forms[0]
    pos = panel_positions(np.arange(f["rows"] * f["cols"]), f)
    assert np.unique(pos).size == pos.size  # a permutation into the padded panels


def test_a_base_that_cannot_be_baked_falls_back_and_says_why(tmp_path):
    from shira_toolchain.export import export_model
    from shira_toolchain.model_source import resolve

    export_model(resolve("tests.factories:tiny_mlp", inputs=("x:2x8",)), tmp_path / "b", formats=("onnx",),
                 log=lambda *a: None)
    s = ShiraSession(tmp_path / "b", cache_dir=tmp_path / "cache")
    assert s.mode in ("patchable", "two-phase") and "below 1024 bytes" in s.mode_reason
    s.close()
    assert (next((tmp_path / "cache").iterdir()) / "unbakeable").exists()  # not retried at every load
    with pytest.raises(ShiraError, match="cannot patch in place.*below 1024 bytes"):
        ShiraSession(tmp_path / "b", cache_dir=tmp_path / "cache", prepack="inplace")


def test_the_bake_needs_neither_torch_nor_the_toolchain(llama, tmp_path):
    code = textwrap.dedent(f"""
        import sys, importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "shira_toolchain", "onnx"):
                    raise ImportError("blocked on device: " + name)
        sys.meta_path.insert(0, Block())
        from shira_runtime.bake import main
        sys.exit(main([{str(llama.base_dir)!r}, {str(tmp_path)!r}]))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / MAP_FILE).exists()
