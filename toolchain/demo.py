"""`shira demo`: the whole pipeline on a built-in model, checked against PEFT at every step.

export the base once -> train two SHiRA adapters with PEFT -> pack them -> load the base ONCE in the runtime
-> switch, fuse, reset in place -> per step: switch time, inference time, max |runtime - PEFT merged torch|.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from shira_models import get_spec

from . import peft_shira
from .export import export_model
from .model_source import resolve
from .pack import pack_peft_shira


def _time_run(sess, inputs, repeats: int) -> tuple[dict, float]:
    sess.run(inputs)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = sess.run(inputs)
        times.append(time.perf_counter() - t)
    return out, statistics.median(times)


def run_demo(model_name: str, out_dir, steps: int = 40, r: int = 1, threads: int | None = None,
             repeats: int = 10, log=print) -> list[dict]:
    from shira_runtime import ShiraSession

    out_dir = Path(out_dir)
    spec = get_spec(model_name)
    subject = resolve(model_name)
    base_dir = out_dir / "base"
    t0 = time.perf_counter()
    export_model(subject, base_dir, log=log)

    tasks = list(peft_shira.TASKS[model_name])
    adapter_dirs = {}
    for i, task in enumerate(tasks):
        adapter_dirs[task] = out_dir / "peft" / task
        peft_shira.train_shira(model_name, subject.model, task, adapter_dirs[task], spec.peft_targets, r=r,
                               steps=steps, seed=i, log=log)
    blobs = {}
    for task, d in adapter_dirs.items():
        rep = pack_peft_shira(d, base_dir, out_dir / f"{task}.shira")
        blobs[task] = rep.out
        log(f"  packed {task}: {rep.nnz:,} nonzeros ({rep.density:.2%} of the adapted weights), "
            f"{rep.blob_bytes:,} bytes (PEFT checkpoint: {rep.source_bytes:,} bytes)")

    t = time.perf_counter()
    sess = ShiraSession(base_dir, threads=threads)
    log(f"  loaded the base once in ONNX Runtime in {(time.perf_counter() - t) * 1e3:.0f} ms")
    for task, path in blobs.items():
        sess.load(path, name=task)
    base_weights = {n: b.copy() for n, b in sess.backend.buffers.items()}

    sample = np.load(base_dir / "sample.npz")
    inputs = {k.removeprefix("input:"): sample[k] for k in sample.files if k.startswith("input:")}
    peft_model = peft_shira.load_peft(subject.model, adapter_dirs)
    a, b = tasks[0], tasks[1]
    plan = [("base", None), (f"switch {a}", {a: 1.0}), (f"switch {b}", {b: 1.0}), (f"switch {a}", {a: 1.0}),
            (f"fuse {a}+{b}", {a: 1.0, b: 1.0}), (f"fuse 0.7 {a} + 0.3 {b}", {a: 0.7, b: 0.3}), ("reset", {})]
    base_out = None
    rows = []
    for label, scales in plan:
        switch_ms = float("nan")
        if scales is not None:
            t = time.perf_counter()
            sess.fuse(scales)
            switch_ms = (time.perf_counter() - t) * 1e3
        out, infer_s = _time_run(sess, inputs, repeats)
        out = out[sess.output_names[0]]
        base_out = out if base_out is None else base_out
        ref = peft_shira.reference_output(model_name, peft_shira.merged_model(peft_model, subject.model, scales or {}),
                                          inputs)
        rows.append({"step": label, "switch_ms": switch_ms, "inference_ms": infer_s * 1e3,
                     "max_abs_diff_vs_peft": float(np.max(np.abs(out - ref))),
                     "max_abs_change_vs_base": float(np.max(np.abs(out - base_out))),
                     "patched_entries": sess.patcher.patched_entries})
    exact = all(np.array_equal(sess.backend.buffers[n], w) for n, w in base_weights.items())
    log("")
    log(format_table(rows))
    log(f"\nafter reset, every patchable weight byte-equal to the base: {'yes' if exact else 'NO'}")
    log(f"total {time.perf_counter() - t0:.1f}s; artifacts in {out_dir}")
    if not exact:
        raise RuntimeError("reset did not restore the base weights bit-exactly")
    return rows


def format_table(rows: list[dict]) -> str:
    head = ("step", "switch ms", "inference ms", "max|rt-PEFT|", "max|out-base|", "patched")
    lines = [f"{head[0]:<28}{head[1]:>10}{head[2]:>14}{head[3]:>14}{head[4]:>15}{head[5]:>9}"]
    for r in rows:
        sw = "-" if np.isnan(r["switch_ms"]) else f"{r['switch_ms']:.2f}"
        lines.append(f"{r['step']:<28}{sw:>10}{r['inference_ms']:>14.2f}{r['max_abs_diff_vs_peft']:>14.2e}"
                     f"{r['max_abs_change_vs_base']:>15.2e}{r['patched_entries']:>9}")
    return "\n".join(lines)
