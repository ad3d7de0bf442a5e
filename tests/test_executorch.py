"""ExecuTorch specifics: patched weights really reach XNNPACK, conv changes reload the method, files untouched."""
import json

import numpy as np
import pytest
import torch

from shira_runtime import ShiraSession
from shira_toolchain.train import peft_shira
from shira_toolchain.pack import pack_peft_shira

from .helpers import patched_copy, random_sparse, write_peft_layout_checkpoint

GEMM_OPS = ("linear", "mm.out", "addmm", "bmm", "convolution")


def test_linear_and_conv_run_inside_xnnpack(built):
    """The weights we patch must be consumed by XNNPACK, not by ExecuTorch's slow portable kernels."""
    lowering = json.loads((built.base_dir / "manifest.json").read_text())["artifacts"]["executorch"]["lowering"]
    assert lowering["delegates"] >= 1
    outside = [op for op in lowering["ops_outside_delegates"] if any(g in op for g in GEMM_OPS)]
    assert not outside, outside


def test_linear_patch_reaches_the_loaded_xnnpack_method_without_reload(llama):
    sess = ShiraSession(llama.base_dir, backend="executorch")
    program = sess.engine.program
    method = program._method
    before = sess.run(llama.inputs)["logits"]
    sess.load(llama.blobs["zen"], name="zen")
    sess.switch("zen")
    after = sess.run(llama.inputs)["logits"]
    assert program.reloads == 0 and program._method is method  # same loaded method, no reload
    assert np.max(np.abs(after - before)) > 1e-3
    peft_model = peft_shira.load_peft(llama.subject.model, {"zen": llama.peft_dirs["zen"]})
    ref = peft_shira.reference_output("causal-lm", peft_shira.merged_model(peft_model, llama.subject.model, {"zen": 1}),
                                      llama.inputs)
    np.testing.assert_allclose(after, ref, atol=2e-5, rtol=1e-5)


def test_conv_patch_reloads_the_method_once_per_switch(stylenet, tmp_path):
    conv = {"enc.2": random_sparse((32, 32, 3, 3), 0.02, seed=3)}
    lin = {"mix.2": random_sparse((32, 64), 0.02, seed=4)}
    sess = ShiraSession(stylenet.base_dir, backend="executorch")
    for name, mods in (("conv", conv), ("lin", lin)):
        ckpt = write_peft_layout_checkpoint(tmp_path / name, mods)
        sess.load(pack_peft_shira(ckpt, stylenet.base_dir, tmp_path / f"{name}.shira").out, name=name)
    prog = sess.engine.program
    sess.switch("lin")
    assert prog.reloads == 0
    sess.switch("conv")  # restores lin (live) and writes conv (packed): one reload
    assert prog.reloads == 1
    out = sess.run(stylenet.inputs)["styled"]
    ref = peft_shira.reference_output("image", patched_copy(stylenet.subject.model, conv), stylenet.inputs)
    np.testing.assert_allclose(out, ref, atol=2e-5, rtol=1e-5)
    sess.reset()  # conv restored: another reload, base output again
    assert prog.reloads == 2
    np.testing.assert_allclose(sess.run(stylenet.inputs)["styled"],
                               np.load(stylenet.base_dir / "sample.npz")["output:styled"], atol=2e-5)


def test_patching_never_writes_the_files(llama):
    pte = (llama.base_dir / "model.pte").read_bytes()
    weights = (llama.base_dir / "weights.safetensors").read_bytes()
    for backend in ("executorch", "onnxruntime"):
        sess = ShiraSession(llama.base_dir, backend=backend)
        sess.load(llama.blobs["zen"], name="zen")
        sess.switch("zen")
    assert (llama.base_dir / "model.pte").read_bytes() == pte
    assert (llama.base_dir / "weights.safetensors").read_bytes() == weights


@pytest.mark.parametrize("seq", [1, 7, 128])
def test_decode_and_prefill_shapes_agree_across_runtimes(llama, seq):
    """The LM keeps a dynamic sequence axis in both artifacts: decode (1) and prefill (128) agree."""
    ids = {"input_ids": np.arange(seq, dtype=np.int64)[None] % 256}
    ort_s, et_s = ShiraSession(llama.base_dir), ShiraSession(llama.base_dir, backend="executorch")
    for s in (ort_s, et_s):
        s.load(llama.blobs["json-doc"], name="j")
        s.switch("j")
    a, b = ort_s.run(ids)["logits"], et_s.run(ids)["logits"]
    assert a.shape == b.shape == (1, seq, 256)
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-5)
    with torch.no_grad():
        m = peft_shira.merged_model(peft_shira.load_peft(llama.subject.model, {"j": llama.peft_dirs["json-doc"]}),
                                    llama.subject.model, {"j": 1.0})
        ref = m(input_ids=torch.from_numpy(ids["input_ids"]), use_cache=False).logits.numpy()
    np.testing.assert_allclose(b, ref, atol=2e-5, rtol=1e-5)
