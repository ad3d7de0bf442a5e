"""`shira-bench` smoke test: the JSON's structure and that every measurement is a real sample, not its speed."""
import json

import numpy as np
import pytest
from shira_toolchain.bench.run import bench_model
from shira_toolchain.bench.run_report import markdown, plot
from shira_toolchain.bench.scaling import bench_size, copy_bandwidth


def _is_sample(s) -> bool:
    return s["n"] == len(s["samples_ms"]) >= 1 and s["min_ms"] <= s["median_ms"] <= s["max_ms"] and s["min_ms"] > 0


@pytest.mark.long  # end to end, 20-60 s: in the CI's second run (README, Test)
def test_bench_structure(tmp_path):
    r = bench_model("style-net", tmp_path, repeats=3, threads=1, log=lambda *a: None)
    assert {"shira_onnxruntime", "patch_kernel_onnxruntime", "shira_executorch", "peft_lora_unmerge_merge",
            "peft_lora_merge_and_unload", "peft_shira_unmerge_merge", "ort_session_recreate",
            "et_method_reload", "shira_inplace_onnxruntime"} == set(r["switch"])
    samples = (list(r["switch"].values()) + list(r["fusion"].values())
               + [v for row in r["inference"].values() for v in row.values()]
               + [t[k] for t in r["two_phase"].values() for k in ("visible_switch", "to_full_speed")])
    assert all(_is_sample(s) for s in samples)
    assert set(r["fusion"]) == {f"shira_{b}_{k}" for b in ("onnxruntime", "executorch") for k in (2, 3, 4)}
    assert set(r["inference"]) == {"64x64", "256x256"}
    ort_rows = {"prepacked_base_ort", "shira_patchable_ort", "shira_two_phase_ort", "shira_inplace_ort",
                "lora_unfused_ort", "ort_lora_adapter"}
    assert set(r["inference"]["64x64"]) == ort_rows | {"prepacked_base_et", "shira_patchable_et", "shira_two_phase_et"}
    assert set(r["inference"]["256x256"]) == set(r["inference"]["64x64"])  # the style .pte keeps dynamic H/W
    for b, t in r["two_phase"].items():
        assert t["extra_bytes"] > 0
    # auto: in place on ONNX Runtime; ExecuTorch has no in-place route, so it calibrates two-phase against patchable
    assert r["auto_mode"]["onnxruntime"]["mode"] == "in-place" and r["auto_mode"]["onnxruntime"]["reason"] is None
    et = r["auto_mode"]["executorch"]
    assert et["mode"] in ("two-phase", "patchable") and "ExecuTorch" in et["reason"]
    assert {"patchable_ms", "prepacked_ms", "ratio"} <= set(et["calibration"])
    assert r["size"]["blob_f16"] < r["size"]["peft_shira"] and r["size"]["onnx_adapter"] > 0

    bw = copy_bandwidth(16 << 20, repeats=2)
    row = bench_size("llama-10M", __import__("torch").float16, repeats=2, bandwidth=bw, threads=1)
    assert _is_sample(row["shira_switch"]) and _is_sample(row["lora_switch"])
    assert row["shira_nonzeros"] > 0 and row["lora_rank"] >= 1 and 0 < row["bound_ms"] < row["dense_copy_ms"] * 10

    report = {"command": "test", "machine": {"cpu": "x", "cores": 1, "torch": "t", "onnxruntime": "o"},
              "threads": 1, "repeats": 3, "models": [r],
              "scaling": {"copy_bandwidth_gbps": bw / 1e9, "rows": [row]}}
    md = markdown(report)
    assert "| style-net | shira_onnxruntime |" in md and "vs prepacked base" in md
    assert "| style-net | onnxruntime | 4 |" in md and "| llama-10M | float16 |" in md
    assert "## Two-phase switching" in md and "## Against the targets" in md
    assert "| style-net | shira_inplace_onnxruntime |" in md and "| onnxruntime | " in md and "in-place |" in md
    plot(report, tmp_path / "b.png")
    assert (tmp_path / "b.png").stat().st_size > 1000


