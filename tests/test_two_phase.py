"""Two-phase switching: correct at once on the patchable engine, then a prepacked engine with the same weights."""
import numpy as np
import pytest

from shira_runtime import ShiraSession
from shira_toolchain.train import peft_shira

PLANS = [{"a": 1.0}, {"b": 1.0}, {"a": 0.7, "b": -0.4}, {}]


def test_prepacked_engine_equals_peft_merged_model_after_each_switch(built, backend):
    sess = ShiraSession(built.base_dir, backend=backend, mode="two-phase")
    assert sess.mode == "two-phase" and sess.full_speed
    a, b = list(built.blobs)
    for task, path in built.blobs.items():
        sess.load(path, name=task)
    peft_model = peft_shira.load_peft(built.subject.model, built.peft_dirs)
    out_name = sess.output_names[0]
    for plan in PLANS:
        scales = {{"a": a, "b": b}[k]: v for k, v in plan.items()}
        sess.fuse(scales)
        ref = peft_shira.reference_output(built.family, peft_shira.merged_model(peft_model, built.subject.model, scales),
                                          built.inputs)
        live = sess.engine.run(built.inputs, patchable=True)[out_name]
        assert sess.wait_full_speed(30), sess.rebuilder.last_error
        assert sess.engine.prepacked is not None
        fast = sess.run(built.inputs)[out_name]
        np.testing.assert_allclose(live, ref, atol=2e-5, rtol=1e-5, err_msg=f"patchable engine after fuse({scales})")
        np.testing.assert_allclose(fast, ref, atol=2e-5, rtol=1e-5, err_msg=f"prepacked after fuse({scales})")
    hist = sess.rebuilder.history
    assert len(hist) == len(PLANS) + 1 and all(h["to_full_speed_s"] is not None for h in hist[1:])
    sess.stop_two_phase()
    assert sess.mode == "patchable" and sess.engine.prepacked is None
    assert sess.engine.prepacked_nbytes == 0  # ExecuTorch's prepacked program is freed too
    np.testing.assert_allclose(sess.run(built.inputs)[out_name], fast, atol=2e-5)  # still serving, on the patchable engine
    sess.close()


def test_reset_prepacked_output_equals_base_prepacked_output_bit_for_bit(llama, backend):
    """The prepacked engine is rebuilt from the restored bytes, so the base output comes back exactly."""
    sess = ShiraSession(llama.base_dir, backend=backend, mode="two-phase")
    base = sess.run(llama.inputs)["logits"]
    sess.load(llama.blobs["zen"], name="zen")
    sess.switch("zen")
    assert sess.wait_full_speed(30)
    assert np.abs(sess.run(llama.inputs)["logits"] - base).max() > 1e-3
    sess.reset()
    assert sess.wait_full_speed(30)
    np.testing.assert_array_equal(sess.run(llama.inputs)["logits"], base)


def test_rapid_switches_install_only_the_latest_weights(llama):
    sess = ShiraSession(llama.base_dir, mode="two-phase")
    names = list(llama.blobs)
    for t in names:
        sess.load(llama.blobs[t], name=t)
    for i in range(25):  # faster than a rebuild: intermediate engines are dropped as stale
        sess.switch(names[i % 2])
    assert sess.wait_full_speed(30)
    want = sess.engine.run(llama.inputs, patchable=True)["logits"]
    np.testing.assert_allclose(sess.run(llama.inputs)["logits"], want, atol=2e-5)
    assert len(sess.rebuilder.history) < 26


def test_auto_mode_is_in_place_where_it_can_and_calibrates_elsewhere(llama, backend):
    sess = ShiraSession(llama.base_dir, backend=backend)  # "auto"
    if backend == "onnxruntime":  # baked once, patched in place: nothing to measure, nothing to rebuild
        assert (sess.mode, sess.mode_reason, sess.calibration, sess.rebuilder) == ("in-place", None, None, None)
        return
    assert "XNNPACK packs its weights" in sess.mode_reason
    c = sess.calibration
    assert c["patchable_ms"] > 0 and c["prepacked_ms"] > 0
    assert sess.mode == ("two-phase" if c["ratio"] > 1.02 else "patchable")


def test_prepack_off_and_bad_mode(llama):
    assert ShiraSession(llama.base_dir, mode="patchable").mode == "patchable"
    with pytest.raises(ValueError, match="mode must be one of"):
        ShiraSession(llama.base_dir, mode="sometimes")


def test_a_failed_background_build_shows_in_mode_and_reason(llama, monkeypatch):
    with ShiraSession(llama.base_dir, mode="two-phase") as sess:
        assert sess.mode == "two-phase" and sess.mode_reason is None
        def fail(snapshot):
            raise MemoryError("no room for the packed engine")
        monkeypatch.setattr(sess.engine, "build_prepacked", fail)
        sess.switch(sess.load(llama.blobs["zen"]))
        assert not sess.wait_full_speed(30)
        assert sess.mode == "patchable", sess.mode
        assert "the background build failed: MemoryError: no room for the packed engine" in sess.mode_reason
        assert sess.run(llama.inputs)  # still serving, on the patchable engine
