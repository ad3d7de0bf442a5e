"""`shira-bench`: CPU latency of switching adapters and of inference after a switch, side by side in one run.

Every number is a median with min and max over repeated samples taken in this process, so each ratio compares
pairs measured under the same conditions. Scenarios (per built-in model):
  switch     SHiRA in-place switch on ONNX Runtime and on ExecuTorch, against PEFT LoRA unmerge+merge,
             PEFT LoRA merge_and_unload, PEFT SHiRA unmerge+merge (torch), re-creating the ONNX Runtime
             session from the exported files, and reloading the ExecuTorch method
  inference  the constant-weight ONNX Runtime session (every weight an initializer, fully prepacked) against
             the patched session after a switch and against LoRA left unfused (an export with LoRA branches);
             the LM at sequence 1 (decode) and 128 (prefill), the image net at 64x64 and 256x256
  fusion     fusing 2-4 SHiRA adapters in place, time against the number of adapters
  size       the packed blob against the PEFT SHiRA and PEFT LoRA checkpoints with as many trainable values
Outputs: bench.json (every raw sample, the machine, versions), bench.md, bench.png.
"""
from __future__ import annotations

import copy
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from .export import export_model, tool_versions
from .model_source import resolve
from .pack import pack_adapter
from .train import TrainConfig, train

PAPER = ("Paper anchors (SHiRA, NeurIPS 2024): SHiRA vs LoRA switch 4.68x faster on SDXL and 5.71x on LLaMA2-7B end "
         "to end on CPU, up to 16x in a micro-benchmark; unfused LoRA up to +30% inference latency.")


def machine() -> dict:
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            **tool_versions()}


def sample(fn, repeats: int, warmup: int = 2, setup=None) -> list[float]:
    """Seconds per call of fn(); `setup()` runs untimed before each call."""
    out = []
    for i in range(warmup + repeats):
        if setup:
            setup()
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        if i >= warmup:
            out.append(dt)
    return out


