"""Export: manifest contents, layouts, --targets, shared storage, the three MODEL forms."""
import copy
import json

import numpy as np
import pytest
import torch

from shira_runtime import ShiraSession
from shira_format.manifest import load as load_manifest
from shira_toolchain.export import ExportError, export_model
from shira_toolchain.model_source import ModelSourceError, resolve

QUIET = dict(log=lambda *a: None)


def test_manifest_records_every_linear_and_conv_weight_with_layouts(built):
    m = load_manifest(built.base_dir)  # the strict reader accepts what export wrote
    raw = json.loads((built.base_dir / "manifest.json").read_text())
    assert raw["base_fingerprint"].startswith("sha256:") and len(raw["base_fingerprint"]) == 71
    assert {"shira", "torch", "onnx", "onnxruntime"} <= set(raw["created_by"])
    errors = raw["export_check"]["max_abs_error"]
    assert set(errors) == {"onnxruntime", "executorch"} and max(errors.values()) < 1e-4
    from shira_toolchain.export import patchable_weights

    assert set(m.tensors) == set(patchable_weights(built.subject.model, None))
    params = dict(built.subject.model.named_parameters())
    for name, info in m.tensors.items():
        w = params[name].detach().numpy()
        assert info.shape == w.shape
        for p in info.placements["onnxruntime"] + info.placements["executorch"]:
            expect = {"identity": w, "transpose2d": w.T, "channels_last": np.moveaxis(w, 1, -1)}[p.layout]
            assert p.shape == expect.shape
    layouts = {p.layout for i in m.tensors.values() for p in i.placements["onnxruntime"]}
    if built.name == "tiny-llama":
        assert "transpose2d" in layouts  # the exporter pre-transposes MatMul weights for 3-D inputs
    else:
        assert any(i.kind == "conv2d" for i in m.tensors.values())
        # XNNPACK packs conv weights (stored OHWI) at load: those placements need a method reload
        for i in m.tensors.values():
            assert [p.reload for p in i.placements["executorch"]] == [i.kind == "conv2d"]


def test_weights_file_holds_the_stated_layout(built, backend):
    sess = ShiraSession(built.base_dir, backend=backend, verify="full")  # re-hashes every weight in torch layout
    params = dict(built.subject.model.named_parameters())
    for name in sess.manifest.tensors:
        np.testing.assert_array_equal(sess.weight(name), params[name].detach().numpy())


def test_index_maps_agree_with_numpy_layouts():
    from shira_format.manifest import Placement

    rng = np.random.default_rng(0)
    for shape, layout, to_stored in (((5, 7), "transpose2d", lambda a: a.T),
                                     ((4, 3, 2, 5), "channels_last", lambda a: np.moveaxis(a, 1, -1)),
                                     ((4, 3, 6), "channels_last", lambda a: np.moveaxis(a, 1, -1)),
                                     ((4, 3, 2, 2), "identity", lambda a: a)):
        a = rng.normal(size=shape)
        stored = np.ascontiguousarray(to_stored(a)).reshape(-1)
        flat = np.arange(a.size)
        mapped = Placement("x", stored.shape, layout).map_indices(flat, shape)
        np.testing.assert_array_equal(stored[mapped], a.reshape(-1))


@pytest.mark.slow
def test_targets_regex_limits_patchable_weights(tmp_path):
    subject = resolve("tiny-llama")
    man = export_model(subject, tmp_path, targets=r"self_attn\.(q|v)_proj", formats=("onnx",), **QUIET)
    assert sorted(man["tensors"]) == sorted(f"model.layers.{i}.self_attn.{p}_proj.weight"
                                            for i in range(2) for p in "qv")
    import onnx

    g = onnx.load(str(tmp_path / "model.onnx")).graph
    weight_inputs = [i.name for i in g.input if i.name != "input_ids"]
    assert len(weight_inputs) == 4  # everything else stays an embedded, prepackable initializer
    assert len(g.initializer) > 10
    with pytest.raises(ExportError, match="matches no"):
        export_model(subject, tmp_path / "none", targets="^nothing$", **QUIET)


@pytest.mark.slow
def test_identical_weights_merged_by_the_exporter_are_not_patchable(tmp_path):
    man = export_model(resolve("tests.factories:twin_zeros"), tmp_path, **QUIET)
    assert set(man["tensors"]) == {"c.weight"}
    assert {"a.weight", "b.weight"} <= set(man["excluded"])
    assert ["a.weight", "b.weight"] in man["shared_storage"]


@pytest.mark.slow
def test_weight_whose_layouts_look_alike_is_refused_as_ambiguous(tmp_path):
    """A constant-valued weight has the same bytes in every layout: the .pte cannot say which one it holds."""
    import torch
    from safetensors.torch import save_file

    m = resolve("tests.factories:plain_mlp", inputs=("0:2x16",)).model
    state = {k: v.clone() for k, v in m.state_dict().items()}
    state["0.weight"] = torch.full((32, 16), 0.5)
    save_file(state, str(tmp_path / "w.safetensors"))
    man = export_model(resolve("tests.factories:plain_mlp", str(tmp_path / "w.safetensors"), ("0:2x16",)),
                       tmp_path / "out", **QUIET)
    assert "0.weight" not in man["tensors"] and "2.weight" in man["tensors"]
    assert "executorch: the .pte stores it in one buffer with itself" in man["excluded"]["0.weight"]


