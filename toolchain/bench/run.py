"""`shira-bench`: CPU latency of switching adapters and of inference after a switch, side by side in one run.

Every number is a median with min and max over repeated samples taken in this process, so each ratio compares
pairs measured under the same conditions. Scenarios (per built-in model):
  switch     SHiRA switch on ONNX Runtime (patchable engine, and in place on ORT's own packed weights) and on
             ExecuTorch (and the bare patch kernel under it),
             against PEFT LoRA unmerge+merge, PEFT LoRA merge_and_unload, PEFT SHiRA unmerge+merge (torch),
             re-creating the ONNX Runtime session from the exported files, and reloading the ExecuTorch method
  inference  the prepacked base sessions (ONNX Runtime: every weight an initializer, fully prepacked;
             ExecuTorch: model_prepacked.pte) against the patchable engines after a switch, the two-phase engines
             once at prepacked speed, the in-place ORT session right after a switch, LoRA left unfused (an export with LoRA branches) and ONNX Runtime's own LoRA
             adapters (`.onnx_adapter`, `RunOptions.add_active_adapter`); the LM at sequence 1 (decode) and 128
             (prefill), the image net at 64x64 and 256x256
  generation one new token at context 128 with the KV cache (`--kv-cache` export) against recomputing the prefix
  two_phase  per runtime: the switch as the caller sees it, the time until the prepacked engine is installed,
             and the extra memory it holds
  auto_mode  per runtime: what mode="auto" picks for this model, and why
  fusion     fusing 2-4 SHiRA adapters in place, time against the number of adapters
  size       the packed blob against the PEFT SHiRA and PEFT LoRA checkpoints with as many trainable values
  scaling    Llama-shaped random models from ~10M to ~1B parameters (scaling.py)
Outputs: bench.json (every raw sample, the machine, versions), bench.md, bench.png.
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
from shira_format import manifest as manifest_format
from shira_format.atomic import write_text
from shira_runtime.backends.onnxruntime import session_options

from ..export import export_model
from ..model_source import resolve
from ..pack import pack_adapter
from ..train import TrainConfig, train
from .measure import machine, peft_switcher, sample, sample_rounds, stats
from .subjects import write_onnx_adapter
from .run_report import markdown, plot


def _prepacked_base_session(base_dir: Path, threads: int):
    """The plain export: the same graph with every patchable weight embedded again as an initializer."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper
    from shira_format.safetensors_file import read_file

    m = onnx.load(str(base_dir / "model.onnx"))
    st = read_file(base_dir / "weights.safetensors")
    keep = [i for i in m.graph.input if i.name not in st.tensors]
    del m.graph.input[:]
    m.graph.input.extend(keep)
    m.graph.initializer.extend(numpy_helper.from_array(np.array(st.array(n)), n) for n in st.tensors)
    opts = session_options(threads)
    return ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _lora_sessions(lora_dirs: dict, subject, work: Path, threads: int):
    """LoRA left unfused, two ways, from one export of the model with LoRA branches:
    (1) every LoRA weight embedded (`lora_unfused_ort`), (2) the LoRA weights as graph inputs fed by ONNX
    Runtime's own adapter files (`.onnx_adapter`), one per LoRA checkpoint: `ort_lora_adapter`.
    -> (constant session, adapter session, {name: LoraAdapter}, adapter file size)"""
    import onnxruntime as ort
    from peft import PeftModel
    from shira_format import manifest as manifest_mod

    from ..model_source import ExportSubject

    first = next(iter(lora_dirs.values()))
    inner = PeftModel.from_pretrained(copy.deepcopy(subject.model), str(first)).base_model.model.eval()
    sub = ExportSubject(subject.source, inner, subject.example_inputs, subject.output_names,
                        subject.dynamic_axes, subject.family)
    export_model(sub, work / "lora-export", targets=r"lora_[AB]\.", formats=("onnx",), log=lambda *a: None)
    man = manifest_mod.load(work / "lora-export")
    adapters, size = {}, 0
    for name, ck in lora_dirs.items():
        lm = PeftModel.from_pretrained(copy.deepcopy(subject.model), str(ck)).base_model.model
        params = dict(lm.named_parameters())
        values = {}
        for tname, info in man.tensors.items():
            w = params[tname].detach().numpy()
            for p in info.placements["onnxruntime"]:
                values[p.name] = w.T if p.layout == "transpose2d" else w
        path = work / f"{name}.onnx_adapter"
        write_onnx_adapter(path, values)
        size = path.stat().st_size
        adapters[name] = ort.LoraAdapter()
        adapters[name].Load(str(path))
    # ORT's adapters override "overridable initializers": graph inputs that also have an initializer (the
    # defaults here are LoRA checkpoint `first`, read from weights.safetensors as external data)
    import onnx

    proto = onnx.load(str(work / "lora-export" / "model_prepacked.onnx"), load_external_data=False)
    for init in proto.graph.initializer:
        if init.name in {p.name for _, p in man.placements("onnxruntime")}:
            proto.graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    onnx.save_model(proto, str(work / "lora-export" / "model_overridable.onnx"))
    opts = session_options(threads)
    with_inputs = ort.InferenceSession(str(work / "lora-export" / "model_overridable.onnx"), opts,
                                       providers=["CPUExecutionProvider"])
    return _prepacked_base_session(work / "lora-export", threads), with_inputs, adapters, size