@pytest.mark.long  # builds, exports and bakes a small Llama, then one child process per mode: ~1-2 min
def test_real_size_bench_runs_every_mode_in_its_own_process(tmp_path):
    """`shira-bench --real-size` end to end on a small Llama config: every mode measured, none failed, the
    in-place child really in place, memory and side-by-side ratios present, the table and the plot written."""
    from shira_toolchain.bench.real_size import MODES, bench_real_size
    from shira_toolchain.bench.real_size_report import markdown, plot

    spec = {"llama-small": ("llama", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=4, vocab_size=512))}
    r = bench_real_size(tmp_path / "work", quick=True, threads=1, repeats=2, log=lambda *a: None, models=spec)
    row = r["models"]["llama-small"]
    assert set(row["modes"]) == set(MODES)
    assert not {m: v["error"] for m, v in row["modes"].items() if "error" in v}
    assert row["modes"]["in-place"]["session_mode"] == "in-place"
    assert row["modes"]["in-place"]["route"] == "live" and row["many_adapters"]["route"] == "live"
    assert row["modes"]["two-phase"]["to_full_speed_s"] > 0
    inplace = row["modes"]["in-place"]
    assert inplace["restore_median_ms"] > 0 and inplace["write_median_ms"] > 0
    many = row["many_adapters"]  # 1, 10, 100 adapters loaded: the warm switch at each, the cold one past the cache
    assert [c["n"] for c in many["counts"]] == [1, 10, 100] and many["blob_bytes"] > 0
    assert all(c["warm_switch_ms"] > 0 and c["rss"] > 0 for c in many["counts"])
    assert all(("cold_switch_ms" in c) == (c["n"] > many["plan_cache"]) for c in many["counts"])
    for mode, v in row["modes"].items():
        assert 0 < v["rss_rest"] <= v["rss_peak_switch"] or mode == "constant", mode
        if mode not in ("constant", "peft-lora"):  # peft-lora: torch's runs, not comparable with ORT's
            assert v["click_to_result_ms"] >= v["first_run_ms"] > 0, mode
            assert set(v["vs_constant"]) == {"decode", "prefill128"} and all(x > 0 for x in v["vs_constant"].values())
    r.update({"command": "test", "machine": {"cpu": "x", "cores": 1, "torch": "t", "onnxruntime": "o"},
              "threads": 1, "repeats": 2, "seconds": 1.0})
    md = markdown(r)
    assert "| llama-small | in-place (live) |" in md and "| llama-small | onnx-adapter |" in md
    assert "## Many adapters loaded (llama-small, in place)" in md and "| 100 |" in md and "switch / floor" in md
    bake = row["bake"]  # the first load: found by value in one ORT pass, against a plain session's creation
    assert bake["route"] == "by value" and bake["bake_s"] > 0 and bake["bake_peak_rss"] > 0
    assert "## The first load: the bake against a plain session" in md and "| llama-small | by value |" in md
    plot(r, tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 1000


@pytest.mark.long  # two tiny-llama exports, one short training, a small Llama in three bases, twice, the style
# net in four bases: ~6 min
def test_quantized_bench_measures_quality_and_size(tmp_path):
    """`shira-bench --quantized` end to end, reduced: an int4 base's accuracy rows (float-trained, trained on the
    base, merged then quantized), then a small Llama in fp32/int8/int4, in place, each mode in its own process."""
    from shira_toolchain.bench import quantized as q

    work = tmp_path / "work"
    quality = q.quality(work, log=lambda *a: None, threads=1, bases=("fp32", "int4"), tasks=("upper",), steps=10)
    row = quality["int4"]["tasks"]["upper"]
    assert quality["int4"]["session_mode"] == "in-place" and quality["int4"]["bits_per_byte"] > 0
    assert row["float_trained"]["clamped"] > 0 and all(x["clamped"] == 0 for x in row["trained_on_base"])
    assert 0 <= row["merged_then_quantized"]["accuracy"] <= 1 and "trained_on_base" not in quality["fp32"]["tasks"]["upper"]
    spec = {"llama-small": ("llama", dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=4, vocab_size=512))}
    real = q.real_size(work, threads=1, repeats=2, log=lambda *a: None, models=spec)["llama-small"]
    assert set(real) == set(q.REAL_BASES)
    for label, r in real.items():
        assert not {m: v["error"] for m, v in r["modes"].items() if "error" in v}, label
        assert r["modes"]["in-place"]["session_mode"] == "in-place", label
        assert r["modes"]["in-place"]["switch_median_ms"] > 0 and r["modes"]["constant"]["rss_rest"] > 0
    assert real["int4"]["weights_bytes"] < real["int8"]["weights_bytes"] < real["fp32"]["weights_bytes"]
    et = q.executorch_real_size(work, threads=1, repeats=2, log=lambda *a: None, models=spec)["llama-small"]
    assert set(et) == set(q.REAL_BASES) and not {k: r["error"] for k, r in et.items() if "error" in r}
    assert et["fp32"]["reloads_per_switch"] == 0 and et["int4"]["reloads_per_switch"] == 1  # live vs packed
    assert et["int4"]["pte_bytes"] < et["int8"]["pte_bytes"] < et["fp32"]["pte_bytes"]
    assert all(r["plain_rss_rest"] > 0 and r["run_ms"]["decode"] > 0 for r in et.values())
    from shira_toolchain.bench.measure import machine

    earlier = {"command": "shira-bench --quantized --out test --threads 1", "seconds": 1.0, "date": "earlier"}
    report = {"quality": quality, "real_size": {"llama-small": real}, "executorch": {"llama-small": et},
              "sections": {k: earlier for k in ("lm", "real", "executorch")}, "threads": 1, "machine": machine()}
    out = tmp_path / "out"
    out.mkdir()
    (out / "quantized.json").write_text(json.dumps(report))
    # --parts style: the style net measured now, the other sections kept from the report already there
    merged = q.run_quantized(out, quick=True, threads=1, work=work, log=lambda *a: None, parts=("style",))
    assert merged["quality"] == quality and merged["executorch"] == {"llama-small": et}
    assert set(merged["style"]) == set(q.STYLE_BASES)
    for label, row in merged["style"].items():
        assert row["session_mode"] == "in-place", label
        assert all(r["psnr"] > r["psnr_base"] for n, r in row["styles"].items() if n != "posterize"), label
    assert merged["style"]["int8"]["styles"]["sepia"]["clamped"] < merged["style"]["int4"]["styles"]["sepia"]["clamped"]
    assert merged["sections"]["style"]["command"].startswith("shira-bench --quantized --quick --parts style")
    md = (out / "quantized.md").read_text()
    assert "| int4 |" in md and "| llama-small int4 |" in md and "ExecuTorch (XNNPACK)" in md
    assert "the style net and its style adapters" in md and earlier["command"] in md
    assert (out / "quantized.png").stat().st_size > 1000


