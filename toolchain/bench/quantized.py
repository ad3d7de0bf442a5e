"""`shira-bench --quantized`: quantized bases (int8, int4) against float32, small and at real size.

Quality, on tiny-llama with the shipped task adapters (models/lm_tasks): bits/byte on held-out text, each task's
answer accuracy with its adapter written into the base's integers, the entries clamped, how much of the adapter's
delta survives, and the same for "merge in float32, then quantize the whole model" (the merged model exported
with the same --quantize), which the issue names as the reference.

Size and speed, on a Llama-shaped model of 168M parameters (random weights, two random 1% adapters): the weights'
bytes, RSS at rest, the bake (first load), the switch, and runs against the same base's constant-weight session
side by side; every base and mode in its own process (toolchain/bench/real_size.py's children). The same for
ExecuTorch (XNNPACK): the .pte's size, RSS beside the plain program's, the switch (a method reload when the
weights are integers) and runs after it against the .pte loaded the plain way.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .subjects import MODELS, write_random_adapters
from .quantized_report import markdown, plot

# base label -> export_model's quantization keywords. The LM adapters touch q/v/up/down (models/lm_tasks), so
# every base makes just those patchable: the mixed base keeps them at 8 bits under 4-bit constants
BASES = {"fp32": {}, "int8": {"quantize": "int8"}, "int8, headroom 1": {"quantize": "int8", "headroom": 1.0},
         "int4": {"quantize": "int4"}, "int4, patchable int8": {"quantize": "int4", "quantize_patchable": "int8"}}
REAL_BASES = ("fp32", "int8", "int4")
TASKS = ("upper", "reverse", "vowels")
LM_DIR = Path(__file__).resolve().parents[2] / "models" / "lm_tasks"
LM_TARGETS = r"(q_proj|v_proj|up_proj|down_proj)\.weight$"  # what the shipped adapters were trained on
REAL = {"llama-168M": MODELS["llama-168M"]}


def _export(subject, out: Path, label: str, targets: str | None = None) -> Path:
    from ..export import export_model

    if not (out / "manifest.json").exists():
        export_model(subject, out, targets, formats=("onnx",), log=lambda *a: None, **BASES[label])
    return out


def _base_row(model: str, work: Path, label: str, targets: str) -> tuple[Path, str, dict]:
    """A built-in model exported with `label`'s settings -> (its directory, the label as a path part, the row's
    start: the files the engine loads and the settings)."""
    from ..model_source import resolve

    slug = label.replace(", ", "-").replace(" ", "")
    base = _export(resolve(model), work / f"{model}-{slug}", label, targets)
    return base, slug, {"weights_bytes": sum(f.stat().st_size for f in base.iterdir() if f.suffix in (
        ".safetensors", ".onnx") and f.name != "model_prepacked.onnx"), "settings": BASES[label]}


def _merged_then_quantized(model: str, adapter, out: Path, label: str, targets: str) -> Path:
    """The reference the issue names: `adapter` merged into the float32 model, the whole model then exported
    with `label`'s quantization."""
    import torch

    from ..model_source import resolve

    subject = resolve(model)
    params = dict(subject.model.named_parameters())
    with torch.no_grad():
        for t in adapter.tensors.values():
            params[t.target].view(-1)[torch.from_numpy(t.indices)] += torch.from_numpy(t.values)
    return _export(subject, out, label, targets)


