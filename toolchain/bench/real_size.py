"""Switching at real size: Llama- and ViT-shaped models of 0.09-0.55B parameters through the real ShiraSession.

Why: a 0.4M-parameter model hides what matters on a device. At 168M a session rebuilds in ~0.7 s, two engines
double the memory, and a run landing during a background rebuild is 20-40x slower. Each model is built from a
transformers config (random weights), saved, exported with `shira-export`'s code (ONNX), and given two
adapters touching 1% of every patchable weight at random positions. Then every mode runs in its own child
process (so RSS is that mode's alone), in one bench run:
  constant    a plain ORT session of model_prepacked.onnx: the base, every weight prepacked (the reference)
  in-place    ShiraSession, mode="in-place": ORT's packed weights baked once per CPU, patched where ORT
              maps them (docs/INPLACE.md)
  two-phase   ShiraSession, mode="two-phase": patchable engine + a prepacked engine rebuilt per switch
  patchable   ShiraSession, mode="patchable": weights as graph inputs, never rebuilt
  recreate    patch the weights, then create a fresh constant session from them (the rebuild-per-switch way)
  peft-lora   PyTorch + PEFT LoRA r=8 on every Linear but the head (about SHiRA's trainable count): unmerge+merge
  onnx-adapter  the same LoRA left unfused in the ORT graph, switched with ORT's own adapters (`.onnx_adapter`,
              `RunOptions.add_active_adapter`): no switch work, every run pays for the LoRA branches
Per mode: load time, RSS at rest, peak RSS over a switch and the runs after it (VmHWM reset just before),
the visible switch, the first run after it (click-to-result = both), runs at steady state, time to full speed.
The in-place row also reports the first-load bake (time and the child's peak RSS) and the bandwidth floor of
its switch: every touched 64-byte line read and written once at the copy bandwidth measured in this run.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from shira_runtime.backends.onnxruntime import session_options

from .probes import bake_once, constant_session, inputs_for, median_ms, reset_peak, rss_status
from .subjects import MODELS, write_onnx_adapter, write_random_adapters
from .real_size_report import markdown, plot

QUICK_MODELS = ("llama-168M",)
MODES = ("constant", "in-place", "two-phase", "patchable", "recreate", "peft-lora", "onnx-adapter")
LORA = dict(r=8, target_modules="all-linear", init_lora_weights=False)  # random B: merges do real work


def build(name: str, work: Path, log=print, spec: tuple | None = None) -> Path:
    """Save the model, export it (ONNX), write adapters a.shira and b.shira; -> the base directory."""
    import torch
    from shira_format import manifest as manifest_mod

    from ..export import export_model
    from ..model_source import resolve

    base = work / name / "base"
    if (base / "manifest.json").exists() and (work / name / "b.shira").exists():
        if not (work / name / "b.onnx_adapter").exists():
            build_onnx_adapters(work / name)
        return base
    family, cfg = spec or MODELS[name]
    torch.manual_seed(0)
    if family == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        model = LlamaForCausalLM(LlamaConfig(max_position_embeddings=2048, **cfg))
    else:
        from transformers import ViTConfig, ViTForImageClassification

        model = ViTForImageClassification(ViTConfig(**cfg))
    src = work / name / "hf"
    model.eval().save_pretrained(str(src))
    del model
    t0 = time.perf_counter()
    export_model(resolve(str(src)), base, formats=("onnx",), log=lambda *a: None)
    log(f"  {name}: exported in {time.perf_counter() - t0:.0f}s")
    write_random_adapters(manifest_mod.load(base), {tag: work / name / f"{tag}.shira" for tag in ("a", "b")})
    t0 = time.perf_counter()
    build_onnx_adapters(work / name)
    log(f"  {name}: LoRA export and .onnx_adapter files in {time.perf_counter() - t0:.0f}s")
    return base


def build_onnx_adapters(work: Path) -> None:
    """The model with LoRA branches in the graph, their weights as overridable initializers (graph inputs with
    a default), and two `.onnx_adapter` files of random LoRA weights: ORT's own way to switch LoRA adapters."""
    import onnx
    from peft import LoraConfig, get_peft_model
    from shira_format import manifest as manifest_mod

    from ..export import export_model
    from ..model_source import ExportSubject, resolve

    subject = resolve(str(work / "hf"))
    inner = get_peft_model(subject.model, LoraConfig(**LORA)).base_model.model.eval()
    sub = ExportSubject(subject.source, inner, subject.example_inputs, subject.output_names,
                        subject.dynamic_axes, subject.family)
    out = work / "lora-export"
    export_model(sub, out, targets=r"lora_[AB]\.", formats=("onnx",), log=lambda *a: None)
    man = manifest_mod.load(out)
    rng = np.random.default_rng(1)
    inputs = {}
    for tag in ("a", "b"):
        values = {}
        for info in man.tensors.values():
            for p in info.placements["onnxruntime"]:
                inputs[p.name] = p.shape
                values[p.name] = rng.normal(0, 0.02, p.shape).astype(np.float32)
        write_onnx_adapter(work / f"{tag}.onnx_adapter", values)
    proto = onnx.load(str(out / "model_prepacked.onnx"), load_external_data=False)
    for init in proto.graph.initializer:
        if init.name in inputs:
            proto.graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    onnx.save_model(proto, str(out / "model_overridable.onnx"))


