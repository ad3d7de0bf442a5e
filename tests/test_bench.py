"""`shira-bench` smoke test: the JSON's structure and that every measurement is a real sample, not its speed."""
from shira_toolchain.bench import bench_model, markdown, plot


def test_bench_structure(tmp_path):
    r = bench_model("style-net", tmp_path, repeats=3, threads=1, log=lambda *a: None)
    assert {"shira_onnxruntime", "shira_executorch", "peft_lora_unmerge_merge", "peft_lora_merge_and_unload",
            "peft_shira_unmerge_merge", "ort_session_recreate", "et_method_reload"} == set(r["switch"])
    for s in (list(r["switch"].values()) + list(r["fusion"].values())
              + [v for row in r["inference"].values() for v in row.values()]):
        assert s["n"] == len(s["samples_ms"]) >= 3 and s["min_ms"] <= s["median_ms"] <= s["max_ms"] and s["min_ms"] > 0
    assert set(r["fusion"]) == {f"shira_{b}_{k}" for b in ("onnxruntime", "executorch") for k in (2, 3, 4)}
    assert set(r["inference"]) == {"64x64", "256x256"}
    assert set(r["inference"]["64x64"]) == {"constant_weights_ort", "shira_patched_ort", "lora_unfused_ort",
                                            "shira_patched_et"}
    assert r["size"]["blob_f16"] < r["size"]["peft_shira"]
    report = {"command": "test", "machine": {"cpu": "x", "cores": 1, "torch": "t", "onnxruntime": "o"},
              "threads": 1, "repeats": 3, "models": [r]}
    md = markdown(report)
    assert "| style-net | shira_onnxruntime |" in md and "vs constant-weight session" in md
    assert "| style-net | onnxruntime | 4 |" in md
    plot(report, tmp_path / "b.png")
    assert (tmp_path / "b.png").stat().st_size > 1000