@pytest.mark.slow
def test_tied_weights_are_not_patchable(tmp_path):
    man = export_model(resolve("tests.factories:tied"), tmp_path, **QUIET)
    assert "head.weight" in man["tensors"]
    assert "enc.weight" not in man["tensors"] and "dec.weight" not in man["tensors"]
    assert "tied" in man["excluded"]["enc.weight"]
    assert "executorch" in man["excluded"]["enc.weight"] and "onnxruntime" in man["excluded"]["enc.weight"]


@pytest.mark.slow
def test_pack_names_the_exclusion_reason(tmp_path):
    from shira_toolchain.pack import PackError, pack_peft_shira

    from .helpers import write_peft_layout_checkpoint

    export_model(resolve("tests.factories:twin_zeros"), tmp_path / "b", **QUIET)
    ckpt = write_peft_layout_checkpoint(tmp_path / "c", {"a": (np.array([0]), np.array([1]), np.array([1.0]))})
    with pytest.raises(PackError, match="one buffer with"):
        pack_peft_shira(ckpt, tmp_path / "b", tmp_path / "x.shira")


@pytest.mark.slow
def test_factory_with_weights_and_input_option(tmp_path):
    import torch
    from safetensors.torch import save_file

    m = resolve("tests.factories:plain_mlp", inputs=("0:2x16",)).model
    g = torch.Generator().manual_seed(5)
    new = {k: torch.randn(v.shape, generator=g) for k, v in m.state_dict().items()}
    save_file(new, str(tmp_path / "w.safetensors"))
    subject = resolve("tests.factories:plain_mlp", str(tmp_path / "w.safetensors"), inputs=("0:2x16",))
    man = export_model(subject, tmp_path / "out", **QUIET)
    assert max(man["export_check"]["max_abs_error"].values()) < 1e-4
    sess = ShiraSession(tmp_path / "out")
    np.testing.assert_array_equal(sess.weight("0.weight"), new["0.weight"].numpy())
    with pytest.raises(ModelSourceError, match="--input"):
        resolve("tests.factories:plain_mlp")
    with pytest.raises(ModelSourceError, match="cannot import"):
        resolve("tests.factories:missing")


@pytest.mark.slow
def test_local_hugging_face_directory(tmp_path):
    from shira_models import tiny_llama

    lm = tiny_llama.build()
    lm.save_pretrained(tmp_path / "hf")
    man = export_model(resolve(str(tmp_path / "hf")), tmp_path / "out", formats=("onnx",), **QUIET)
    assert man["base_fingerprint"] == json.loads((tmp_path / "out" / "manifest.json").read_text())["base_fingerprint"]
    assert "model.layers.1.mlp.down_proj.weight" in man["tensors"]
    assert man["export_check"]["max_abs_error"]["onnxruntime"] < 1e-4


@pytest.mark.long  # end to end, 20-60 s: in the CI's second run (README, Test)
def test_reexport_replaces_files_atomically(stylenet, tmp_path):
    import shutil

    shutil.copytree(stylenet.base_dir, tmp_path / "b")
    export_model(resolve("style-net"), tmp_path / "b", **QUIET)
    assert not [p for p in (tmp_path / "b").iterdir() if p.name.startswith(".")]  # no temp leftovers
    assert load_manifest(tmp_path / "b").base_fingerprint == load_manifest(stylenet.base_dir).base_fingerprint


@pytest.mark.slow
def test_depthwise_1x1_and_column_vectors_are_patchable_on_both_runtimes(tmp_path):
    """No false refusals (issue: depthwise kernels, 1x1 / [N,1] look-alike layouts, a zero input feature), and a
    model returning a dict exports one named output per tensor, each checked on both runtimes."""
    from shira_runtime import ShiraSession
    from shira_format.adapter import SparseTensor, encode_adapter

    subject = resolve("tests.factories:layout_traps")
    assert subject.output_names == ["features", "score"]
    man = export_model(subject, tmp_path, **QUIET)
    assert set(man["tensors"]) == {"dw.weight", "pw.weight", "fc.weight", "score.weight"}, man["excluded"]
    assert [p["layout"] for p in man["tensors"]["dw.weight"]["placements"]["executorch"]] == ["transpose2d"]
    deltas = [SparseTensor(t, tuple(info["shape"]), np.array([0, int(np.prod(info["shape"])) - 1]),
                           np.array([0.25, -0.5], np.float32)) for t, info in man["tensors"].items()]
    blob = encode_adapter("a", man["base_fingerprint"], deltas, "f32", "flat-u32")
    patched = copy.deepcopy(subject.model)
    with torch.no_grad():
        for d in deltas:
            dict(patched.named_parameters())[d.target].view(-1)[torch.from_numpy(d.indices)] += torch.from_numpy(d.values)
        ref = patched(*subject.example_inputs.values())
    for backend in ("onnxruntime", "executorch"):
        with ShiraSession(tmp_path, backend=backend, mode="patchable") as s:
            s.load(blob)
            s.switch("a")
            out = s.run({k: v.numpy() for k, v in subject.example_inputs.items()})
            for name in ("features", "score"):
                np.testing.assert_allclose(out[name], ref[name].numpy(), atol=1e-5, err_msg=f"{backend} {name}")


def test_float16_weights_are_refused_before_the_export(tmp_path):
    with pytest.raises(ExportError, match=r"0\.weight is float16.*model\.float\(\)"):
        export_model(resolve("tests.factories:half_mlp"), tmp_path, **QUIET)
    assert not (tmp_path / "manifest.json").exists()