def stats(samples: list[float]) -> dict:
    ms = [s * 1e3 for s in samples]
    return {"median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms), "n": len(ms), "samples_ms": ms}


def _constant_weight_session(base_dir: Path, threads: int):
    """The plain export: the same graph with every patchable weight embedded again as an initializer."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from shira_runtime.safetensors_file import read_file

    m = onnx.load(str(base_dir / "model.onnx"))
    st = read_file(base_dir / "weights.safetensors")
    keep = [i for i in m.graph.input if i.name not in st.tensors]
    del m.graph.input[:]
    m.graph.input.extend(keep)
    m.graph.initializer.extend(numpy_helper.from_array(np.array(st.array(n)), n) for n in st.tensors)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _unfused_lora_session(lora_model, subject, threads: int):
    import onnxruntime as ort

    from .export import _torch_export
    from .model_source import ExportSubject

    inner = lora_model.base_model.model.eval()  # the transformers/torch model with LoRA layers injected
    sub = ExportSubject(subject.source, inner, subject.example_inputs, subject.output_names,
                        subject.dynamic_axes, subject.is_causal_lm)
    proto = _torch_export(sub)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def bench_model(name: str, work: Path, repeats: int, threads: int, log=print) -> dict:
    from peft import PeftModel

    from shira_runtime import ShiraSession

    torch.set_num_threads(threads)
    subject = resolve(name)
    base_dir = work / name / "base"
    export_model(subject, base_dir, log=lambda *a: None)
    task = "upper" if name == "tiny-llama" else "sepia"
    ck = {}
    for key, lora, seed in (("shira-a", False, 0), ("shira-b", False, 1), ("shira-c", False, 2), ("shira-d", False, 3),
                            ("lora-a", True, 0), ("lora-b", True, 1)):
        ck[key] = work / name / key
        train(subject, TrainConfig(task=task, mask="rand", r=1, steps=3, seed=seed, lora=lora), ck[key],
              log=lambda *a: None, progress=False)
    shira_keys = ("shira-a", "shira-b", "shira-c", "shira-d")
    blobs = {k: pack_adapter(ck[k], base_dir, work / name / f"{k}.shira").out for k in shira_keys}
    res = {"model": name, "parameters": sum(p.numel() for p in subject.model.parameters()), "switch": {},
           "fusion": {}, "inference": {}, "size": {}}

    # ---- switch ----
    sessions = {b: ShiraSession(base_dir, backend=b, threads=threads) for b in ("onnxruntime", "executorch")}
    for b, s in sessions.items():
        for k, p in blobs.items():
            s.load(p, name=k)
        flip = iter(["shira-a", "shira-b"] * (repeats + 10))
        res["switch"][f"shira_{b}"] = stats(sample(lambda s=s: s.switch(next(flip)), repeats))
        # fusing k adapters (equal scales), each sample starting from a single other adapter
        for k in range(2, len(shira_keys) + 1):
            mix = {a: 1.0 / k for a in shira_keys[:k]}
            res["fusion"][f"shira_{b}_{k}"] = stats(sample(lambda s=s, mix=mix: s.fuse(mix), repeats,
                                                           setup=lambda s=s: s.switch("shira-d")))
    lora = PeftModel.from_pretrained(copy.deepcopy(subject.model), str(ck["lora-a"]), adapter_name="a")
    lora.load_adapter(str(ck["lora-b"]), adapter_name="b")
    state = {"cur": "a"}

    def lora_switch():
        lora.unmerge_adapter()
        state["cur"] = "b" if state["cur"] == "a" else "a"
        lora.set_adapter(state["cur"])
        lora.merge_adapter()

    lora.merge_adapter()
    res["switch"]["peft_lora_unmerge_merge"] = stats(sample(lora_switch, repeats))
    holder = {}
    res["switch"]["peft_lora_merge_and_unload"] = stats(sample(
        lambda: holder["m"].merge_and_unload(), repeats,
        setup=lambda: holder.__setitem__("m", PeftModel.from_pretrained(copy.deepcopy(subject.model),
                                                                         str(ck["lora-a"])))))
    shira = PeftModel.from_pretrained(copy.deepcopy(subject.model), str(ck["shira-a"]), adapter_name="a")
    shira.load_adapter(str(ck["shira-b"]), adapter_name="b")
    lora, state["cur"] = shira, "a"  # same switch pattern on PEFT's own SHiRA
    shira.merge_adapter()
    res["switch"]["peft_shira_unmerge_merge"] = stats(sample(lora_switch, repeats))
    res["switch"]["ort_session_recreate"] = stats(sample(lambda: ShiraSession(base_dir, threads=threads),
                                                         max(3, repeats // 4)))
    res["switch"]["et_method_reload"] = stats(sample(sessions["executorch"].backend.program.reload, max(3, repeats // 4)))

    # ---- inference after a switch ----
    const = _constant_weight_session(base_dir, threads)
    lora_unfused = _unfused_lora_session(PeftModel.from_pretrained(copy.deepcopy(subject.model), str(ck["lora-a"])),
                                         subject, threads)
    for s in sessions.values():
        s.switch("shira-a")
    shapes = {"decode": (1, 1), "prefill": (1, 128)} if name == "tiny-llama" else {"64x64": 64, "256x256": 256}
    for label, shp in shapes.items():
        if name == "tiny-llama":
            x = {"input_ids": np.arange(shp[1], dtype=np.int64)[None] % 256}
        else:
            x = {"image": np.random.default_rng(0).random((1, 3, shp, shp), dtype=np.float32)}
        row = {"constant_weights_ort": stats(sample(lambda: const.run(None, x), repeats)),
               "shira_patched_ort": stats(sample(lambda: sessions["onnxruntime"].run(x), repeats)),
               "lora_unfused_ort": stats(sample(lambda: lora_unfused.run(None, x), repeats))}
        if name == "tiny-llama" or shp == 64:  # the style .pte is static 64x64
            row["shira_patched_et"] = stats(sample(lambda: sessions["executorch"].run(x), repeats))
        res["inference"][label] = row

    # ---- size ----
    def du(p: Path) -> int:
        return sum(f.stat().st_size for f in p.iterdir() if f.is_file() and f.suffix in (".json", ".safetensors")
                   and f.name != "train_report.json")

    res["size"] = {"blob_f16": blobs["shira-a"].stat().st_size, "peft_shira": du(ck["shira-a"]),
                   "peft_lora": du(ck["lora-a"])}
    log(f"  {name}: SHiRA switch {res['switch']['shira_onnxruntime']['median_ms']:.2f} ms (ORT), "
        f"LoRA unmerge+merge {res['switch']['peft_lora_unmerge_merge']['median_ms']:.2f} ms, session re-create "
        f"{res['switch']['ort_session_recreate']['median_ms']:.1f} ms")
    return res


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = ["# shira-bench", "", f"`{report['command']}` on {m['cpu']} ({m['cores']} cores), {report['threads']} "
             f"thread(s); torch {m['torch']}, onnxruntime {m['onnxruntime']}. Medians (min-max) of "
             f"{report['repeats']} samples, all in one process.", "", "## Switch latency", "",
             "| model | method | median ms | min-max ms | vs SHiRA (ORT) |", "|---|---|---|---|---|"]
    for r in report["models"]:
        ref = r["switch"]["shira_onnxruntime"]["median_ms"]
        for k, s in r["switch"].items():
            lines.append(f"| {r['model']} | {k} | {s['median_ms']:.3f} | {s['min_ms']:.3f}-{s['max_ms']:.3f} | "
                         f"{s['median_ms'] / ref:.1f}x |")
    lines += ["", "## Fusing k adapters in place (equal scales, from one other adapter active)", "",
              "| model | runtime | k | median ms | min-max ms |", "|---|---|---|---|---|"]
    for r in report["models"]:
        for key, s in r.get("fusion", {}).items():
            _, runtime, k = key.split("_")
            lines.append(f"| {r['model']} | {runtime} | {k} | {s['median_ms']:.3f} | {s['min_ms']:.3f}-{s['max_ms']:.3f} |")
    lines += ["", "## Inference after a switch", "",
              "| model | shape | method | median ms | vs constant-weight session |", "|---|---|---|---|---|"]
    for r in report["models"]:
        for shape, row in r["inference"].items():
            ref = row["constant_weights_ort"]["median_ms"]
            for k, s in row.items():
                lines.append(f"| {r['model']} | {shape} | {k} | {s['median_ms']:.3f} | {s['median_ms'] / ref:.2f}x |")
    lines += ["", "## Adapter size on disk (same number of trainable values)", "",
              "| model | packed blob (f16) | PEFT SHiRA checkpoint | PEFT LoRA checkpoint |", "|---|---|---|---|"]
    for r in report["models"]:
        s = r["size"]
        lines.append(f"| {r['model']} | {s['blob_f16']:,} B | {s['peft_shira']:,} B | {s['peft_lora']:,} B |")
    lines += ["", PAPER, "", "Not yet measured here (issue 6 continues): the ~10M-1B scaling sweep with its "
              "memory-bandwidth line, ORT's own `.onnx_adapter` LoRA, and an ExecuTorch constant-weight baseline.", ""]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(report["models"]), figsize=(6 * len(report["models"]), 4), squeeze=False)
    for ax, r in zip(axes[0], report["models"]):
        names = list(r["switch"])
        med = [r["switch"][n]["median_ms"] for n in names]
        lo = [m - r["switch"][n]["min_ms"] for n, m in zip(names, med)]
        hi = [r["switch"][n]["max_ms"] - m for n, m in zip(names, med)]
        ax.barh(names, med, xerr=[lo, hi], color=["tab:green" if n.startswith("shira") else "tab:gray" for n in names])
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels collide on short ranges
        ax.set_xlabel("switch latency, ms (log)")
        ax.set_title(f"{r['model']} ({r['parameters']:,} params)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def run_bench(out_dir, quick: bool = True, threads: int = 2, log=print) -> dict:
    import tempfile

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    repeats = 20 if quick else 100
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        models = [bench_model(n, Path(tmp), repeats, threads, log) for n in ("tiny-llama", "style-net")]
    report = {"command": f"shira-bench {'--quick ' if quick else ''}--out {out_dir} --threads {threads}",
              "machine": machine(), "threads": threads, "repeats": repeats, "quick": quick, "models": models,
              "seconds": time.time() - t0}
    (out_dir / "bench.json").write_text(json.dumps(report, indent=1))
    (out_dir / "bench.md").write_text(markdown(report))
    plot(report, out_dir / "bench.png")
    log(f"bench -> {out_dir} ({report['seconds']:.0f}s)")
    return report
