"""`shira demo`: the whole pipeline on a built-in model, checked against PEFT at every step.

export the base once -> train two SHiRA adapters with PEFT -> pack them -> load the base ONCE in each runtime
-> switch, fuse, reset in place -> per step and per runtime (ONNX Runtime and ExecuTorch): switch time,
inference time, max |runtime - PEFT merged torch|.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
from shira_models import get_spec
from shira_toolchain.export import export_model
from shira_toolchain.model_source import resolve
from shira_toolchain.pack import pack_peft_shira
from shira_toolchain.train import peft_shira

BACKENDS = ("onnxruntime", "executorch")
# two small objectives per model family whose data ships with Python (train/tasks.py)
DEMO_TASKS = {"causal-lm": ("zen", "json-doc"), "image": ("invert", "warm")}


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

    tasks = list(DEMO_TASKS[spec.family])
    adapter_dirs = {}
    for i, task in enumerate(tasks):
        adapter_dirs[task] = out_dir / "peft" / task
        peft_shira.train_shira(spec.family, subject.model, task, adapter_dirs[task], spec.peft_targets, r=r,
                               steps=steps, seed=i, log=log)
    blobs = {}
    for task, d in adapter_dirs.items():
        rep = pack_peft_shira(d, base_dir, out_dir / f"{task}.shira")
        blobs[task] = rep.out
        log(f"  packed {task}: {rep.nnz:,} nonzeros ({rep.density:.2%} of the adapted weights), "
            f"{rep.blob_bytes:,} bytes (PEFT checkpoint: {rep.source_bytes:,} bytes)")

    sessions = {}
    for backend in BACKENDS:
        t = time.perf_counter()
        sessions[backend] = ShiraSession(base_dir, backend=backend, threads=threads)
        log(f"  loaded the base once in {backend} in {(time.perf_counter() - t) * 1e3:.0f} ms")
        for task, path in blobs.items():
            sessions[backend].load(path, name=task)
    base_weights = {b: s.live_buffers() for b, s in sessions.items()}

    sample = np.load(base_dir / "sample.npz")
    inputs = {k.removeprefix("input:"): sample[k] for k in sample.files if k.startswith("input:")}
    peft_model = peft_shira.load_peft(subject.model, adapter_dirs)
    a, b = tasks[0], tasks[1]
    plan = [("base", None), (f"switch {a}", {a: 1.0}), (f"switch {b}", {b: 1.0}), (f"switch {a}", {a: 1.0}),
            (f"fuse {a}+{b}", {a: 1.0, b: 1.0}), (f"fuse 0.7 {a} + 0.3 {b}", {a: 0.7, b: 0.3}), ("reset", {})]
    rows = []
    for label, scales in plan:
        ref = peft_shira.reference_output(spec.family, peft_shira.merged_model(peft_model, subject.model, scales or {}),
                                          inputs)
        row = {"step": label}
        for backend, sess in sessions.items():
            switch_ms = float("nan")
            if scales is not None:
                t = time.perf_counter()
                sess.fuse(scales)
                switch_ms = (time.perf_counter() - t) * 1e3
            out, infer_s = _time_run(sess, inputs, repeats)
            out = out[sess.output_names[0]]
            row[backend] = {"switch_ms": switch_ms, "inference_ms": infer_s * 1e3,
                            "max_abs_diff_vs_peft": float(np.max(np.abs(out - ref)))}
            row["patched_entries"] = sess.patcher.patched_entries
        rows.append(row)
    exact = {b: all(np.array_equal(v, base_weights[b][n]) for n, v in s.live_buffers().items())
             for b, s in sessions.items()}
    log("")
    log(format_table(rows))
    for b, ok in exact.items():
        log(f"after reset, every patchable {b} weight byte-equal to the base: {'yes' if ok else 'NO'}")
    log(f"total {time.perf_counter() - t0:.1f}s; artifacts in {out_dir}")
    if not all(exact.values()):
        raise RuntimeError("reset did not restore the base weights bit-exactly")
    return rows


def format_table(rows: list[dict]) -> str:
    """One line per step; per runtime: switch ms, inference ms, max |runtime - PEFT merged torch model|."""
    short = {"onnxruntime": "ORT", "executorch": "ET"}
    backends = [b for b in BACKENDS if b in rows[0]]
    head = f"{'step':<28}" + "".join(f"{short[b] + ' switch ms':>15}{short[b] + ' infer ms':>14}{short[b] + ' max|d PEFT|':>17}"
                                     for b in backends) + f"{'patched':>9}"
    lines = [head]
    for r in rows:
        line = f"{r['step']:<28}"
        for b in backends:
            c = r[b]
            sw = "-" if np.isnan(c["switch_ms"]) else f"{c['switch_ms']:.2f}"
            line += f"{sw:>15}{c['inference_ms']:>14.2f}{c['max_abs_diff_vs_peft']:>17.2e}"
        lines.append(line + f"{r['patched_entries']:>9}")
    return "\n".join(lines)
