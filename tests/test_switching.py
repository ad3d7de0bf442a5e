"""Outputs equal PEFT's merged torch model after every switch and fusion, on the same loaded session."""
import numpy as np
import pytest
import torch

from shira_format.errors import AdapterError
from shira_runtime import ShiraSession
from shira_toolchain.train import peft_shira
from shira_toolchain.pack import pack_peft_shira

from .helpers import patched_copy, random_sparse, snapshot, write_peft_layout_checkpoint

SCALE_PLANS = [{"a": 1.0}, {"b": 1.0}, {"a": 1.0, "b": 1.0}, {"a": 0.7, "b": -0.4}, {}, {"b": 2.0}, {"a": 1.0}]


def test_runtime_equals_peft_merged_model_after_each_switch_and_fusion(built, backend):
    sess = ShiraSession(built.base_dir, backend=backend, mode="patchable")  # the patchable engine alone
    a, b = list(built.blobs)
    for task, path in built.blobs.items():
        sess.load(path, name=task)
    engine = getattr(sess.engine, "session", None) or sess.engine.program
    peft_model = peft_shira.load_peft(built.subject.model, built.peft_dirs)
    out_name = sess.output_names[0]
    base_out = sess.run(built.inputs)[out_name]
    outputs = []
    for plan in SCALE_PLANS:
        scales = {{"a": a, "b": b}[k]: v for k, v in plan.items()}
        sess.fuse(scales)
        out = sess.run(built.inputs)[out_name]
        ref = peft_shira.reference_output(built.family, peft_shira.merged_model(peft_model, built.subject.model, scales),
                                          built.inputs)
        np.testing.assert_allclose(out, ref, atol=2e-5, rtol=1e-5, err_msg=f"after fuse({scales})")
        if scales:  # the patch is visible in the very next run of the same session
            assert np.max(np.abs(out - base_out)) > 1e-3
        outputs.append(out)
    assert (getattr(sess.engine, "session", None) or sess.engine.program) is engine  # never re-created
    np.testing.assert_array_equal(outputs[0], outputs[-1])  # same state, same output


def test_conv_and_linear_weights_patch_in_place(stylenet, tmp_path, backend):
    """PEFT's SHiRA adapts Linear only; a PEFT-layout checkpoint over conv weights packs and patches the same way."""
    from shira_toolchain.export import patchable_weights

    shapes = {p.removesuffix(".weight"): tuple(dict(stylenet.subject.model.named_parameters())[p].shape)
              for p in patchable_weights(stylenet.subject.model, None)}
    assert any(len(s) == 4 for s in shapes.values())
    modules = {m: random_sparse(s, 0.02, seed=i) for i, (m, s) in enumerate(sorted(shapes.items()))}
    ckpt = write_peft_layout_checkpoint(tmp_path / "conv", modules)
    blob = pack_peft_shira(ckpt, stylenet.base_dir, tmp_path / "conv.shira").out
    sess = ShiraSession(stylenet.base_dir, backend=backend)
    sess.load(blob, name="conv")
    for scale in (1.0, 0.5):
        sess.fuse({"conv": scale})
        ref = patched_copy(stylenet.subject.model, modules, scale)
        out = sess.run(stylenet.inputs)["styled"]
        np.testing.assert_allclose(out, peft_shira.reference_output("image", ref, stylenet.inputs),
                                   atol=2e-5, rtol=1e-5)


def test_fusion_sums_overlapping_deltas(stylenet, tmp_path, backend):
    shape = tuple(stylenet.subject.model.mix[0].weight.shape)
    r1, c1, v1 = random_sparse(shape, 0.3, seed=1)
    r2, c2, v2 = random_sparse(shape, 0.3, seed=2)
    overlap = set(zip(r1.tolist(), c1.tolist())) & set(zip(r2.tolist(), c2.tolist()))
    assert len(overlap) > 10
    sess = ShiraSession(stylenet.base_dir, backend=backend)
    for name, mod in (("x", (r1, c1, v1)), ("y", (r2, c2, v2))):
        ckpt = write_peft_layout_checkpoint(tmp_path / name, {"mix.0": mod})
        sess.load(pack_peft_shira(ckpt, stylenet.base_dir, tmp_path / f"{name}.shira").out, name=name)
    sess.fuse({"x": 0.5, "y": 2.0})
    ref = patched_copy(patched_copy(stylenet.subject.model, {"mix.0": (r1, c1, v1)}, 0.5), {"mix.0": (r2, c2, v2)}, 2.0)
    np.testing.assert_allclose(sess.weight("mix.0.weight"), ref.mix[0].weight.detach().numpy(), atol=1e-6)
    np.testing.assert_allclose(sess.run(stylenet.inputs)["styled"],
                               peft_shira.reference_output("image", ref, stylenet.inputs), atol=2e-5, rtol=1e-5)