def _prepacked_program(base_dir: Path, threads: int):
    """model_prepacked.pte as it was exported: XNNPACK packs every weight at load (ExecuTorch's prepacked base)."""
    from shira_runtime.backends.executorch import PatchableProgram

    return PatchableProgram((base_dir / "model_prepacked.pte").read_bytes(), "model_prepacked.pte", threads)


def bench_model(name: str, work: Path, repeats: int, threads: int, log=print) -> dict:
    """Every way to switch and run one small model, measured side by side in this process.

    Long on purpose: one measurement script read top to bottom, whose steps share the sessions they measure and
    must run in this order (each engine warmed, then the rounds interleaved); split, its state would travel
    through a dozen arguments."""
    import onnxruntime as ort
    from peft import PeftModel
    from shira_runtime import ShiraSession

    torch.set_num_threads(threads)
    subject = resolve(name)
    base_dir = work / name / "base"
    export_model(subject, base_dir, log=lambda *a: None)
    lm = subject.family == "causal-lm"
    task = "upper" if lm else "sepia"
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
    sessions = {b: ShiraSession(base_dir, backend=b, threads=threads, mode="patchable") for b in ("onnxruntime", "executorch")}
    for b, s in sessions.items():
        for k, p in blobs.items():
            s.load(p, name=k)
        flip = iter(["shira-a", "shira-b"] * (repeats + 10))
        res["switch"][f"shira_{b}"] = stats(sample(lambda s=s: s.switch(next(flip)), repeats))
        if b == "onnxruntime":  # the patch kernel alone, on the same buffers: what the session adds is the rest
            terms = {k: {buf: [(i, d, 1.0)] for buf, (i, d) in s._decoded_for(k).mapped.items()} for k in ("shira-a", "shira-b")}
            flip = iter(["shira-a", "shira-b"] * (repeats + 10))
            res["switch"]["patch_kernel_onnxruntime"] = stats(sample(
                lambda s=s: s.patcher.commit(s.patcher.plan(terms[next(flip)])), repeats))
            s.switch("shira-a")
        # fusing k adapters (equal scales), each sample starting from a single other adapter
        for k in range(2, len(shira_keys) + 1):
            mix = {a: 1.0 / k for a in shira_keys[:k]}
            res["fusion"][f"shira_{b}_{k}"] = stats(sample(lambda s=s, mix=mix: s.fuse(mix), repeats,
                                                           setup=lambda s=s: s.switch("shira-d")))
    lora = PeftModel.from_pretrained(copy.deepcopy(subject.model), str(ck["lora-a"]), adapter_name="a")
    lora.load_adapter(str(ck["lora-b"]), adapter_name="b")
    res["switch"]["peft_lora_unmerge_merge"] = stats(sample(peft_switcher(lora), repeats))
    holder = {}
    res["switch"]["peft_lora_merge_and_unload"] = stats(sample(
        lambda: holder["m"].merge_and_unload(), repeats,
        setup=lambda: holder.__setitem__("m", PeftModel.from_pretrained(copy.deepcopy(subject.model),
                                                                         str(ck["lora-a"])))))
    shira = PeftModel.from_pretrained(copy.deepcopy(subject.model), str(ck["shira-a"]), adapter_name="a")
    shira.load_adapter(str(ck["shira-b"]), adapter_name="b")
    res["switch"]["peft_shira_unmerge_merge"] = stats(sample(peft_switcher(shira), repeats))
    res["switch"]["ort_session_recreate"] = stats(sample(  # a bare session: no second, prepacked engine
        lambda: ShiraSession(base_dir, threads=threads, mode="patchable"), max(3, repeats // 4)))
    res["switch"]["et_method_reload"] = stats(sample(sessions["executorch"].engine.program.reload, max(3, repeats // 4)))

    # ---- two-phase switching: visible switch, time to prepacked speed, extra memory ----
    two = {b: ShiraSession(base_dir, backend=b, threads=threads, mode="two-phase") for b in sessions}
    res["two_phase"] = {}
    for b, s in two.items():
        for k in ("shira-a", "shira-b"):
            s.load(blobs[k], name=k)
        flip = iter(["shira-a", "shira-b"] * (repeats + 10))
        n0 = len(s.rebuilder.history)
        visible = sample(lambda s=s: s.switch(next(flip)), repeats, setup=lambda s=s: s.wait_full_speed(60))
        s.wait_full_speed(60)
        full = [h["to_full_speed_s"] for h in s.rebuilder.history[n0:] if h["to_full_speed_s"] is not None]
        res["two_phase"][b] = {"visible_switch": stats(visible), "to_full_speed": stats(full),
                               "extra_bytes": s.rebuilder.history[-1]["extra_bytes"]}
        s.switch("shira-a")
        s.wait_full_speed(60)
    res["auto_mode"] = {}
    for b in sessions:  # what mode="auto" picks here, and why
        with ShiraSession(base_dir, backend=b, threads=threads, cache_dir=work / "bake-cache") as auto:
            res["auto_mode"][b] = {"mode": auto.mode, "reason": auto.mode_reason, "calibration": auto.calibration}

    # ---- in place (ONNX Runtime): one engine on its own packed weights, patched where they lie ----
    inplace = ShiraSession(base_dir, threads=threads, mode="in-place", cache_dir=work / "bake-cache")
    for k in ("shira-a", "shira-b"):
        inplace.load(blobs[k], name=k)
    flip = iter(["shira-a", "shira-b"] * (repeats + 10))
    res["switch"]["shira_inplace_onnxruntime"] = stats(sample(lambda: inplace.switch(next(flip)), repeats))
    inplace.switch("shira-a")

    # ---- inference after a switch ----
    const = _prepacked_base_session(base_dir, threads)
    static = _prepacked_program(base_dir, threads)
    lora_const, lora_inputs, ort_adapters, res["size"]["onnx_adapter"] = _lora_sessions(
        {"a": ck["lora-a"], "b": ck["lora-b"]}, subject, work / name, threads)
    et_dynamic = manifest_format.load(base_dir).files_of("executorch").dynamic_shapes
    run_opts = ort.RunOptions()
    run_opts.add_active_adapter(ort_adapters["a"])
    for s in sessions.values():
        s.switch("shira-a")
    shapes = {"decode": (1, 1), "prefill": (1, 128)} if lm else {"64x64": 64, "256x256": 256}
    for label, shp in shapes.items():
        if lm:
            x = {"input_ids": np.arange(shp[1], dtype=np.int64)[None] % 256}
        else:
            x = {"image": np.random.default_rng(0).random((1, 3, shp, shp), dtype=np.float32)}
        fns = {"prepacked_base_ort": lambda: const.run(None, x),
               "shira_patchable_ort": lambda: sessions["onnxruntime"].run(x),
               "shira_two_phase_ort": lambda: two["onnxruntime"].run(x),
               "shira_inplace_ort": lambda: inplace.run(x),
               "lora_unfused_ort": lambda: lora_const.run(None, x),
               "ort_lora_adapter": lambda: lora_inputs.run(None, x, run_opts)}
        if et_dynamic or shp == 64:  # a static .pte only takes the sample's shape (64x64 for style-net)
            fns.update({  # numpy in and out for the plain program too, as the session does
                "prepacked_base_et": lambda: [o.numpy().copy() for o in
                                                static.execute([torch.from_numpy(v) for v in x.values()])],
                "shira_patchable_et": lambda: sessions["executorch"].run(x),
                "shira_two_phase_et": lambda: two["executorch"].run(x)})
        row = {k: stats(v) for k, v in sample_rounds(fns, repeats).items()}
        res["inference"][label] = row
    for s in (*two.values(), inplace):
        s.close()
    if lm:
        res["generation"] = _decode_with_cache(subject, base_dir, work / name, blobs["shira-a"], repeats, threads)

    # ---- size ----
    def du(p: Path) -> int:
        return sum(f.stat().st_size for f in p.iterdir() if f.is_file() and f.suffix in (".json", ".safetensors")
                   and f.name != "train_report.json")

    res["size"].update({"blob_f16": blobs["shira-a"].stat().st_size, "peft_shira": du(ck["shira-a"]),
                        "peft_lora": du(ck["lora-a"])})
    log(f"  {name}: SHiRA switch {res['switch']['shira_onnxruntime']['median_ms']:.2f} ms (ORT), "
        f"LoRA unmerge+merge {res['switch']['peft_lora_unmerge_merge']['median_ms']:.2f} ms, session re-create "
        f"{res['switch']['ort_session_recreate']['median_ms']:.1f} ms")
    return res


def _decode_with_cache(subject, base_dir: Path, work: Path, blob: Path, repeats: int, threads: int,
                       context: int = 128) -> dict:
    """One new token at `context` tokens, with an adapter switched in: the base exported with its KV cache
    (`--kv-cache`, one step feeding the cache back) against the plain export, which recomputes the whole
    prefix for every token (what generating on `input_ids -> logits` costs)."""
    from shira_runtime import ShiraSession

    from ..export.kv_cache import with_kv_cache

    kv_dir = work / "base-kv"
    export_model(with_kv_cache(subject), kv_dir, formats=("onnx",), log=lambda *a: None)
    out = {"context": context}
    with ShiraSession(kv_dir, threads=threads, mode="patchable") as kv, \
            ShiraSession(base_dir, threads=threads, mode="patchable") as plain:
        for s in (kv, plain):
            s.load(blob, name="a")
            s.switch("a")
        gen = kv.manifest.generation
        past = {gen["past"].format(layer=i, kv=k): np.random.default_rng(i).standard_normal(
            (1, gen["kv_heads"], context, gen["head_dim"])).astype(np.float32)
            for i in range(gen["layers"]) for k in ("key", "value")}
        step = {"input_ids": np.array([[7]], dtype=np.int64), **past}
        full = {"input_ids": (np.arange(context, dtype=np.int64)[None] % 256)}
        rows = sample_rounds({"with_kv_cache": lambda: kv.run(step), "recompute_prefix": lambda: plain.run(full)},
                             repeats)
    out.update({k: stats(v) for k, v in rows.items()})
    return out


def run_bench(out_dir, quick: bool = True, threads: int = 2, log=print) -> dict:
    import tempfile

    from .scaling import run_scaling

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    repeats = 20 if quick else 60
    t0 = time.time()
    from tqdm import tqdm

    from .scaling import QUICK_SIZES, SIZES

    names = ("tiny-llama", "style-net")
    bar = tqdm(total=len(names) + 2 * len(QUICK_SIZES if quick else SIZES), desc="shira-bench", unit="step",
               disable=None)  # disable=None: a bar on a terminal, nothing in a log file

    def step_log(msg):
        tqdm.write(msg) if not bar.disable else log(msg)
        if msg.startswith("  "):  # one line per finished model or model size
            bar.update()

    with tempfile.TemporaryDirectory() as tmp:
        models = [bench_model(n, Path(tmp), repeats, threads, step_log) for n in names]
    scaling = run_scaling(quick, 5 if quick else 7, threads, step_log)
    bar.close()
    report = {"command": f"shira-bench {'--quick ' if quick else ''}--out {out_dir} --threads {threads}",
              "machine": machine(), "threads": threads, "repeats": repeats, "quick": quick, "models": models,
              "scaling": scaling, "seconds": time.time() - t0}
    write_text(out_dir / "bench.json", json.dumps(report, indent=1))
    write_text(out_dir / "bench.md", markdown(report))
    plot(report, out_dir / "bench.png")
    log(f"bench -> {out_dir} ({report['seconds']:.0f}s)")
    return report