# ---- one mode, in a child process -------------------------------------------------------------------------------
def run_mode(mode: str, base: Path, cache: Path, threads: int, repeats: int) -> dict:
    """Measure one mode in this process (called in a fresh child).

    Long on purpose: one measurement script per mode, load -> switch -> runs -> RSS, with the mode's own steps
    inline where they differ, so that every number in a row comes from the same session in the same order."""

    work = base.parent
    loads = inputs_for(base)
    first = next(iter(loads))
    res: dict = {"mode": mode, "rss_start": rss_status("VmRSS")}
    if mode == "peft-lora":
        return _peft_lora(work, loads, threads, repeats, res)
    if mode == "onnx-adapter":
        return _onnx_adapter(work, loads, threads, repeats, res)
    t0 = time.perf_counter()
    if mode in ("constant", "recreate"):
        sess = constant_session(base, threads)
        run = lambda feed: sess.run(None, feed)  # noqa: E731
    else:
        sess = _session(base, threads, mode, cache)
        res["session_mode"] = sess.mode
        res["route"] = getattr(sess.engine, "route", None)
        if mode == "two-phase":
            sess.wait_full_speed(600)
        run = sess.run
    res["load_s"] = time.perf_counter() - t0
    for feed in loads.values():
        for _ in range(2):
            run(feed)
    res["base_ms"] = {k: median_ms(lambda f=f: run(f), repeats if k != "prefill128" else max(3, repeats // 3))
                      for k, f in loads.items()}
    res["rss_rest"] = rss_status("VmRSS")

    reset_peak()
    if mode == "recreate":  # a switch = patched weights + a new constant session (the old one dropped first)
        from shira_format.adapter import read_adapter
        from shira_format import manifest as manifest_mod
        from shira_format.safetensors_file import read_file

        man = manifest_mod.load(base)
        st = read_file(base / "weights.safetensors", writable=True)
        adapter = read_adapter(work / "a.shira", man)

        def switch():
            nonlocal sess, run
            for t in adapter.tensors.values():
                info = man.tensors[t.target]
                for p in info.placements["onnxruntime"]:
                    idx, delta = p.patch_terms(t.indices, t.values, info.shape)
                    st.array(p.name).reshape(-1)[idx] += delta
            sess = None
            sess = constant_session(base, threads, bytes(st.buffer))
            run = lambda feed: sess.run(None, feed)  # noqa: E731
    elif mode == "constant":
        switch = None
    else:
        for tag in ("a", "b"):
            sess.load(work / f"{tag}.shira", name=tag)
        switch = lambda: sess.switch("a")  # noqa: E731
    if switch is not None:
        t = time.perf_counter()
        switch()
        res["switch_ms"] = (time.perf_counter() - t) * 1e3
        t = time.perf_counter()
        run(loads[first])
        res["first_run_ms"] = (time.perf_counter() - t) * 1e3
        res["click_to_result_ms"] = res["switch_ms"] + res["first_run_ms"]
        if mode == "two-phase":
            sess.wait_full_speed(600)
            res["to_full_speed_s"] = sess.rebuilder.history[-1]["to_full_speed_s"]
        res["after_ms"] = {k: median_ms(lambda f=f: run(f), repeats if k != "prefill128" else max(3, repeats // 3))
                           for k, f in loads.items()}
    res["rss_peak_switch"] = rss_status("VmHWM")
    res["rss_after"] = rss_status("VmRSS")
    if mode != "constant":
        _side_by_side(run, base, loads, threads, repeats, res)
    if mode in ("in-place", "two-phase", "patchable"):  # switches back and forth, at steady state
        times = []
        for i in range(max(4, repeats)):
            t = time.perf_counter()
            sess.switch("b" if i % 2 == 0 else "a")
            times.append((time.perf_counter() - t) * 1e3)
        res["switch_median_ms"] = float(np.median(times))
        if mode == "two-phase":
            sess.wait_full_speed(600)
        if mode == "in-place":
            res["touched_lines"] = _touched_lines(sess)
            # the two halves of a switch: restoring a's entries (a reset from a) and writing b's (from the base)
            restore, write = [], []
            for _ in range(max(4, repeats)):
                t = time.perf_counter()
                sess.reset()
                restore.append((time.perf_counter() - t) * 1e3)
                t = time.perf_counter()
                sess.switch("a")
                write.append((time.perf_counter() - t) * 1e3)
            res["restore_median_ms"], res["write_median_ms"] = float(np.median(restore)), float(np.median(write))
        sess.reset()
        sess.close()
    return res


def _session(base: Path, threads: int, mode: str, cache: Path):
    """The session as `mode` opens it on a device. In place: found in the live session's memory where it can
    be (a first open: the proof included in load_s), else from the bake made beforehand (bake_once)."""
    from shira_format.errors import ShiraError
    from shira_runtime import ShiraSession

    if mode == "in-place":
        try:
            return ShiraSession(base, threads=threads, mode=mode, cache_dir=cache, bake="never")
        except ShiraError:
            pass
    return ShiraSession(base, threads=threads, mode=mode, cache_dir=cache)


MANY = (1, 10, 100)  # adapters loaded at once (many_adapters)


def many_adapters(base: Path, cache: Path, threads: int, repeats: int) -> dict:
    """An app's catalogue: 1, 10 and 100 adapters loaded in one in-place session. Each load reads its file
    anew (a.shira and b.shira in turn, under new names), so every loaded adapter holds memory of its own. Per
    count: RSS; the switch back and forth between two adapters still decoded (warm); and the switch to one
    decoded again from its blob (cold: adapters visited in a cycle longer than the session's plan cache)."""
    from shira_runtime.session import PLAN_CACHE

    work = base.parent
    sess = _session(base, threads, "in-place", cache)
    res = {"blob_bytes": (work / "a.shira").stat().st_size, "plan_cache": PLAN_CACHE, "counts": [],
           "route": sess.engine.route}
    loaded: list[str] = []
    for n in MANY:
        while len(loaded) < n:
            name = f"{'ab'[len(loaded) % 2]}{len(loaded)}"
            sess.load(work / f"{name[0]}.shira", name=name)
            loaded.append(name)
        row = {"n": n}
        if n > PLAN_CACHE:  # a cycle through PLAN_CACHE + 1 or more adapters: every switch decodes its blob
            cold = []
            for i in range(max(4, repeats // 2)):
                t = time.perf_counter()
                sess.switch(loaded[i % n])
                cold.append((time.perf_counter() - t) * 1e3)
            row["cold_switch_ms"] = float(np.median(cold))
        pair = loaded[:2] if n > 1 else loaded[:1]
        for name in pair:
            sess.switch(name)
        warm = []
        for i in range(max(4, repeats)):
            t = time.perf_counter()
            sess.switch(pair[i % len(pair)])
            warm.append((time.perf_counter() - t) * 1e3)
        row["warm_switch_ms"] = float(np.median(warm))
        row["rss"] = rss_status("VmRSS")
        res["counts"].append(row)
    sess.reset()
    sess.close()
    first, last = res["counts"][-2], res["counts"][-1]  # both with a full plan cache
    res["rss_per_adapter"] = (last["rss"] - first["rss"]) / (last["n"] - first["n"])
    return res


def _peft_lora(work: Path, loads: dict, threads: int, repeats: int, res: dict) -> dict:
    """The torch way to switch: two LoRA adapters on the saved model, unmerge one and merge the other."""
    import torch
    from peft import LoraConfig, get_peft_model

    from .measure import peft_switcher

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    from transformers import AutoModel, AutoModelForCausalLM

    src = str(work / "hf")
    try:
        model = AutoModelForCausalLM.from_pretrained(src)
    except ValueError:  # not a causal LM (the ViT)
        model = AutoModel.from_pretrained(src)
    cfg = LoraConfig(**LORA)
    model = get_peft_model(model.eval(), cfg, adapter_name="a")
    model.add_adapter("b", cfg)
    res["load_s"] = time.perf_counter() - t0
    switch = peft_switcher(model)
    feed = {k: torch.from_numpy(v) for k, v in loads[next(iter(loads))].items()}
    with torch.no_grad():
        model(**feed)
        res["base_ms"] = {next(iter(loads)): median_ms(lambda: model(**feed), repeats)}
        res["rss_rest"] = rss_status("VmRSS")
        reset_peak()
        times = []
        for _ in range(max(4, repeats)):
            t = time.perf_counter()
            switch()
            times.append((time.perf_counter() - t) * 1e3)
        t = time.perf_counter()
        model(**feed)
        res["first_run_ms"] = (time.perf_counter() - t) * 1e3
    res["switch_ms"] = times[0]
    res["switch_median_ms"] = float(np.median(times))
    res["click_to_result_ms"] = res["switch_median_ms"] + res["first_run_ms"]
    res["trainable"] = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) // 2
    res["rss_peak_switch"] = rss_status("VmHWM")
    res["rss_after"] = rss_status("VmRSS")
    return res


def _onnx_adapter(work: Path, loads: dict, threads: int, repeats: int, res: dict) -> dict:
    """A switch = another RunOptions with the other adapter active (ORT copies nothing until the run)."""
    import onnxruntime as ort

    t0 = time.perf_counter()
    opts = session_options(threads)
    sess = ort.InferenceSession(str(work / "lora-export" / "model_overridable.onnx"), opts,
                                providers=["CPUExecutionProvider"])
    adapters = {}
    for tag in ("a", "b"):
        adapters[tag] = ort.LoraAdapter()
        adapters[tag].Load(str(work / f"{tag}.onnx_adapter"))
    res["load_s"] = time.perf_counter() - t0
    active = {"opts": ort.RunOptions()}
    active["opts"].add_active_adapter(adapters["a"])

    def run(feed):
        return sess.run(None, feed, active["opts"])

    def switch(tag):
        o = ort.RunOptions()
        o.add_active_adapter(adapters[tag])
        active["opts"] = o

    for feed in loads.values():
        for _ in range(2):
            run(feed)
    first = next(iter(loads))
    res["base_ms"] = {k: median_ms(lambda f=f: run(f), repeats if k != "prefill128" else max(3, repeats // 3))
                      for k, f in loads.items()}
    res["rss_rest"] = rss_status("VmRSS")
    reset_peak()
    t = time.perf_counter()
    switch("b")
    res["switch_ms"] = (time.perf_counter() - t) * 1e3
    t = time.perf_counter()
    run(loads[first])
    res["first_run_ms"] = (time.perf_counter() - t) * 1e3
    res["click_to_result_ms"] = res["switch_ms"] + res["first_run_ms"]
    res["after_ms"] = {k: median_ms(lambda f=f: run(f), repeats if k != "prefill128" else max(3, repeats // 3))
                       for k, f in loads.items()}
    times = []
    for i in range(max(4, repeats)):
        t = time.perf_counter()
        switch("a" if i % 2 == 0 else "b")
        times.append((time.perf_counter() - t) * 1e3)
    res["switch_median_ms"] = float(np.median(times))
    res["rss_peak_switch"] = rss_status("VmHWM")
    res["rss_after"] = rss_status("VmRSS")
    _side_by_side(run, work / "base", loads, threads, repeats, res)
    return res


def _side_by_side(run, base: Path, loads: dict, threads: int, repeats: int, res: dict) -> None:
    """Runs of this mode against the constant-weight session, alternating in this one process (after the RSS
    readings): the speed ratio without the noise between processes."""
    const = constant_session(base, threads)
    res["vs_constant"] = {}
    for k, feed in loads.items():
        n = max(2, (repeats if k != "prefill128" else max(3, repeats // 3)) // 2)
        mine, theirs = [], []
        for _ in range(4):
            mine.append(median_ms(lambda: run(feed), n))
            theirs.append(median_ms(lambda: const.run(None, feed), n))
        res["vs_constant"][k] = float(np.median(mine) / np.median(theirs))


def _touched_lines(sess) -> int:
    """64-byte lines a switch a -> b reads and writes (a's entries restored, b's written) in ORT's packed copies."""
    lines = 0
    byte_of = {key: c.byte_of for cs in sess.engine.copies.values() for c in cs for key in c.keys}
    start = {key: c.offset for cs in sess.engine.copies.values() for c in cs for key in c.keys}  # file or address
    for key in sess.engine.buffers:
        offset = start[key]
        idx = [sess._decoded_for(t).mapped[key][0] for t in ("a", "b") if key in sess._decoded_for(t).mapped]
        if idx:
            lines += np.unique((offset + byte_of[key](np.concatenate(idx))) // 64).size
    return int(lines)


def bench_real_size(work: Path, quick: bool, threads: int, repeats: int, log=print, models: dict | None = None) -> dict:
    """`models`: name -> (family, config kwargs), instead of MODELS (the test uses a tiny one)."""
    from .measure import child_error
    from .scaling import copy_bandwidth

    specs = models or {n: MODELS[n] for n in (QUICK_MODELS if quick else MODELS)}
    out = {"copy_bandwidth_Bps": copy_bandwidth(), "models": {}}
    for name, spec in specs.items():
        log(f"real size: {name}")
        base = build(name, work, log, spec)
        cache = work / name / "cache"
        row = {"weights_bytes": (base / "weights.safetensors").stat().st_size, "modes": {}}
        if Path("/usr/bin/time").exists():
            row["bake"] = bake_once(base, cache, threads)
        for mode in MODES:
            p = subprocess.run([sys.executable, "-m", "shira_toolchain.bench.real_size", mode, str(base), str(cache),
                                str(threads), str(repeats)], capture_output=True, text=True, timeout=1800)
            if p.returncode != 0:
                row["modes"][mode] = {"error": child_error(p)}
                log(f"  {mode}: FAILED {row['modes'][mode]['error']}")
                continue
            row["modes"][mode] = json.loads(p.stdout.strip().splitlines()[-1])
            r = row["modes"][mode]
            log(f"  {mode}: load {r['load_s']:.2f}s rss {r['rss_rest'] / 2**20:.0f} MB "
                f"switch {r.get('switch_ms', 0):.1f} ms first run {r.get('first_run_ms', 0):.1f} ms")
        inplace = row["modes"].get("in-place", {})
        if "touched_lines" in inplace:
            row["bandwidth_floor_ms"] = inplace["touched_lines"] * 64 * 2 / out["copy_bandwidth_Bps"] * 1e3
        if name == next(iter(specs)):  # the catalogue: 1, 10, 100 adapters loaded (the first model only)
            p = subprocess.run([sys.executable, "-m", "shira_toolchain.bench.real_size", "many-adapters", str(base),
                                str(cache), str(threads), str(repeats)], capture_output=True, text=True, timeout=1800)
            row["many_adapters"] = (json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else
                                    {"error": child_error(p)})
            log(f"  many adapters: {row['many_adapters']}")
        out["models"][name] = row
    return out


def run_real_size(out_dir, quick: bool = False, threads: int = 2, repeats: int = 10, work=None, log=print) -> dict:
    """`shira-bench --real-size`: build, export and measure every model; real_size.{json,md,png} in out_dir."""
    import tempfile

    from shira_format.atomic import write_text

    from .measure import machine

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        report = bench_real_size(Path(work or tmp), quick, threads, repeats, log)
    report.update({"command": f"shira-bench --real-size {'--quick ' if quick else ''}--out {out_dir} "
                              f"--threads {threads}", "machine": machine(), "threads": threads,
                   "repeats": repeats, "seconds": time.time() - t0})
    write_text(out_dir / "real_size.json", json.dumps(report, indent=1))
    write_text(out_dir / "real_size.md", markdown(report))
    plot(report, out_dir / "real_size.png")
    log(f"real size -> {out_dir} ({report['seconds']:.0f}s)")
    return report


if __name__ == "__main__":  # a child: one mode, JSON on the last line of stdout
    mode, base, cache, threads, repeats = sys.argv[1:6]
    os.environ.setdefault("OMP_NUM_THREADS", threads)
    measure = many_adapters if mode == "many-adapters" else lambda *a: run_mode(mode, *a)
    print(json.dumps(measure(Path(base), Path(cache), int(threads), int(repeats))))