def _rule_delta(terms: list[tuple[np.ndarray, np.ndarray]], size: int, rule: str) -> np.ndarray:
    """FORMAT.md §6.1 written out per entry: [(flat indices, scaled binary64 terms)] in adapter order -> binary64
    delta per flat index (0 where no adapter touches it)."""
    per: dict[int, list[float]] = {}
    for idx, t in terms:
        for f, x in zip(idx.tolist(), t.tolist()):
            per.setdefault(f, []).append(x)
    out = np.zeros(size)
    for f, ts in per.items():
        if rule == "sum":
            out[f] = sum(ts)
        elif rule == "mean":
            out[f] = sum(ts) / len(ts)
        elif rule == "ties":
            kept = [x for x in ts if x * sum(ts) > 0]
            out[f] = sum(kept) / len(kept) if kept else 0.0
        else:
            out[f] = max(ts, key=abs)  # max() keeps the first among equals
    return out


# the rules are the patcher's, shared by both backends: ExecuTorch with the long cases
@pytest.mark.parametrize("backend", ["onnxruntime", pytest.param("executorch", marks=pytest.mark.long)])
def test_merge_rules_combine_only_where_adapters_overlap(stylenet, tmp_path, backend):
    """fuse(rule=...): each rule's weights, entry by entry as FORMAT.md §6.1 defines them, reach the engine; an
    unknown rule is refused with the weights untouched; reset is bit-exact after every rule."""
    from shira_format.adapter import read_adapter
    from shira_format.errors import AdapterError

    shape = tuple(stylenet.subject.model.mix[0].weight.shape)
    sess = ShiraSession(stylenet.base_dir, backend=backend)
    blobs = {}
    for name, seed in (("x", 1), ("y", 2)):
        ckpt = write_peft_layout_checkpoint(tmp_path / name, {"mix.0": random_sparse(shape, 0.3, seed=seed)})
        blobs[name] = pack_peft_shira(ckpt, stylenet.base_dir, tmp_path / f"{name}.shira").out
        sess.load(blobs[name], name=name)
    base = sess.weight("mix.0.weight")
    scales = {"x": 0.5, "y": -2.0}
    terms = [(t.indices, t.values.astype(np.float64) * scales[n])
             for n in scales for t in read_adapter(blobs[n], sess.manifest).tensors.values()]
    results = {}
    for rule in ("sum", "mean", "ties", "magnitude"):
        sess.fuse(scales, rule=rule)
        assert sess.rule == rule
        want = (base.reshape(-1) + _rule_delta(terms, base.size, rule).astype(np.float32)).reshape(shape)
        results[rule] = sess.weight("mix.0.weight")
        np.testing.assert_array_equal(results[rule], want)
        ref = patched_copy(stylenet.subject.model, {}, 1.0)
        ref.mix[0].weight.data[:] = torch.from_numpy(want)
        np.testing.assert_allclose(sess.run(stylenet.inputs)["styled"],
                                   peft_shira.reference_output("image", ref, stylenet.inputs), atol=2e-5, rtol=1e-5)
    only_one = np.setxor1d(*(t[0] for t in terms))  # touched by one adapter: the same under every rule
    assert all(np.array_equal(r.reshape(-1)[only_one], results["sum"].reshape(-1)[only_one]) for r in results.values())
    assert len({r.tobytes() for r in results.values()}) == 4  # overlaps differ
    before = snapshot(sess)
    with pytest.raises(AdapterError, match="unknown merge rule"):
        sess.fuse(scales, rule="average")
    assert snapshot(sess) == before and sess.rule == "magnitude"
    sess.reset()
    np.testing.assert_array_equal(sess.weight("mix.0.weight"), base)
    sess.close()


