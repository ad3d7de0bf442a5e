"""Causal LMs exported with their KV cache (`--kv-cache`) and `shira generate`: the tokens equal transformers'
own greedy generation, before and after an adapter is switched in place."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cached_llama(tmp_path_factory):
    from shira_models.architectures import save
    from shira_toolchain.export import export_model
    from shira_toolchain.export.kv_cache import with_kv_cache
    from shira_toolchain.model_source import resolve

    d = tmp_path_factory.mktemp("kv")
    subject = resolve(str(save("llama", d / "hf")))
    export_model(with_kv_cache(subject), d / "base", formats=("onnx",), log=lambda *a: None)
    return subject, d


def _hf_greedy(model, prompt, n):
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, min_new_tokens=n,
                             attention_mask=torch.ones(1, len(prompt), dtype=torch.int64), pad_token_id=0)
    return out[0, len(prompt):].tolist()


def test_greedy_tokens_match_transformers_with_and_without_an_adapter(cached_llama):
    from shira_runtime import ShiraSession
    from shira_runtime.generate import generate
    from shira_toolchain.pack import pack_peft_shira

    from .arch_matrix import make_adapter

    subject, d = cached_llama
    prompt = [5, 77, 301, 12, 9]
    ckpt, merged = make_adapter(subject.model, __import__("json").loads((d / "base" / "manifest.json").read_text()),
                                d / "adapter")
    pack_peft_shira(ckpt, d / "base", d / "a.shira", name="a", value_coding="f32")
    with ShiraSession(d / "base", mode="patchable") as sess:
        base = generate(sess, prompt, max_new_tokens=12)
        assert base.tokens == _hf_greedy(subject.model, prompt, 12)
        assert base.tokens_per_s > 0 and base.prompt_tokens == len(prompt)
        sess.load(d / "a.shira")
        sess.switch("a")
        patched = generate(sess, prompt, max_new_tokens=12)
        assert patched.tokens == _hf_greedy(merged, prompt, 12)
        assert patched.tokens != base.tokens
        sess.reset()
        assert generate(sess, prompt, max_new_tokens=12).tokens == base.tokens
        # top-k sampling: reproducible from its seed, and different from greedy for a flat random model
        a = generate(sess, prompt, max_new_tokens=12, top_k=50, seed=3).tokens
        assert a == generate(sess, prompt, max_new_tokens=12, top_k=50, seed=3).tokens
        assert a != base.tokens


def test_generate_cli_and_its_refusals(cached_llama, tmp_path):
    from shira_demos.cli import main_group

    _, d = cached_llama
    r = CliRunner().invoke(main_group, ["generate", str(d / "base"), "--prompt-ids", "5,77,301",
                                        "--max-new-tokens", "4"])
    assert r.exit_code == 0, r.output
    assert len(r.stdout.strip().splitlines()[0].split(",")) == 4
    assert "tokens/s" in r.stderr
    r = CliRunner().invoke(main_group, ["generate", str(d / "base"), "--prompt", "hi"])
    assert r.exit_code != 0 and "no tokenizer.json" in r.output and "--prompt-ids" in r.output
    r = CliRunner().invoke(main_group, ["generate", str(d / "base"), "--prompt-ids", "5,999999"])
    assert r.exit_code == 2 and "token id 999999 is outside the vocabulary" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1, r.output


def test_generate_refuses_a_base_without_its_cache(tmp_path):
    from shira_format.errors import ShiraError
    from shira_models.architectures import save
    from shira_runtime import ShiraSession
    from shira_runtime.generate import generate
    from shira_toolchain.export import export_model
    from shira_toolchain.model_source import resolve

    export_model(resolve(str(save("llama", tmp_path / "hf"))), tmp_path / "base", formats=("onnx",),
                 log=lambda *a: None)
    with ShiraSession(tmp_path / "base", mode="patchable") as sess, pytest.raises(ShiraError, match="--kv-cache"):
        generate(sess, [1, 2, 3])
    assert np.load(tmp_path / "base" / "sample.npz")["input:input_ids"].shape[0] == 1


@pytest.mark.long
def test_executorch_generates_the_same_tokens_from_the_same_export(tmp_path):
    from shira_models.architectures import save
    from shira_runtime import ShiraSession
    from shira_runtime.generate import generate
    from shira_toolchain.export import export_model
    from shira_toolchain.export.kv_cache import with_kv_cache
    from shira_toolchain.model_source import resolve

    subject = resolve(str(save("llama", tmp_path / "hf")))
    export_model(with_kv_cache(subject), tmp_path / "base", log=lambda *a: None)
    prompt = [5, 77, 301, 12, 9]
    want = _hf_greedy(subject.model, prompt, 10)
    for backend in ("onnxruntime", "executorch"):
        with ShiraSession(tmp_path / "base", backend=backend, mode="patchable") as sess:
            assert generate(sess, prompt, max_new_tokens=10).tokens == want, backend


@pytest.mark.long
def test_bench_decode_rows_compare_the_cache_with_recomputing(cached_llama, tmp_path):
    import json

    from shira_toolchain.bench.run import _decode_with_cache
    from shira_toolchain.bench.run_report import generation_lines
    from shira_toolchain.export import export_model
    from shira_toolchain.pack import pack_peft_shira

    from .arch_matrix import make_adapter

    subject, _ = cached_llama
    manifest = export_model(subject, tmp_path / "base", formats=("onnx",), log=lambda *a: None)
    ckpt, _ = make_adapter(subject.model, manifest, tmp_path / "adapter")
    pack_peft_shira(ckpt, tmp_path / "base", tmp_path / "a.shira", name="a", value_coding="f32")
    g = _decode_with_cache(subject, tmp_path / "base", tmp_path, tmp_path / "a.shira", repeats=3, threads=1,
                           context=32)
    assert g["context"] == 32 and g["with_kv_cache"]["median_ms"] > 0 and g["recompute_prefix"]["median_ms"] > 0
    text = "\n".join(generation_lines({"models": [{"model": "llama", "generation": g}]}))
    assert "| llama | 32 |" in text and "recomputing the prefix" in text
    json.dumps(g)
