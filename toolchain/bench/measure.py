"""How the bench measures: repeated samples with warm-up, interleaved rounds, summary statistics, the machine,
and a PEFT LoRA switcher as the baseline. Shared by run.py and scaling.py."""
from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from ..export import tool_versions


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


def sample_rounds(fns: dict, repeats: int, rounds: int = 4, warmup: int = 3) -> dict[str, list[float]]:
    """Seconds per call of each fn, in `rounds` rounds; in each round every fn runs a warm block of
    repeats/rounds calls. Blocks keep each engine's thread pool warm (calling A, B, A, B one by one made every
    engine 2-3x slower: each one's spinning threads steal the 2 cores from the next, hence also the pause
    before each block); rounds spread slow drifts
    of the machine over every method alike, which is what a ratio between them needs."""
    out = {k: [] for k in fns}
    per = max(1, -(-repeats // rounds))
    for _ in range(rounds):
        for k, fn in fns.items():
            time.sleep(0.05)  # let the previous engine's spinning worker threads go idle first
            out[k] += sample(fn, per, warmup=warmup)
    return out


def stats(samples: list[float]) -> dict:
    ms = [s * 1e3 for s in samples]
    return {"median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms), "n": len(ms), "samples_ms": ms}


def peft_switcher(model, names=("a", "b")):
    """A PEFT model with adapters `names` loaded, the first merged -> a callable that switches to the other
    one the way PEFT users do: unmerge_adapter, set_adapter, merge_adapter."""
    state = {"cur": names[0]}
    model.set_adapter(names[0])
    model.merge_adapter()

    def switch():
        model.unmerge_adapter()
        state["cur"] = names[1] if state["cur"] == names[0] else names[0]
        model.set_adapter(state["cur"])
        model.merge_adapter()

    return switch


def psnr(a, b) -> float:
    """PSNR in dB of image `a` (clipped to [0, 1]) against reference `b`; numpy arrays or torch tensors."""
    a, b = (np.asarray(x.detach() if hasattr(x, "detach") else x, dtype=np.float64) for x in (a, b))
    return float(10 * np.log10(1.0 / np.mean((np.clip(a, 0, 1) - b) ** 2)))


def child_error(p) -> str:
    """Why a bench's child process failed, in one line: its last line on stderr, or the signal that killed it (a
    SIGKILL with nothing written is most often the kernel's out-of-memory killer)."""
    import signal

    last = (p.stderr.strip().splitlines() or [""])[-1]
    if last:
        return last
    if p.returncode < 0:
        name = signal.Signals(-p.returncode).name
        return f"killed by {name}" + (" (out of memory, most likely: see dmesg)" if name == "SIGKILL" else "")
    return f"exit code {p.returncode}, nothing on stderr"