@pytest.mark.slow
def test_fan_in_fan_out_checkpoint_addresses_the_stored_transpose(tmp_path):
    """fan_in_fan_out: rows/cols address the logical [out, in] delta of a weight stored [in, out]."""
    from shira_toolchain.export import export_model
    from shira_toolchain.model_source import resolve

    subject = resolve("tests.factories:fan_in_fan_out")
    export_model(subject, tmp_path / "base", log=lambda *a: None)
    w = subject.model.proj.weight  # [in=16, out=24]
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(0, 24, 30), rng.integers(0, 16, 30)
    flat = np.unique(rows * 16 + cols)
    rows, cols, vals = flat // 16, flat % 16, rng.normal(0, 0.5, flat.size).astype(np.float32)
    ckpt = write_peft_layout_checkpoint(tmp_path / "ckpt", {"proj": (rows, cols, vals)}, fan_in_fan_out=True)
    blob = pack_peft_shira(ckpt, tmp_path / "base", tmp_path / "a.shira").out
    expect = w.detach().numpy().copy()
    expect[cols, rows] += vals
    for backend in ("onnxruntime", "executorch"):
        sess = ShiraSession(tmp_path / "base", backend=backend)
        sess.load(blob, name="a")
        sess.switch("a")
        np.testing.assert_array_equal(sess.weight("proj.weight"), expect)


def test_single_switch_writes_base_plus_delta_exactly(llama, backend):
    """One adapter at scale 1 writes exactly float32(base + delta), the value PEFT's merge computes."""
    from shira_runtime import read_adapter

    sess = ShiraSession(llama.base_dir, backend=backend)
    name = sess.load(llama.blobs["zen"], name="zen")
    adapter = read_adapter(llama.blobs["zen"])
    before = {t: sess.weight(t) for t in adapter.tensors}
    sess.switch(name)
    for t, at in adapter.tensors.items():
        expect = before[t].reshape(-1).copy()
        expect[at.indices] = expect[at.indices] + at.values
        np.testing.assert_array_equal(sess.weight(t).reshape(-1), expect)


def test_adapters_out_of_the_plan_cache_switch_and_fuse_to_the_same_bits(stylenet, tmp_path):
    """A session keeps only `plan_cache` adapters decoded; the others are their blob's bytes, decoded again at a
    switch. Every state must be the same, bit for bit, as in a session that keeps them all decoded."""
    from shira_toolchain.export import patchable_weights

    shapes = {p.removesuffix(".weight"): tuple(dict(stylenet.subject.model.named_parameters())[p].shape)
              for p in patchable_weights(stylenet.subject.model, None)}
    names = [f"s{i}" for i in range(5)]
    blobs = {}
    for i, n in enumerate(names):
        modules = {m: random_sparse(s, 0.02, seed=10 * i + j) for j, (m, s) in enumerate(sorted(shapes.items()))}
        ckpt = write_peft_layout_checkpoint(tmp_path / n, modules)
        blobs[n] = pack_peft_shira(ckpt, stylenet.base_dir, tmp_path / f"{n}.shira").out
    small = ShiraSession(stylenet.base_dir, plan_cache=1)
    large = ShiraSession(stylenet.base_dir, plan_cache=8)
    for s in (small, large):
        for n in names:
            s.load(blobs[n], name=n)
    assert small.adapters["s0"].blob == blobs["s0"].read_bytes()  # what a loaded adapter costs: its blob
    before = snapshot(small)
    steps = [lambda s: s.switch("s0"), lambda s: s.switch("s3"), lambda s: s.fuse({"s1": 0.5, "s2": 1.0, "s4": -0.3}),
             lambda s: s.prepare("s0"), lambda s: s.switch("s0"), lambda s: s.fuse({"s0": 1.0, "s3": 1.0}, rule="ties"),
             lambda s: s.switch("s4"), lambda s: s.reset()]
    for i, step in enumerate(steps):
        for s in (small, large):
            step(s)
        assert snapshot(small) == snapshot(large), f"step {i}"
        np.testing.assert_array_equal(small.run(stylenet.inputs)["styled"], large.run(stylenet.inputs)["styled"])
    assert snapshot(small) == before
    with pytest.raises(AdapterError, match="not loaded"):
        small.prepare("nope")
    with pytest.raises(ValueError, match="plan_cache"):
        ShiraSession(stylenet.base_dir, plan_cache=0)
    small.close()
    large.close()