@pytest.mark.long  # a small Llama exported three ways and baked, then one child per base: ~2 min
def test_ort_lora_bench_measures_every_rank_beside_shira(tmp_path):
    """`shira-bench --ort-lora` on a small Llama: the LoRA graph really adds branches (its output moves with the
    adapter's values), and every base gets every rank and adapter count measured side by side with SHiRA."""
    import onnxruntime as ort

    from shira_toolchain.bench import ort_lora
    from shira_toolchain.bench.probes import inputs_for

    spec = {"llama-small": ("llama", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=4, vocab_size=512))}
    def onnx_nodes(base):
        import onnx

        return onnx.load(str(base / "model_prepacked.onnx"), load_external_data=False).graph.node

    rep = ort_lora.run_ort_lora(tmp_path / "out", threads=1, repeats=2, work=tmp_path / "work",
                                log=lambda *a: None, models=spec)
    rows = rep["models"]["llama-small"]
    assert set(rows) == {"fp32", "int8", "int4"} and not [k for k, v in rows.items() if "error" in v]
    for res in rows.values():
        assert res["shira_mode"] == "in-place"
        assert {(r["rank"], r["adapters"]) for r in res["lora"]} == {(r, n) for r in ort_lora.RANKS
                                                                     for n in ort_lora.BRANCHES}
        assert all(r["ratio"]["decode"] > 0 and r["ms"]["prefill128"]["lora"] > 0 for r in res["lora"])
        tokens = res["tokens"]  # time to the first tokens after a switch, every mode, KV-cache export
        assert {"SHiRA in place", "SHiRA two-phase", "SHiRA patchable", "re-created ORT session",
                "ORT LoRA r=64, 3 active"} <= set(tokens)
        assert ("PyTorch + PEFT LoRA r=8" in tokens) == (res is rows["fp32"])  # PEFT on the float model only
        assert all(t["total_s"] >= t["prompt_s"] + t["decode_s"] > 0 for t in tokens.values())
    base = tmp_path / "work" / "llama-small" / "base-int4"
    model, adapters = ort_lora.add_lora_branches(base, 8, 3)
    feed = inputs_for(base)["decode"]
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    plain = ort.InferenceSession(str(base / "model_prepacked.onnx"), opts, providers=["CPUExecutionProvider"])
    with_lora = sess.run(None, feed)[0]
    zero = {i.name: np.zeros(i.shape, np.float32) for i in sess.get_overridable_initializers() if "__lora" in i.name}
    assert len(zero) == 2 * 3 * len([n for n in onnx_nodes(base) if n.op_type == "MatMulNBits"])
    np.testing.assert_allclose(sess.run(None, {**feed, **zero})[0], plain.run(None, feed)[0], rtol=1e-5, atol=1e-5)
    assert np.max(np.abs(with_lora - plain.run(None, feed)[0])) > 1e-4  # the branches compute something
    md = (tmp_path / "out" / "ort_lora.md").read_text()
    assert "| llama-small | int4 | 64 | 3 |" in md and "| llama-small | int4 | SHiRA in place |" in md and (tmp_path / "out" / "ort_lora.png").stat().st_size > 1000
    # a second command measures one base's time to tokens again: the other rows, and this row's runs, are kept
    before = json.loads((tmp_path / "out" / "ort_lora.json").read_text())
    again = ort_lora.run_ort_lora(tmp_path / "out", threads=1, repeats=2, work=tmp_path / "work", log=lambda *a: None,
                                  models=spec, labels=("int8",), runs=False)
    rows2 = again["models"]["llama-small"]
    assert rows2["fp32"] == before["models"]["llama-small"]["fp32"] and rows2["int8"]["lora"] == rows["int8"]["lora"]
    assert rows2["int8"]["tokens_command"].endswith("--bases int8 --tokens-only") and "tokens_command" not in rows2["int4"]
    assert len(again["seconds_by_command"]) == 2 and "--tokens-only" in (tmp_path / "out" / "ort_lora.md").read_text()
    # and one that measures another base's runs only: its time to tokens is kept, named by the command that measured it
    third = ort_lora.run_ort_lora(tmp_path / "out", threads=1, repeats=2, work=tmp_path / "work", log=lambda *a: None,
                                  models=spec, labels=("int4",), tokens=False)
    rows3 = third["models"]["llama-small"]
    assert rows3["int4"]["tokens"] == rows["int4"]["tokens"] and rows3["int4"]["command"].endswith("--runs-only")
    assert rows3["int4"]["tokens_command"] == rows["int4"]["command"] and rows3["int8"] == rows2["int8"]
    assert len(third["seconds_by_command"]) == 3


@pytest.mark.long  # a small Llama exported, then ten opens, each in its own process: ~1 min
def test_first_open_bench_opens_live_and_baked_beside_a_plain_session(tmp_path, monkeypatch):
    from shira_toolchain.bench import first_open

    monkeypatch.setitem(first_open.SHAPES, "llama-small", ("llama", dict(
        hidden_size=256, intermediate_size=704, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        vocab_size=1000)))
    report = first_open.run_first_open(tmp_path / "out", threads=1, repeats=1, models=["llama-small"],
                                       log=lambda *a: None)
    rows = report["models"]["llama-small"]
    assert set(rows) == {"plain", "live-first", "live-later", "baked-first", "baked-later"}
    for key, row in rows.items():
        assert "error" not in row, (key, row)
        assert row["s"] > 0 and row["peak_rss"] > 50 << 20
        assert row["route"] == (None if key == "plain" else key.split("-")[0])
    md = (tmp_path / "out" / "first_open.md").read_text()
    assert "shira-bench --first-open --models llama-small" in md and "| llama-small | plain ORT session" in md
    assert (tmp_path / "out" / "first_open.png").stat().st_size > 10_000