def bits_per_byte(sess, rows: int = 16) -> float:
    """Next-byte cross-entropy on held-out docstrings, in bits (the runtime's logits, one row per run)."""
    import torch
    from ..train import lm_text

    ids = lm_text.text_batch(torch.Generator().manual_seed(99), rows, held_out=True)["input_ids"].numpy()
    total = 0.0
    for row in ids:
        logits = sess.run({"input_ids": row[None]})["logits"][0, :-1].astype(np.float64)
        logits -= logits.max(-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        total += -logp[np.arange(row.size - 1), row[1:]].mean()
    return total / len(ids) / math.log(2)


def accuracy(sess, task: str, n: int = 32) -> float:
    """Teacher-forced answer accuracy on held-out snippets (lm_text.answer_accuracy, through the runtime)."""
    import torch
    from ..train import lm_text

    b = lm_text.task_batch(task, torch.Generator().manual_seed(7), n, held_out=True)
    ids, gold = b["input_ids"].numpy(), b["labels"][:, 1:].numpy()
    pred = np.stack([sess.run({"input_ids": ids[i:i + 1]})["logits"][0, :-1].argmax(-1) for i in range(n)])
    mask = gold != -100
    return float((pred[mask] == gold[mask]).mean())


def _delta_kept(sess, adapter, float_weights: dict) -> float:
    """1 - |what the base holds at the adapter's entries - (W + delta)| / |delta| over all its entries: how much
    of the adapter survived quantization and clamping (1.0: all of it)."""
    err = ref = 0.0
    for t in adapter.tensors.values():
        live = sess.weight(t.target).reshape(-1)[t.indices].astype(np.float64)
        want = float_weights[t.target].reshape(-1)[t.indices].astype(np.float64) + t.values
        err += float(np.sum((live - want) ** 2))
        ref += float(np.sum(t.values.astype(np.float64) ** 2))
    return 1.0 - math.sqrt(err / ref)


def _train_on_base(base: Path, task: str, seed: int, work: Path, steps: int) -> Path:
    """The task adapter trained on the quantized base (shira-train --quantized-base), with the shipped adapters'
    recipe (demos/demo_models.py), packed against that base."""
    from ..model_source import resolve
    from ..pack import pack_adapter
    from ..train import TrainConfig, train

    out = work / f"{base.name}-{task}-{seed}.shira"
    if not out.exists():
        cfg = TrainConfig(task=task, mask="snip", r=2, steps=steps, lr=2e-2, seed=seed, targets=LM_TARGETS,
                          quantized_base=str(base))
        peft_dir = work / "peft" / f"{base.name}-{task}-{seed}"
        train(resolve("tiny-llama"), cfg, peft_dir, log=lambda *a: None, progress=False)
        pack_adapter(peft_dir, base, out, name=task)
    return out


def _adapter_row(sess, path: Path, task: str, float_weights: dict, base_acc: float) -> dict:
    from shira_format.adapter import read_adapter

    name = sess.load(path, f"{task}-{path.stem}")
    sess.switch(name)
    adapter = read_adapter(path, sess.manifest)
    r = {"accuracy": accuracy(sess, task), "clamped": sess.clamped, "entries": adapter.nnz,
         "delta_kept": _delta_kept(sess, adapter, float_weights), "accuracy_base": base_acc}
    sess.reset()
    sess.unload(name)
    return r


def quality(work: Path, log=print, threads: int = 2, bases=tuple(BASES), tasks=TASKS, steps: int = 300) -> dict:
    from shira_format.adapter import read_adapter
    from shira_runtime import ShiraSession

    from ..model_source import resolve

    out = {}
    float_weights = {n: p.detach().numpy().copy() for n, p in resolve("tiny-llama").model.named_parameters()}
    for label in bases:
        t0 = time.perf_counter()
        base, slug, row = _base_row("tiny-llama", work, label, LM_TARGETS)
        row["tasks"] = {}
        with ShiraSession(base, threads=threads, cache_dir=work / "cache") as sess:
            row["session_mode"] = sess.mode
            row["bits_per_byte"] = bits_per_byte(sess)
            for i, task in enumerate(tasks):
                base_acc = accuracy(sess, task)
                r = {"float_trained": _adapter_row(sess, LM_DIR / f"{task}.shira", task, float_weights, base_acc)}
                if BASES[label]:  # two seeds: the shipped recipe's seed i, and i + 3 (single runs stall at random)
                    r["trained_on_base"] = [_adapter_row(sess, _train_on_base(base, task, seed, work, steps), task,
                                                         float_weights, base_acc) for seed in (i, i + 3)]
                    # the reference: the float-trained adapter merged in float32, then the whole model quantized
                    adapter = read_adapter(LM_DIR / f"{task}.shira", sess.manifest)
                    merged = _merged_then_quantized("tiny-llama", adapter, work / f"merged-{task}-{slug}", label,
                                                    LM_TARGETS)
                    with ShiraSession(merged, threads=threads, cache_dir=work / "cache") as ms:
                        r["merged_then_quantized"] = {"accuracy": accuracy(ms, task),
                                                      "delta_kept": _delta_kept(ms, adapter, float_weights)}
                row["tasks"][task] = r
        out[label] = row
        log(f"  tiny-llama {label}: {row['bits_per_byte']:.3f} bits/byte, " + ", ".join(
            f"{t} {r['float_trained']['accuracy']:.2f}"
            + "".join(f"/{q['accuracy']:.2f}" for q in r.get("trained_on_base", ()))
            for t, r in row["tasks"].items()) + f" [{time.perf_counter() - t0:.0f}s]")
    return out


STYLE_DIR = Path(__file__).resolve().parents[2] / "models" / "styles"
STYLE_BASES = ("fp32", "int8", "int4", "int4, patchable int8")
STYLE_SIZE = 256  # the demo's image size


def _styled(sess, images: np.ndarray) -> np.ndarray:
    return np.concatenate([next(iter(sess.run({"image": im[None]}).values())) for im in images])


def style_quality(work: Path, log=print, threads: int = 2, bases=STYLE_BASES, repeats: int = 10) -> dict:
    """The style net on float32 and quantized bases, each with the four shipped style adapters: PSNR to the style
    on the held-out photo (as models/styles/build_report.json measures it, through the runtime), entries
    clamped, the delta kept, the same adapter merged in float32 then quantized, and the time of one
    256x256 image: the session after a switch against the same base's constant-weight session, side by side."""
    import torch
    from shira_format.adapter import read_adapter
    from shira_runtime import ShiraSession

    from ..model_source import resolve
    from ..train import photos
    from ..train.styles import STYLES
    from .measure import psnr
    from .probes import constant_session, median_ms

    targets = json.loads((STYLE_DIR / "build_report.json").read_text())["targets"]  # what the adapters touch
    ev = photos.eval_crops().numpy()
    image = photos.eval_crops(1, STYLE_SIZE).numpy()
    float_weights = {n: p.detach().numpy().copy() for n, p in resolve("style-net").model.named_parameters()}
    out = {}
    for label in bases:
        t0 = time.perf_counter()
        base, slug, row = _base_row("style-net", work, label, targets)
        row["styles"] = {}
        with ShiraSession(base, threads=threads, cache_dir=work / "cache") as sess:
            row["session_mode"] = sess.mode
            for style, fn in STYLES.items():
                target = fn(torch.from_numpy(ev)).numpy()
                path = STYLE_DIR / f"{style}.shira"
                adapter = read_adapter(path, sess.manifest)
                r = {"psnr_base": psnr(_styled(sess, ev), target), "entries": adapter.nnz}
                name = sess.load(path, style)
                sess.switch(name)
                r.update(psnr=psnr(_styled(sess, ev), target), clamped=sess.clamped,
                         delta_kept=_delta_kept(sess, adapter, float_weights))
                sess.reset()
                sess.unload(name)
                if BASES[label]:  # the reference: merged in float32, then the whole net quantized alike
                    merged = _merged_then_quantized("style-net", adapter, work / f"style-merged-{style}-{slug}",
                                                    label, targets)
                    with ShiraSession(merged, threads=threads, cache_dir=work / "cache") as ms:
                        r["merged_then_quantized"] = psnr(_styled(ms, ev), target)
                row["styles"][style] = r
            # speed: the session with an adapter switched in, against the constant-weight session of this base
            sess.switch(sess.load(STYLE_DIR / "sepia.shira", "sepia"))
            const = constant_session(base, threads)
            feed = {"image": image}
            mine, theirs = [], []
            for _ in range(4):
                mine.append(median_ms(lambda: sess.run(feed), repeats))
                theirs.append(median_ms(lambda: const.run(None, feed), repeats))
            row["image_ms"] = {"session": float(np.median(mine)), "constant": float(np.median(theirs))}
            const = None  # close it before the next base
        row["dir"] = base
        out[label] = row
        log(f"  style-net {label} ({row['session_mode']}): " + ", ".join(
            f"{s} {r['psnr']:.1f} dB" for s, r in row["styles"].items())
            + f"; {row['image_ms']['session']:.1f} ms per {STYLE_SIZE}px image [{time.perf_counter() - t0:.0f}s]")
    # every base's constant-weight session against the float32 one, alternating in one process: the speed of a
    # quantized base itself, without the noise between the measurements above
    consts = {label: constant_session(row.pop("dir"), threads) for label, row in out.items()}
    if "fp32" in consts:
        times = {label: [] for label in consts}
        for _ in range(4):
            for label, c in consts.items():
                times[label].append(median_ms(lambda: c.run(None, {"image": image}), repeats))
        for label, row in out.items():
            row["image_vs_fp32"] = float(np.median(times[label]) / np.median(times["fp32"]))
    return out


def _build_real(name: str, spec, work: Path, log, labels=REAL_BASES) -> dict[str, Path]:
    """The HF model saved once, exported to `labels` (float32, int8, int4), and two random 1% adapters (a, b)."""
    import torch
    from shira_format import manifest as manifest_mod

    from ..model_source import resolve

    root = work / name
    src = root / "hf"
    if not (src / "config.json").exists():
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        LlamaForCausalLM(LlamaConfig(max_position_embeddings=2048, **spec[1])).eval().save_pretrained(str(src))
    bases = {}
    for label in labels:
        t0 = time.perf_counter()
        bases[label] = _export(resolve(str(src)), root / f"base-{label}", label)
        log(f"  {name} {label}: exported in {time.perf_counter() - t0:.0f}s")
    # one adapter for every base (one fingerprint, the model's), where real_size's children look for it
    write_random_adapters(manifest_mod.load(next(iter(bases.values()))),
                          {tag: root / f"{tag}.shira" for tag in ("a", "b")})
    return bases


def _export_pte(src: Path, out: Path, label: str) -> Path:
    from ..export import export_model
    from ..model_source import resolve

    if not (out / "manifest.json").exists():
        export_model(resolve(str(src)), out, None, formats=("pte",), log=lambda *a: None, **BASES[label])
    return out


def run_executorch(base: Path, threads: int, repeats: int) -> dict:
    """One ExecuTorch base in this (child) process: load, RSS at rest, the switch between two adapters (a float
    Linear is written live; a quantized one is written and its method reloaded), and runs after a switch against
    the same .pte loaded the plain way (ExecuTorch's Runtime, no ShiraSession): the constant-weight program."""
    from executorch.runtime import Runtime
    from shira_runtime import ShiraSession

    from .probes import inputs_for, median_ms, reset_peak, rss_status

    import torch

    loads = inputs_for(base)
    res: dict = {"rss_start": rss_status("VmRSS")}
    t = time.perf_counter()
    sess = ShiraSession(base, backend="executorch", threads=threads)
    res["load_s"] = time.perf_counter() - t
    for feed in loads.values():
        sess.run(feed)
    res["rss_rest"] = rss_status("VmRSS")
    names = [sess.load(base.parent / f"{tag}.shira", tag) for tag in ("a", "b")]
    res["session_mode"] = sess.mode  # float32: two-phase (a prepacked program rebuilt in the background)
    prog = sess.engine.program
    reset_peak()
    times, full = [], []
    for i in range(max(4, repeats)):
        t = time.perf_counter()
        sess.switch(names[i % 2])
        times.append((time.perf_counter() - t) * 1e3)
        sess.wait_full_speed(120)  # until runs are at full speed again (two-phase: the rebuilt program)
        full.append((time.perf_counter() - t) * 1e3)
    res["switch_median_ms"] = float(np.median(times[1:]))
    res["full_speed_median_ms"] = float(np.median(full[1:]))
    res["reloads_per_switch"] = prog.reloads / len(times)
    res["peak_rss_switch"] = rss_status("VmHWM")
    method = Runtime.get().load_program(base / _constant_pte(base)).load_method("forward")
    res["run_ms"], res["vs_constant"] = {}, {}
    for k, feed in loads.items():
        args = [torch.from_numpy(v) for v in feed.values()]
        n = max(2, (repeats if k != "prefill128" else max(3, repeats // 3)) // 2)
        mine, theirs = [], []
        for _ in range(4):
            mine.append(median_ms(lambda: sess.run(feed), n))
            theirs.append(median_ms(lambda: method.execute(args), n))
        res["run_ms"][k] = float(np.median(theirs))
        res["vs_constant"][k] = float(np.median(mine) / np.median(theirs))
    sess.close()
    return res


def _constant_pte(base: Path) -> str:
    """The constant-weight program: model_prepacked.pte (float32: every weight packed at load) if the export
    wrote one, else model.pte (a quantized program packs its integers at load already)."""
    artifacts = json.loads((base / "manifest.json").read_text())["artifacts"]["executorch"]
    return artifacts.get("prepacked", artifacts["patchable"])


def run_executorch_plain(base: Path) -> dict:
    """The .pte loaded the plain way (ExecuTorch's Runtime, no ShiraSession) in this (child) process: RSS at rest
    after one run of each workload, the reference for run_executorch's."""
    from executorch.runtime import Runtime

    from .probes import inputs_for, rss_status

    import torch

    method = Runtime.get().load_program(base / _constant_pte(base)).load_method("forward")
    for feed in inputs_for(base).values():
        method.execute([torch.from_numpy(v) for v in feed.values()])
    return {"rss_rest": rss_status("VmRSS")}


def _child(*args: str) -> dict:
    from .measure import child_error
    p = subprocess.run([sys.executable, "-m", "shira_toolchain.bench.quantized", *args], capture_output=True,
                       text=True, timeout=1800)
    if p.returncode != 0:
        return {"error": child_error(p)}
    return json.loads(p.stdout.strip().splitlines()[-1])


def executorch_real_size(work: Path, threads: int, repeats: int, log=print, models: dict | None = None) -> dict:
    """The same 168M model exported for ExecuTorch (XNNPACK) in float32, int8 and int4, each in its own child."""
    out = {}
    for name, spec in (models or REAL).items():
        root = work / name
        _build_real(name, spec, work, log)  # the saved model and its adapters (exports are reused)
        rows = {}
        for label in REAL_BASES:
            t0 = time.perf_counter()
            base = _export_pte(root / "hf", root / f"et-{label}", label)
            for tag in ("a", "b"):  # the adapters next to the base, where run_executorch looks for them
                if not (base.parent / f"{tag}.shira").exists():
                    (base.parent / f"{tag}.shira").write_bytes((root / f"{tag}.shira").read_bytes())
            export_s = time.perf_counter() - t0
            row = _child("executorch", str(base), str(threads), str(repeats))
            if "error" in row:
                rows[label] = row
                log(f"  {name} executorch {label}: FAILED {row['error']}")
                continue
            row["plain_rss_rest"] = _child("executorch-plain", str(base)).get("rss_rest", 0)
            row["pte_bytes"] = (base / "model.pte").stat().st_size
            row["export_s"] = export_s
            rows[label] = row
            log(f"  {name} executorch {label}: .pte {row['pte_bytes'] / 1e6:.0f} MB, rss {row['rss_rest'] / 2**20:.0f}"
                f" MB, switch {row['switch_median_ms']:.0f} ms, decode {row['run_ms'].get('decode', 0):.1f} ms, "
                f"vs constant {row['vs_constant']}")
        out[name] = rows
    return out


def real_size(work: Path, threads: int, repeats: int, log=print, models: dict | None = None) -> dict:
    from .measure import child_error
    from .probes import bake_once

    out = {}
    for name, spec in (models or REAL).items():
        bases = _build_real(name, spec, work, log)
        rows = {}
        for label, base in bases.items():
            cache = base.parent / f"cache-{label}"
            row = {"weights_bytes": sum(f.stat().st_size for f in base.iterdir()
                                        if f.name.startswith("weights") or f.name.endswith(".data")),
                   "bake": bake_once(base, cache, threads) if Path("/usr/bin/time").exists() else {}, "modes": {}}
            for mode in ("constant", "in-place"):
                p = subprocess.run([sys.executable, "-m", "shira_toolchain.bench.real_size", mode, str(base),
                                    str(cache), str(threads), str(repeats)], capture_output=True, text=True,
                                   timeout=1800)
                if p.returncode != 0:
                    row["modes"][mode] = {"error": child_error(p)}
                    log(f"  {name} {label} {mode}: FAILED {row['modes'][mode]['error']}")
                    continue
                row["modes"][mode] = json.loads(p.stdout.strip().splitlines()[-1])
            ip = row["modes"].get("in-place", {})
            log(f"  {name} {label}: weights {row['weights_bytes'] / 1e6:.0f} MB, in place "
                f"{ip.get('session_mode', '?')} rss {ip.get('rss_rest', 0) / 2**20:.0f} MB, switch "
                f"{ip.get('switch_median_ms', 0):.1f} ms, vs constant {ip.get('vs_constant', {})}")
            rows[label] = row
        out[name] = rows
    return out


PARTS = ("lm", "style", "real", "executorch")


def run_quantized(out_dir, quick: bool = False, threads: int = 2, repeats: int = 10, work=None, log=print,
                  models: dict | None = None, parts=PARTS) -> dict:
    """quantized.{json,md,png} in out_dir. `quick`: tiny-llama and the style net only, no 168M model. `parts`:
    the sections to measure (lm: tiny-llama, style: the style net, real: 168M on ONNX Runtime, executorch: 168M
    on ExecuTorch); the others are kept from the quantized.json already in out_dir, each section saying which
    command measured it and when."""
    import tempfile

    from shira_format.atomic import write_text

    from .measure import machine

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    old = out_dir / "quantized.json"
    keys = {"lm": "quality", "style": "style", "real": "real_size", "executorch": "executorch"}
    prev = json.loads(old.read_text()) if old.exists() and set(parts) != set(PARTS) else {}
    if prev and "sections" not in prev:  # written by one run of every part, before sections were recorded
        prev["sections"] = {part: {"command": prev["command"], "seconds": None, "date": None}
                            for part, key in keys.items() if prev.get(key)}
    mine = machine()
    if prev and ({k: prev["machine"].get(k) for k in ("cpu", "cores")} != {k: mine[k] for k in ("cpu", "cores")}
                 or prev["threads"] != threads):
        raise ValueError(f"{old}: measured on another machine or thread count; rerun every part (no --parts)")
    report = {k: prev.get(k, {}) for k in (*keys.values(), "sections")}
    command = (f"shira-bench --quantized {'--quick ' if quick else ''}"
               + (f"--parts {','.join(parts)} " if set(parts) != set(PARTS) else "")
               + f"--out {out_dir} --threads {threads}")
    steps = {"lm": lambda w: quality(w, log, threads), "style": lambda w: style_quality(w, log, threads),
             "real": lambda w: real_size(w, threads, repeats, log, models),
             "executorch": lambda w: executorch_real_size(w, threads, repeats, log, models)}
    t_all = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        w = Path(work or tmp)
        for part in parts:
            if part in ("real", "executorch") and quick and not models:
                report[keys[part]] = {}
                continue
            log(f"quantized bases: {part}")
            t0 = time.time()
            report[keys[part]] = steps[part](w)
            report["sections"][part] = {"command": command, "seconds": time.time() - t0,
                                        "date": time.strftime("%Y-%m-%d")}
    # the blobs are the same files on every base (float values, docs/QUANTIZATION.md): their sizes once
    report["blobs"] = {d.name: {f.stem: f.stat().st_size for f in sorted(d.glob("*.shira"))}
                       for d in (LM_DIR, STYLE_DIR)}
    report.update({"command": command, "machine": mine, "threads": threads,
                   "seconds": sum(v["seconds"] or 0 for v in report["sections"].values())})
    write_text(out_dir / "quantized.json", json.dumps(report, indent=1))
    write_text(out_dir / "quantized.md", markdown(report))
    plot(report, out_dir / "quantized.png")
    log(f"quantized -> {out_dir} ({time.time() - t_all:.0f}s)")
    return report


if __name__ == "__main__":  # a child: one ExecuTorch base, JSON on the last line of stdout
    import os

    if sys.argv[1] == "executorch-plain":
        print(json.dumps(run_executorch_plain(Path(sys.argv[2]))))
    else:
        _, base_dir, n_threads, n_repeats = sys.argv[1:5]
        os.environ.setdefault("OMP_NUM_THREADS", n_threads)
        print(json.dumps(run_executorch(Path(base_dir), int(n_threads), int(n_repeats))))
