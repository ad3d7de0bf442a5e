"""What the benches' child processes measure with, and nothing heavier: RSS and its peak from /proc, the median
of timed calls, the constant-weight ONNX Runtime session, named workloads, and the first-load bake in its own
process. No torch here: a child's RSS must be its engines' alone."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from shira_runtime.backends.onnxruntime import session_options


def inputs_for(base: Path) -> dict[str, dict[str, np.ndarray]]:
    """Named workloads: decode (seq 1) and prefill (seq 128) for an LM, one 224x224 image for a ViT."""
    sample = np.load(base / "sample.npz")
    names = [k.removeprefix("input:") for k in sample.files if k.startswith("input:")]
    if "pixel_values" in names:
        x = np.random.default_rng(0).normal(size=(1, 3, 224, 224)).astype(np.float32)
        return {"image": {"pixel_values": x}}
    out = {}
    for label, seq in (("decode", 1), ("prefill128", 128)):
        feed = {}
        for n in names:
            dt = sample[f"input:{n}"].dtype
            if n == "input_ids":
                feed[n] = (np.arange(seq, dtype=np.int64) % 1000 + 5).reshape(1, seq).astype(dt)
            elif n == "attention_mask":
                feed[n] = np.ones((1, seq), dtype=dt)
            elif n == "position_ids":
                feed[n] = np.arange(seq, dtype=dt).reshape(1, seq)
            else:
                raise ValueError(f"{base}: do not know how to feed input {n!r}")
        out[label] = feed
    return out


def rss_status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    except OSError:
        pass


def median_ms(fn, n: int) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return float(np.median(times))


def constant_session(base: Path, threads: int, weights: bytes | None = None):
    import onnxruntime as ort

    opts = session_options(threads)
    if weights is not None:
        opts.add_external_initializers_from_files_in_memory(["weights.safetensors"], [weights], [len(weights)])
    return ort.InferenceSession(str(base / "model_prepacked.onnx"), opts, providers=["CPUExecutionProvider"])


def bake_once(base: Path, cache: Path, threads: int) -> dict:
    """The first load on a device: the bake, in its own process, timed, with its peak RSS."""
    import shutil

    from shira_format import manifest as manifest_mod
    from shira_runtime.inplace.cache import bake_key

    shutil.rmtree(cache, ignore_errors=True)
    out = cache / f"{base.name}-{bake_key(manifest_mod.load(base))}"  # where the session looks for it
    out.mkdir(parents=True)
    t = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-f", "%M", sys.executable, "-m", "shira_runtime.inplace.bake", str(base), str(out),
                        str(threads)], capture_output=True, text=True)
    if p.returncode != 0:
        return {"error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"exit {p.returncode}"}
    peak_kb = int(p.stderr.strip().splitlines()[-1])
    return {"bake_s": time.perf_counter() - t, "bake_peak_rss": peak_kb * 1024,
            "route": "by value" if "by their values" in p.stderr else "coded passes",
            "steps": [ln.strip() for ln in p.stderr.strip().splitlines()[:-1]]}
