"""The app's Java core on the in-place engine (docs/INPLACE.md), on the host: BakedWeights writes the patcher's
values into a shared mapping of the app's own copy of a bake's baked.bin, and an ONNX Runtime session held open
over that copy (it maps the file privately and never writes it) runs with them at once."""
import json
import shutil
import subprocess

import numpy as np
import onnxruntime as ort

from tests.test_java_core import ENV, java_build  # noqa: F401 - the module's JDK build, as a fixture here


def _held_session(bake, threads):
    """ORT over a bake, opened as the in-place backend opens it (no optimizing again, the bake's config)."""
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    for k, v in json.loads((bake / "bake.json").read_text())["session_config"].items():
        opts.add_session_config_entry(str(k), str(v))
    return ort.InferenceSession(str(bake / "baked.onnx"), opts, providers=["CPUExecutionProvider"])


def _java(build, *args, **kw):
    """BakedSwitchTool, run from the classes `build` (java_build's value) holds."""
    return subprocess.Popen(["java", "-cp", f"{build}/main:{build}/test", "org.shira.core.BakedSwitchTool",
                             *map(str, args)], env=ENV, text=True, **kw)


def test_java_core_switches_onnxruntime_baked_weights_in_place(java_build, stylenet, tmp_path):  # noqa: F811
    """Each state applied by the Java core (switch, fuse by sum and by TIES, reset) and mirrored into the copy's
    baked.bin reaches the session held open over it: its output equals the Python runtime's in-place session's
    for the same state, bit for bit, and reset gives back the base's output and the bake's bytes."""
    from shira_runtime import ShiraSession

    a, b = stylenet.blobs
    states = [("base", None), ("switch:" + a, {a: 1.0}), (f"fuse:{a}=0.7,{b}=0.3:sum", ({a: 0.7, b: 0.3}, "sum")),
              (f"fuse:{a}=0.7,{b}=0.3:ties", ({a: 0.7, b: 0.3}, "ties")), ("switch:" + b, {b: 1.0}), ("reset", {})]
    threads = 2
    with ShiraSession(stylenet.base_dir, threads=threads, cache_dir=tmp_path / "cache", bake="always") as py:
        assert py.mode == "in-place", py.mode_reason
        for name in (a, b):
            py.load(stylenet.blobs[name], name)
        app = tmp_path / "app"  # the app's own copy of the bake
        shutil.copytree(py.engine.bake_dir, app)
        held = _held_session(app, threads)
        tool = _java(java_build, stylenet.base_dir, app, app / "baked.bin",
                     *(f"{n}={stylenet.blobs[n]}" for n in (a, b)), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            assert tool.stdout.readline().strip() == "ready"
            outputs = {}
            for line, state in states:
                if isinstance(state, tuple):
                    py.fuse(*state)
                elif state is not None:
                    py.fuse(state)
                want = py.run(stylenet.inputs)["styled"]
                tool.stdin.write(line + "\n")
                tool.stdin.flush()
                reply = tool.stdout.readline().strip()
                assert reply.startswith("ok"), reply
                got = held.run(["styled"], stylenet.inputs)[0]
                assert np.array_equal(got, want), (line, float(np.abs(got - want).max()))
                outputs[line] = got
            assert np.abs(outputs["switch:" + a] - outputs["base"]).max() > 1e-3  # the patches reached the engine
            assert np.array_equal(outputs["reset"], outputs["base"])
            original = np.fromfile(py.engine.bake_dir / "baked.bin", np.uint8)
            assert np.array_equal(np.fromfile(app / "baked.bin", np.uint8), original)  # reset: the bake's bytes
        finally:
            tool.stdin.close()
            assert tool.wait(timeout=60) == 0


def _synthetic_bake(path):
    """A bake.json with every position form (panels with a partial block and padding, tiles, row groups with a
    partial group, .npy maps of both widths, a placement with two copies) over a zeroed data file, regions at
    offsets that are not page-aligned; and the file Python expects once entry f of each holds f + 1."""
    from shira_runtime.inplace.layout import group_positions, panel_positions, tile_positions

    rng = np.random.default_rng(0)
    (path / "maps").mkdir(parents=True)
    np.save(path / "maps/0.npy", rng.permutation(128)[:100].astype(np.uint32))
    np.save(path / "maps/1.npy", rng.permutation(64)[:50].astype(np.int64))
    panels = {"form": "panels", "rows": 300, "cols": 20, "k_block": 256, "panel": 16, "aligned_n": 32}
    tiles = {"form": "tiles", "period": 8, "perm": rng.permutation(8).tolist()}
    groups = {"form": "row_groups", "rows": 10, "cols": 64, "group": 4, "chunk": 32, "perm": rng.permutation(32).tolist()}
    spec = {"c": (10, [("contiguous", 12)]), "p": (6000, [(panels, 300 * 32), ("contiguous", 6000)]),
            "t": (64, [(tiles, 64)]), "g": (640, [(groups, 640)]), "m": (100, [("maps/0.npy", 128)]),
            "m8": (50, [("maps/1.npy", 64)])}
    placements, want, at = {}, [np.zeros(3, np.float32)], 12
    for name, (numel, copies) in spec.items():
        placements[name] = {"copies": [], "absmax": 1.0}
        for form, floats in copies:
            placements[name]["copies"].append({"region": name, "kind": "data", "offset": at, "length": 4 * floats,
                                               "positions": form})
            f = np.arange(numel)
            pos = (f if form == "contiguous" else np.load(path / form) if isinstance(form, str) else
                   {"panels": panel_positions, "tiles": tile_positions, "row_groups": group_positions}[form["form"]](f, form))
            region = np.zeros(floats, np.float32)
            region[pos] = f + 1
            want.append(region)
            at += 4 * floats
    (path / "bake.json").write_text(json.dumps({"format": 2, "onnxruntime": ort.__version__, "session_config": {},
                                                "placements": placements}))
    np.zeros(at, np.uint8).tofile(path / "baked.bin")
    return {n: numel for n, (numel, _) in spec.items()}, np.concatenate(want)


def test_baked_weights_reads_every_position_form_and_refuses_what_it_cannot(java_build, tmp_path):  # noqa: F811
    """BakedWeights' positions equal inplace/layout.py's for every form; an unknown bake format, a quantized bake
    and a position map of another dtype are refused, naming the file."""
    numels, want = _synthetic_bake(tmp_path)
    fill = ["--fill", tmp_path, tmp_path / "baked.bin", *(f"{n}={k}" for n, k in numels.items())]
    r = _java(java_build, *fill, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert r.wait(timeout=60) == 0, r.stderr.read()
    assert np.array_equal(np.fromfile(tmp_path / "baked.bin", np.float32), want)
    spec = json.loads((tmp_path / "bake.json").read_text())
    for change, message in [(lambda s: s.update(format=1), "bake format 1 is not read here"),
                            (lambda s: s["placements"]["c"]["copies"][0].update(unit="byte"),
                             "quantized bakes are not patched from Java yet"),
                            (lambda s: np.save(tmp_path / "maps/0.npy", np.arange(100, dtype=np.float32)),
                             "a position map must be a one-dimensional")]:
        bad = json.loads(json.dumps(spec))
        change(bad)
        (tmp_path / "bake.json").write_text(json.dumps(bad))
        r = _java(java_build, *fill, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert r.wait(timeout=60) != 0
        assert message in (err := r.stderr.read()) and str(tmp_path) in err, err
