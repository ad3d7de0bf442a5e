"""In place: ONNX Runtime's own packed weights, baked once per CPU, patched where the engine maps them."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from shira_format.errors import ShiraError
from shira_runtime import ShiraSession
from shira_runtime.inplace.layout import BAKED_DATA, MAP_FILE, panel_positions, unpack_panels
from shira_toolchain.train import peft_shira

SCALE_PLANS = [{"a": 1.0}, {"b": 1.0}, {"a": 0.7, "b": -0.4}, {}, {"a": 1.0}]


def _bakes(cache):
    return sorted(p for p in cache.iterdir() if p.is_dir() and not p.name.startswith("."))


def test_in_place_equals_peft_merged_model_and_the_rebuilt_prepacked_engine(built, tmp_path):
    """Each switch is seen by the next run of the same engine, equal to PEFT's merge and bit for bit equal to
    a constant-weight ORT session built from the patched weights (what two-phase switching would install)."""
    sess = ShiraSession(built.base_dir, cache_dir=tmp_path)
    assert sess.mode == "in-place" and sess.rebuilder is None
    rebuilt = ShiraSession(built.base_dir, mode="two-phase")
    a, b = list(built.blobs)
    for s in (sess, rebuilt):
        for task, path in built.blobs.items():
            s.load(path, name=task)
    engine = sess.engine.session
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
    assert sess.engine.session is engine  # never re-created
    for t in built.subject.model.state_dict():
        if t in sess.manifest.tensors:  # the live packed weight, read back, is the merged weight
            np.testing.assert_array_equal(sess.weight(t), rebuilt.weight(t))
    sess.close()
    rebuilt.close()


def test_sessions_share_one_bake_and_never_see_each_others_patches(llama, tmp_path):
    """Patches go into ONNX Runtime's private (copy-on-write) mapping of the baked file: each session has its
    own, and the file itself never changes."""
    ids = llama.inputs
    with ShiraSession(llama.base_dir, cache_dir=tmp_path, bake="always") as s1:
        data = s1.engine.bake_dir / BAKED_DATA
        before = data.read_bytes()
        base = s1.run(ids)["logits"]
        s1.load(llama.blobs["zen"], name="zen")
        s1.switch("zen")
        zen = s1.run(ids)["logits"]
        assert np.abs(zen - base).max() > 1e-3
        with ShiraSession(llama.base_dir, cache_dir=tmp_path, bake="always", verify="full") as s2:  # the same bake, not a new one
            assert s2.engine.bake_dir == s1.engine.bake_dir
            np.testing.assert_array_equal(s2.run(ids)["logits"], base)  # s1's patch is not s2's
            s2.load(llama.blobs["json-doc"], name="json")
            s2.switch("json")
            np.testing.assert_array_equal(s1.run(ids)["logits"], zen)  # nor s2's s1's
        assert data.read_bytes() == before
    assert len(_bakes(tmp_path)) == 1


CHILD = """
import os, sys
from shira_runtime import ShiraSession
s = ShiraSession(sys.argv[1], cache_dir=sys.argv[2], bake="always")
s.load(sys.argv[3], name="zen")
s.switch("zen")
print(s.mode, flush=True)
os._exit(0)  # dies patched: no close, no finalizer
"""


def _copied_kb(path) -> int:
    """Pages of `path`'s mappings this process has copied (written) so far: their `Anonymous:` pages in
    /proc/self/smaps (Private_Dirty would also count file pages not yet written back since the bake)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and len(head) >= 5 and ":" in head[3]:  # a mapping's first line
                inside = len(head) >= 6 and head[5] == str(path)
            elif inside and head[0] == "Anonymous:":
                total += int(head[1])
    return total


