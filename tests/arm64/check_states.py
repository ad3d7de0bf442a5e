"""Drive exported bases through the states a user reaches, as a device would, and save what the runtime answered.

    python check_states.py PLAN.json OUT_DIR

Runs with the device runtime alone (shira_runtime + numpy + onnxruntime; no torch, no toolchain): on the host,
and inside the emulated arm64 root (tests/arm64/make_root.sh) under each QEMU_CPU, so that tests/test_arm64.py
can compare the two. PLAN.json: {"cases": [{"name", "base", "blobs": [a, b], "inputs": npz, "bake"}]} ("bake": ShiraSession's, default
"always": the forms the bake learned are reported). Writes
OUT_DIR/<name>.npz (every state's outputs; in two-phase mode also each state on the packed engine,
"<state>@full") and OUT_DIR/report.json (mode, reason, bake forms, bit-exact reset, times: emulated times are
not phone times).
"""
from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from shira_runtime import ShiraSession
from shira_runtime.inplace.cache import hwcaps

def cpu() -> dict:
    """The CPU features the kernel (or qemu) hands this process: what ONNX Runtime's MLAS picks kernels by."""
    cap, cap2 = hwcaps()
    if platform.machine() != "aarch64":
        return {"hwcap": hex(cap)}
    return {"hwcap": hex(cap), "hwcap2": hex(cap2), "asimddp": bool(cap >> 20 & 1), "sve": bool(cap >> 22 & 1),
            "i8mm": bool(cap2 >> 13 & 1), "bf16": bool(cap2 >> 14 & 1)}


def forms(cache: Path) -> dict:
    """Per patchable placement, the packing form the bake learned for each live copy (docs/INPLACE.md)."""
    out = {}
    for bake in cache.glob("*/bake.json"):
        for name, entry in json.loads(bake.read_text())["placements"].items():
            out[name] = [f"{c['kind']}/{c.get('unit', 'float')}:" + (
                c["positions"] if isinstance(c["positions"], str) and not c["positions"].startswith("maps/")
                else "map" if isinstance(c["positions"], str) else c["positions"]["form"]) for c in entry["copies"]]
    return out


def drive(case: dict, out_dir: Path) -> dict:
    inputs = {k: v for k, v in np.load(case["inputs"]).items()}
    cache = out_dir / f"cache-{case['name']}"
    t0 = time.perf_counter()
    outs: dict[str, np.ndarray] = {}
    with ShiraSession(case["base"], threads=2, cache_dir=cache, bake=case.get("bake", "always")) as s:
        rep = {"mode": s.mode, "mode_reason": s.mode_reason, "open_s": round(time.perf_counter() - t0, 2),
               "route": getattr(s.engine, "route", None), "switch_ms": []}
        a, b = (s.load(p) for p in case["blobs"])
        before = {n: s.weight(n) for n in s.manifest.tensors}

        def state(label: str, change=None) -> None:
            if change is not None:
                t = time.perf_counter()
                change()
                rep["switch_ms"].append(round((time.perf_counter() - t) * 1e3, 2))
            for k, v in s.run(inputs).items():
                outs[f"{label}/{k}"] = v
            if s.rebuilder is not None:  # two-phase: the same state once the packed engine answers
                rep.setdefault("full_speed", []).append(s.wait_full_speed(300))
                for k, v in s.run(inputs).items():
                    outs[f"{label}@full/{k}"] = v

        state("base")
        state("switch", lambda: s.switch(a))
        state("fuse", lambda: s.fuse({a: 0.7, b: 0.3}))
        state("ties", lambda: s.fuse({a: 1.0, b: 1.0}, rule="ties"))
        state("other", lambda: s.switch(b))
        state("reset", s.reset)
        rep["reset_weights_exact"] = all(np.array_equal(s.weight(n).view(np.uint8), w.view(np.uint8))
                                         for n, w in before.items())
        rep["clamped_after_reset"] = int(s.clamped)
    rep["forms"] = forms(cache)
    np.savez(out_dir / f"{case['name']}.npz", **outs)
    return rep


def main(argv: list[str]) -> int:
    plan, out_dir = json.loads(Path(argv[0]).read_text()), Path(argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    import onnxruntime

    report = {"machine": platform.machine(), "onnxruntime": onnxruntime.__version__, "numpy": np.__version__,
              "cpu": cpu(), "cases": {}}
    for case in plan["cases"]:
        t = time.perf_counter()
        report["cases"][case["name"]] = drive(case, out_dir)
        print(f"{case['name']}: {report['cases'][case['name']]['mode']} in {time.perf_counter() - t:.1f}s",
              file=sys.stderr, flush=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
