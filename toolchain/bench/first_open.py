"""The first open of a base on a device, at phone scale: how long until a ShiraSession patches in place, and
its peak memory, against a plain ONNX Runtime session of the same model.

Each measurement runs in its own process under /usr/bin/time (its peak RSS: the largest process of the tree, so
a bake's child counts), alternating plain / first open / later open `repeats` times; medians are reported. Opens
go through the product path (`ShiraSession(mode="in-place")`) with a fresh cache for a first open:
  - "live" (the default, `bake="auto"` without a bake on disk): ORT's packed copies found in the session's own
    memory, proven against a reference on the first open (inplace/live.py);
  - "baked" (`bake="always"`): the first open bakes (inplace/bake.py) and later opens map the file.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from statistics import median

from shira_format.atomic import write_text

from .measure import machine
from .subjects import MODELS

SHAPES = {**{k: v for k, v in MODELS.items() if v[0] == "llama"},
          # TinyLlama-1.1B's shape (random weights)
          "llama-1.1B": ("llama", dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                                       num_attention_heads=32, num_key_value_heads=4, vocab_size=32000))}
DEFAULT_MODELS = ("llama-0.55B", "llama-1.1B")

CHILD = r"""
import json, sys, time
what, base, cache, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
t = time.perf_counter()
if what == "plain":
    import onnxruntime as ort
    from shira_runtime.backends.onnxruntime import session_options
    s = ort.InferenceSession(base + "/model_prepacked.onnx", session_options(threads), providers=["CPUExecutionProvider"])
    out = {"s": time.perf_counter() - t}
else:
    from shira_runtime import ShiraSession
    s = ShiraSession(base, threads=threads, mode="in-place", cache_dir=cache, bake=what)
    out = {"s": time.perf_counter() - t, "route": s.engine.route}
    s.close()
print(json.dumps(out))
"""


def export_base(name: str, work: Path, log=print) -> Path:
    """The model saved with random weights and exported for ONNX Runtime; -> the base directory (kept)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ..export import export_model
    from ..model_source import resolve

    base = work / name / "base"
    if (base / "manifest.json").exists():
        return base
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(max_position_embeddings=2048, **SHAPES[name][1]))
    src = work / name / "hf"
    model.eval().save_pretrained(str(src))
    del model
    t0 = time.perf_counter()
    export_model(resolve(str(src)), base, formats=("onnx",), log=lambda *a: None)
    shutil.rmtree(src)
    log(f"  {name}: exported in {time.perf_counter() - t0:.0f}s")
    return base


def _measure(what: str, base: Path, cache: Path, threads: int) -> dict:
    p = subprocess.run(["/usr/bin/time", "-f", "%M", sys.executable, "-c", CHILD, what, str(base), str(cache),
                        str(threads)], capture_output=True, text=True)
    lines = p.stderr.strip().splitlines()
    if p.returncode != 0:
        return {"error": next((ln for ln in reversed(lines) if ln.strip() and not ln.strip().isdigit()),
                              f"exit {p.returncode}")}
    return {**json.loads(p.stdout.strip().splitlines()[-1]), "peak_rss": int(lines[-1]) * 1024}


def measure_model(base: Path, work: Path, threads: int, repeats: int, log=print) -> dict:
    samples: dict[str, list[dict]] = {"plain": [], "live-first": [], "live-later": []}
    _measure("plain", base, work / "cache-live", threads)  # not counted: the export's pages into the page cache
    for r in range(repeats):
        cache = work / "cache-live"
        shutil.rmtree(cache, ignore_errors=True)
        samples["plain"].append(_measure("plain", base, cache, threads))
        samples["live-first"].append(_measure("auto", base, cache, threads))
        samples["live-later"].append(_measure("auto", base, cache, threads))
        log(f"    round {r + 1}/{repeats}: " + ", ".join(
            f"{k} {v[-1].get('s', float('nan')):.1f}s" for k, v in samples.items()))
    cache = work / "cache-baked"
    shutil.rmtree(cache, ignore_errors=True)
    samples["baked-first"] = [_measure("always", base, cache, threads)]
    samples["baked-later"] = [_measure("always", base, cache, threads)]
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(work / "cache-live", ignore_errors=True)
    rows = {}
    for k, v in samples.items():
        good = [x for x in v if "error" not in x]
        rows[k] = ({"s": median(x["s"] for x in good), "peak_rss": median(x["peak_rss"] for x in good),
                    "route": good[0].get("route"), "samples": v} if good else {"error": v[0]["error"], "samples": v})
    for k in ("live-first", "live-later"):  # each open against the plain session of its own round: less noise
        pairs = [(x["s"], p["s"]) for x, p in zip(samples[k], samples["plain"]) if "s" in x and "s" in p]
        if pairs:
            rows[k]["per_round"] = median(a / b for a, b in pairs)
    return rows


def run_first_open(out_dir, threads: int = 2, repeats: int = 5, models=None, work=None, log=print) -> dict:
    """`work`: where the models are exported (kept, and reused when there already); default a temporary
    directory, removed afterwards."""
    import tempfile

    from .first_open_report import markdown, plot

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(models or DEFAULT_MODELS)
    t0 = time.perf_counter()
    report = {"command": "shira-bench --first-open " + (f"--models {','.join(names)} " if models else "")
              + (f"--work {work} " if work else "") + f"--out {out_dir} --threads {threads}",
              "machine": machine(), "threads": threads, "repeats": repeats, "models": {}}
    with tempfile.TemporaryDirectory(prefix="shira-first-open-") as tmp:
        work = Path(work) if work else Path(tmp)
        for name in names:
            log(f"{name}:")
            base = export_base(name, work, log)
            report["models"][name] = measure_model(base, work, threads, repeats, log)
    report["seconds"] = time.perf_counter() - t0
    write_text(out_dir / "first_open.json", json.dumps(report, indent=1))
    write_text(out_dir / "first_open.md", markdown(report))
    plot(report, out_dir / "first_open.png")
    log(f"wrote {out_dir / 'first_open.md'} ({report['seconds']:.0f}s)")
    return report