@pytest.mark.parametrize("populate", [True, False], ids=["madvise", "touch"])
def test_an_adapters_pages_are_copied_when_it_loads_not_in_its_first_switch(llama, tmp_path, monkeypatch, populate):
    """Copy-on-write happens in load() (MADV_POPULATE_WRITE, or a write-back per page where the kernel lacks
    it), so the first switch is a plain scatter like every later one, and the outputs stay right."""
    from shira_runtime.inplace import engine as onnxruntime_inplace

    if not populate:
        monkeypatch.setattr(onnxruntime_inplace, "_populate_write", lambda address, nbytes: False)
    with ShiraSession(llama.base_dir, cache_dir=tmp_path, bake="always") as ref:
        ref.load(llama.blobs["zen"], name="zen")
        ref.switch("zen")
        want = ref.run(llama.inputs)["logits"]
    with ShiraSession(llama.base_dir, cache_dir=tmp_path, bake="always") as s:
        data = (s.engine.bake_dir / BAKED_DATA).resolve()
        assert _copied_kb(data) == 0
        s.load(llama.blobs["zen"], name="zen")
        loaded = _copied_kb(data)
        assert loaded > 0
        s.switch("zen")
        assert _copied_kb(data) == loaded  # the switch copied no page
        np.testing.assert_array_equal(s.run(llama.inputs)["logits"], want)


def test_a_session_killed_while_patched_leaves_the_bake_as_it_was(llama, tmp_path):
    with ShiraSession(llama.base_dir, cache_dir=tmp_path, bake="always") as s:
        base = s.run(llama.inputs)["logits"]
    stamp = {p: p.read_bytes() for p in _bakes(tmp_path)[0].rglob("*") if p.is_file()}
    r = subprocess.run([sys.executable, "-c", CHILD, str(llama.base_dir), str(tmp_path), str(llama.blobs["zen"])],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "in-place", r.stderr[-2000:]
    assert {p: p.read_bytes() for p in _bakes(tmp_path)[0].rglob("*") if p.is_file()} == stamp
    with ShiraSession(llama.base_dir, cache_dir=tmp_path, bake="always") as s:
        np.testing.assert_array_equal(s.run(llama.inputs)["logits"], base)


def test_a_damaged_baked_file_is_baked_again(llama, tmp_path):
    """The export checked out when it was baked, so a copy that no longer matches its checksum is a damaged
    cache: discarded and baked again, and the session opens on a good one."""
    with ShiraSession(llama.base_dir, cache_dir=tmp_path, bake="always") as s:
        base = s.run(llama.inputs)["logits"]
        copy = next(iter(s.engine.copies.values()))[0]
        at = copy.offset + 4 * int(copy.positions(np.array([5]))[0])
    data = _bakes(tmp_path)[0] / BAKED_DATA
    raw = bytearray(data.read_bytes())
    raw[at + 2] ^= 0x40
    data.write_bytes(bytes(raw))
    with ShiraSession(llama.base_dir, cache_dir=tmp_path, bake="always") as s:
        np.testing.assert_array_equal(s.run(llama.inputs)["logits"], base)
    with ShiraSession(llama.base_dir, cache_dir=tmp_path, bake="always", verify="off") as s:  # the damaged bytes are gone
        np.testing.assert_array_equal(s.run(llama.inputs)["logits"], base)


def test_mlas_panel_map_is_a_formula_checked_on_every_entry(llama, tmp_path):
    with ShiraSession(llama.base_dir, cache_dir=tmp_path, bake="always"):
        pass
    spec = json.loads((_bakes(tmp_path)[0] / MAP_FILE).read_text())
    forms = [c["positions"] for e in spec["placements"].values() for c in e["copies"]]
    assert forms and all(isinstance(f, dict) and f["form"] == "panels" for f in forms)  # MatMul B: no map files
    f = forms[0]
    pos = panel_positions(np.arange(f["rows"] * f["cols"]), f)
    assert np.unique(pos).size == pos.size  # a permutation into the padded panels


@pytest.mark.parametrize("rows,cols,k_block,panel,align", [(1024, 2816, 256, 16, 16), (300, 37, 256, 16, 16),
                                                           (70, 100, 64, 8, 32), (513, 17, 256, 16, 64)])
def test_panels_read_out_by_reshaping_equal_the_gather_by_positions(rows, cols, k_block, panel, align):
    """The fast read (verify at open, weight()) against the per-entry formula, with partial blocks and padding."""
    form = {"form": "panels", "rows": rows, "cols": cols, "k_block": k_block, "panel": panel,
            "aligned_n": -(-cols // align) * align}
    w = np.random.default_rng(0).standard_normal(rows * cols).astype(np.float32)
    region = np.full(rows * form["aligned_n"], np.nan, dtype=np.float32)
    region[panel_positions(np.arange(w.size), form)] = w
    np.testing.assert_array_equal(unpack_panels(region, form), w)
    assert unpack_panels(region, {**form, "aligned_n": form["aligned_n"] + panel // 2}) is None  # straddles: gather


def test_a_base_that_cannot_be_baked_falls_back_and_says_why(tmp_path):
    from shira_toolchain.export import export_model
    from shira_toolchain.model_source import resolve

    export_model(resolve("tests.factories:smallest_mlp", inputs=("x:2x3",)), tmp_path / "b", formats=("onnx",),
                 log=lambda *a: None)
    s = ShiraSession(tmp_path / "b", cache_dir=tmp_path / "cache")
    assert s.mode in ("patchable", "two-phase") and "below 64 bytes" in s.mode_reason
    s.close()
    assert len(list((tmp_path / "cache").glob("*.unbakeable"))) == 1  # not retried at every load
    with pytest.raises(ShiraError, match="cannot patch in place.*below 64 bytes"):
        ShiraSession(tmp_path / "b", cache_dir=tmp_path / "cache", mode="in-place")


def test_the_bake_needs_neither_torch_nor_the_toolchain(llama, tmp_path):
    code = textwrap.dedent(f"""
        import sys, importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "shira_toolchain", "onnx"):
                    raise ImportError("blocked on device: " + name)
        sys.meta_path.insert(0, Block())
        from shira_runtime.inplace.bake import main
        sys.exit(main([{str(llama.base_dir)!r}, {str(tmp_path)!r}]))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / MAP_FILE).exists()


def test_the_bake_refuses_a_base_whose_patches_would_not_reach_the_engine(llama, tmp_path, monkeypatch):
    """The bake's last step writes a random patch the runtime's way and compares the engine's output with a
    plain session built from the patched weights. A patch that lands where ORT does not read (here: nowhere,
    as it would if ORT had copied a region instead of mapping it) must make the bake refuse the base."""
    from shira_format import manifest as manifest_mod
    from shira_runtime.inplace.engine import InPlaceOrtEngine
    from shira_runtime.inplace.bake import BakeError, learn_layout

    monkeypatch.setattr(InPlaceOrtEngine, "to_buffers", lambda self, mapped: {})
    (tmp_path / "out").mkdir()
    with pytest.raises(BakeError, match="does not reach ONNX Runtime's output"):
        learn_layout(manifest_mod.load(llama.base_dir), tmp_path / "out")


def test_weights_found_by_value_map_exactly_as_the_coded_passes_do(llama, tmp_path):
    """One ORT pass (the weights found by their own values) against three (their positions coded): the same map."""
    from shira_format import manifest as manifest_mod
    from shira_runtime.inplace.bake import learn_layout

    logs = {}
    for by_value in (True, False):
        (tmp_path / str(by_value)).mkdir()
        lines = []
        learn_layout(manifest_mod.load(llama.base_dir), tmp_path / str(by_value), log=lines.append,
                     by_value=by_value)
        logs[by_value] = lines
    assert any("by their values" in ln for ln in logs[True]) and not any("positions" in ln for ln in logs[True])
    assert any("baked the row positions" in ln for ln in logs[False])
    fast, coded = (json.loads((tmp_path / str(b) / MAP_FILE).read_text())["placements"] for b in (True, False))
    assert fast == coded and fast


def _packed(rng, rows, cols, values=None):
    """A fake baked data file: one weight stored plainly, then packed in MLAS panels, as two regions."""
    from shira_runtime.inplace.regions import Region

    form = {"form": "panels", "rows": rows, "cols": cols, "k_block": 256, "panel": 16,
            "aligned_n": -(-cols // 16) * 16}
    w = rng.standard_normal(rows * cols).astype(np.float32) if values is None else values
    packed = np.zeros(rows * form["aligned_n"], dtype=np.float32)
    packed[panel_positions(np.arange(w.size), form)] = w
    data = np.concatenate([w, packed]).view(np.uint8)
    regions = [Region("w", "data", 0, w.nbytes), Region("w", "prepacked", w.nbytes, packed.nbytes)]
    return w, form, data, regions


def test_find_by_value_reads_each_copy_under_its_form_and_refuses_what_it_cannot_tell():
    from types import SimpleNamespace

    from shira_runtime.inplace.bake import _find_by_value

    rng = np.random.default_rng(0)
    p = SimpleNamespace(name="w", shape=(300, 37))
    w, form, data, regions = _packed(rng, 300, 37)
    found = _find_by_value(regions, [p], {"w": w}, data)
    assert [(r.kind, f) for r, f in found["w"]] == [("data", "contiguous"), ("prepacked", form)]
    # many equal values fit several forms: left to the coded passes
    sparse = np.where(rng.random(300 * 37) < 0.5, 0, rng.standard_normal(300 * 37)).astype(np.float32)
    w2, _, data2, regions2 = _packed(rng, 300, 37, sparse)
    assert _find_by_value(regions2, [p], {"w": w2}, data2) is None
    # a copy that no form describes (here: the packed copy reversed): the weight is not found by value
    bad = data.copy()
    bad[w.nbytes:] = bad[w.nbytes:].view(np.float32)[::-1].copy().view(np.uint8)
    assert _find_by_value(regions, [p], {"w": w}, bad) is None
    # two weights that one region fits (ORT shares equal constants): refused
    q = SimpleNamespace(name="v", shape=(300, 37))
    assert _find_by_value(regions, [p, q], {"w": w, "v": w.copy()}, data) is None


def test_a_by_value_map_that_fails_the_proof_is_made_again_with_coded_passes(llama, tmp_path, monkeypatch):
    from shira_format import manifest as manifest_mod
    from shira_runtime.inplace import bake

    real_proof, calls = bake._prove_patches_reach_the_engine, []

    def proof(*a, **k):
        calls.append(1)
        if len(calls) == 1:
            raise bake.BakeError("made up")
        return real_proof(*a, **k)

    monkeypatch.setattr(bake, "_prove_patches_reach_the_engine", proof)
    lines = []
    (tmp_path / "out").mkdir()
    bake.learn_layout(manifest_mod.load(llama.base_dir), tmp_path / "out", log=lines.append)
    assert len(calls) == 2 and any("coded passes" in ln for ln in lines)
    assert any("baked the row positions" in ln for ln in lines) and (tmp_path / "out" / MAP_FILE).exists()


def test_the_first_load_shows_the_bakes_progress_while_it_runs(llama, tmp_path):
    """Each step's line reaches the caller's log as the child prints it, not when the bake is over."""
    from shira_format import manifest as manifest_mod
    from shira_runtime.inplace.cache import acquire

    seen = []

    def log(msg):
        if "baked the base" in msg:  # the child has just made the real bake; its map is not written yet
            seen.append([d for d in tmp_path.glob(".bake-*") if (d / MAP_FILE).exists()])

    acquire(manifest_mod.load(llama.base_dir), tmp_path, log=log)
    assert seen == [[]]
