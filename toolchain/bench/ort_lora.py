"""`shira-bench --ort-lora`: SHiRA in place against ONNX Runtime's own LoRA on the bases users ship.

ORT's LoRA (`.onnx_adapter` files, `RunOptions.add_active_adapter`) switches for free, but every run pays for the
unfused branches: X @ A @ B per adapted layer, in float, beside the base's MatMul (float32) or MatMulNBits (int8,
int4). On a float32 base at r = 8 that costs next to nothing (reports/real_size); on a quantized base the branch
is a larger share of a cheaper layer. SHiRA in place runs at the base's speed whatever the rank or the number of
adapters fused.

Per base (float32, int8, int4 exports of one Llama-shaped model, random weights), in one child process:
  - the in-place ShiraSession with a 1% adapter active (about LoRA's trainable count at r = 8 on these layers),
  - then, one at a time, ORT sessions of the same base's constant-weight model with LoRA branches added on every
    patchable layer: r = 8, 16, 64, with one branch (one adapter active) and with three (three adapters active
    at once: ORT needs a branch per active adapter),
each LoRA session's runs alternating with the SHiRA session's (4 rounds of decode and prefill medians), so the
ratio is measured side by side; RSS grown by opening each LoRA session beside the SHiRA one. Also the click:
SHiRA's switch, and ORT's (a new RunOptions: nothing to do until the run).

Time to the first 64 tokens after a switch, as a chat user feels it: the same model exported with its KV cache
(`--kv-cache`) per base; a switch, then a 128-token prompt and 64 greedy decode steps through the runtime's
generate loop (shira_runtime.generate), for SHiRA in place, SHiRA on the patchable engine (mode="patchable") and
ORT's LoRA at each rank and adapter count; the median of 3 alternating rounds in one child per base.
"""
from __future__ import annotations

import gc
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from shira_runtime.backends.onnxruntime import session_options

from .subjects import write_onnx_adapter

RANKS = (8, 16, 64)
BRANCHES = (1, 3)
PROMPT, NEW_TOKENS = 128, 64


def add_lora_branches(base: Path, rank: int, branches: int, seed: int = 0) -> tuple[Path, list[Path]]:
    """The base's constant-weight model (model_prepacked.onnx) with `branches` LoRA branches of rank `rank` on
    every patchable MatMul / MatMulNBits: y = base(x) + sum_i (x @ A_i) @ B_i, each A_i, B_i an overridable
    initializer (a graph input with a default), and one `.onnx_adapter` per branch holding its values.
    -> (model path, adapter paths). Written beside the base's files (their external data is found there)."""
    import onnx
    from onnx import helper, numpy_helper
    from shira_format import manifest as manifest_mod

    tag = f"lora_r{rank}x{branches}"
    out = base / f"{tag}.onnx"
    adapters = [base / f"{tag}_{i}.onnx_adapter" for i in range(branches)]
    if out.exists() and all(a.exists() for a in adapters):
        return out, adapters
    man = manifest_mod.load(base)
    weights = {p.name for _, p in man.placements("onnxruntime")}
    proto = onnx.load(str(base / "model_prepacked.onnx"), load_external_data=False)
    shapes = {i.name: list(i.dims) for i in proto.graph.initializer}
    rng = np.random.default_rng(seed)
    new_nodes, values = [], [{} for _ in range(branches)]
    for node in proto.graph.node:
        new_nodes.append(node)
        if node.op_type not in ("MatMul", "MatMulNBits") or len(node.input) < 2 or node.input[1] not in weights:
            continue
        if node.op_type == "MatMulNBits":
            attrs = {a.name: a.i for a in node.attribute}
            k, n = attrs["K"], attrs["N"]
        else:
            k, n = shapes[node.input[1]]
        x, y = node.input[0], node.output[0]
        node.output[0] = f"{y}__base"
        terms = [f"{y}__base"]
        for i in range(branches):
            a_name, b_name = f"{node.input[1]}__lora{i}_A", f"{node.input[1]}__lora{i}_B"
            a = rng.normal(0, 1 / np.sqrt(k), (k, rank)).astype(np.float32)
            b = rng.normal(0, 0.02, (rank, n)).astype(np.float32)
            for name, arr in ((a_name, a), (b_name, b)):
                proto.graph.initializer.append(numpy_helper.from_array(arr, name))
                proto.graph.input.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, list(arr.shape)))
                values[i][name] = arr
            new_nodes.append(helper.make_node("MatMul", [x, a_name], [f"{y}__lora{i}_xa"]))
            new_nodes.append(helper.make_node("MatMul", [f"{y}__lora{i}_xa", b_name], [f"{y}__lora{i}"]))
            terms.append(f"{y}__lora{i}")
        for j in range(1, len(terms)):
            new_nodes.append(helper.make_node("Add", [terms[0] if j == 1 else f"{y}__sum{j - 1}", terms[j]],
                                              [y if j == len(terms) - 1 else f"{y}__sum{j}"]))
    del proto.graph.node[:]
    proto.graph.node.extend(new_nodes)
    tmp = out.with_name(f".{out.name}.tmp")
    onnx.save_model(proto, str(tmp))
    tmp.replace(out)
    for path, vals in zip(adapters, values):
        write_onnx_adapter(path, vals)
    return out, adapters


def measure_base(base: Path, cache: Path, threads: int, repeats: int, ranks=RANKS, branches=BRANCHES) -> dict:
    """One base, in this process (a child): the SHiRA session, then each LoRA configuration beside it."""
    import onnxruntime as ort
    from shira_runtime import ShiraSession

    from .probes import inputs_for, median_ms, rss_status

    loads = inputs_for(base)
    work = base.parent
    res: dict = {"rss_start": rss_status("VmRSS")}
    shira = ShiraSession(base, threads=threads, mode="in-place", cache_dir=cache)
    shira.load(work / "a.shira", name="a")
    shira.load(work / "b.shira", name="b")
    shira.switch("b")
    t = time.perf_counter()
    shira.switch("a")
    res["shira_switch_ms"] = (time.perf_counter() - t) * 1e3
    res["shira_mode"] = shira.mode
    for feed in loads.values():
        shira.run(feed)
    res["shira_rss"] = rss_status("VmRSS")
    res["lora"] = []
    for rank in ranks:
        for nb in branches:
            model, adapter_files = add_lora_branches(base, rank, nb)
            gc.collect()
            before = rss_status("VmRSS")
            opts = session_options(threads)
            sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
            run_opts = ort.RunOptions()
            adapters = []
            for f in adapter_files:
                ad = ort.LoraAdapter()
                ad.Load(str(f))
                run_opts.add_active_adapter(ad)
                adapters.append(ad)
            row = {"rank": rank, "adapters": nb, "rss_added": rss_status("VmRSS") - before, "ms": {}, "ratio": {}}
            t = time.perf_counter()
            switched = ort.RunOptions()  # ORT's switch: another set of active adapters, nothing copied
            for ad in adapters:
                switched.add_active_adapter(ad)
            row["switch_ms"] = (time.perf_counter() - t) * 1e3
            for k, feed in loads.items():
                for _ in range(2):
                    sess.run(None, feed, run_opts)
                n = max(2, (repeats if k != "prefill128" else max(3, repeats // 3)) // 2)
                mine, theirs = [], []
                for _ in range(4):
                    mine.append(median_ms(lambda feed=feed: shira.run(feed), n))
                    theirs.append(median_ms(lambda feed=feed, sess=sess, o=run_opts: sess.run(None, feed, o), n))
                row["ms"][k] = {"shira": float(np.median(mine)), "lora": float(np.median(theirs))}
                row["ratio"][k] = float(np.median(theirs) / np.median(mine))
            res["lora"].append(row)
            del sess, adapters, run_opts, switched
            gc.collect()
    shira.close()
    return res


class _OrtLM:
    """An ORT session with LoRA adapters active, with the two things generate() asks of a session."""

    def __init__(self, sess, manifest, run_options):
        self.sess, self.manifest, self.opts = sess, manifest, run_options
        self.names = [o.name for o in sess.get_outputs()]

    def run(self, feed):
        return dict(zip(self.names, self.sess.run(None, feed, self.opts)))


def _toggle(session):
    """A switch to the other of the session's two adapters, a and b, at each call."""
    turn = [0]

    def switch():
        turn[0] += 1
        session.switch("ab"[turn[0] % 2])

    return switch


class _Recreated:
    """What an app without in-place patching does at a switch: the patched weights (computed by a patchable
    ShiraSession: float deltas added, or integers written, as the runtime writes them) copied into the base's
    weights and a new constant-weight ORT session built from them (the old one dropped first)."""

    def __init__(self, kv_base: Path, threads: int, cache: Path):
        from shira_format.safetensors_file import read_file
        from shira_runtime import ShiraSession

        self.base, self.threads = kv_base, threads
        self.patcher = ShiraSession(kv_base, threads=threads, mode="patchable", cache_dir=cache)
        self.manifest = self.patcher.manifest
        for tag in "ab":
            self.patcher.load(kv_base.parent / f"{tag}.shira", name=tag)
        self.st = read_file(kv_base / "weights.safetensors", writable=True)
        self.turn, self.sess = 0, None

    def switch(self) -> None:
        from .probes import constant_session

        self.turn += 1
        self.patcher.switch("ab"[self.turn % 2])
        for name, live in self.patcher.live_buffers().items():
            np.frombuffer(self.st.raw(name), dtype=np.uint8)[:] = live.view(np.uint8).reshape(-1)
        self.sess = None
        self.sess = constant_session(self.base, self.threads, bytes(self.st.buffer))
        self.names = [o.name for o in self.sess.get_outputs()]

    def run(self, feed):
        return dict(zip(self.names, self.sess.run(None, feed)))

    def close(self) -> None:
        self.patcher.close()
        self.sess = None


def _peft_tokens(hf: Path, prompt: list[int], threads: int, rounds: int) -> list[dict]:
    """PyTorch eager with two PEFT LoRA adapters (r=8, every Linear but the head): switch = set_adapter, then the
    same greedy prompt + decode steps with transformers' KV cache."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(hf)).eval(),
                           LoraConfig(r=8, target_modules="all-linear", init_lora_weights=False), adapter_name="a")
    model.add_adapter("b", LoraConfig(r=8, target_modules="all-linear", init_lora_weights=False))
    ids = torch.tensor([prompt])
    out = []
    with torch.no_grad():
        for i in range(rounds + 1):  # the first round warms up
            t = time.perf_counter()
            model.set_adapter("ab"[i % 2])
            t_switch = time.perf_counter() - t
            t1 = time.perf_counter()
            res = model(input_ids=ids, use_cache=True)
            past, tok = res.past_key_values, res.logits[:, -1:].argmax(-1)
            t2 = time.perf_counter()
            for _ in range(NEW_TOKENS - 1):
                res = model(input_ids=tok, past_key_values=past, use_cache=True)
                past, tok = res.past_key_values, res.logits[:, -1:].argmax(-1)
            t3 = time.perf_counter()
            if i:
                out.append({"switch_s": t_switch, "prompt_s": t2 - t1, "decode_s": t3 - t2, "total_s": t3 - t})
    return out


def time_to_tokens(kv_base: Path, cache: Path, threads: int, rounds: int = 3, ranks=RANKS, branches=BRANCHES
                   ) -> dict:
    """One KV-cache base, in this process (a child): switch + 128-token prompt + 64 decode steps, per mode."""
    import onnxruntime as ort
    from shira_runtime import ShiraSession
    from shira_runtime.generate import generate

    work = kv_base.parent
    prompt = [int(i % 1000 + 5) for i in range(PROMPT)]
    modes = {}
    for label, mode in (("SHiRA in place", "in-place"), ("SHiRA two-phase", "two-phase"),
                        ("SHiRA patchable", "patchable")):
        s = ShiraSession(kv_base, threads=threads, mode=mode, cache_dir=cache)
        s.load(work / "a.shira", name="a")
        s.load(work / "b.shira", name="b")
        modes[label] = (s, _toggle(s))
    opts = session_options(threads)
    manifest = modes["SHiRA in place"][0].manifest
    recreated = _Recreated(kv_base, threads, cache)
    modes["re-created ORT session"] = (recreated, recreated.switch)
    for rank in ranks:
        for nb in branches:
            model, files = add_lora_branches(kv_base, rank, nb)
            sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
            adapters = []
            for f in files:
                ad = ort.LoraAdapter()
                ad.Load(str(f))
                adapters.append(ad)
            lm = _OrtLM(sess, manifest, ort.RunOptions())

            def switch(lm=lm, adapters=adapters):  # ORT's switch: another RunOptions with the adapters active
                o = ort.RunOptions()
                for ad in adapters:
                    o.add_active_adapter(ad)
                lm.opts = o

            modes[f"ORT LoRA r={rank}, {nb} active"] = (lm, switch)
    out = {label: [] for label in modes}
    for label, (sess, switch) in modes.items():  # warm-up: first runs allocate
        switch()
        generate(sess, prompt[:8], 2)
    for _ in range(rounds):
        for label, (sess, switch) in modes.items():
            t = time.perf_counter()
            switch()
            t_switch = time.perf_counter() - t
            g = generate(sess, prompt, NEW_TOKENS)
            out[label].append({"switch_s": t_switch, "prompt_s": g.prompt_s, "decode_s": g.decode_s,
                               "total_s": time.perf_counter() - t})
    for label, (sess, _) in modes.items():
        if hasattr(sess, "close"):
            sess.close()
    del modes, recreated
    hf = kv_base.parent.parent / "hf"  # <model>/kv/base-<label> beside <model>/hf
    quantized = any(p.quant is not None for _, p in manifest.placements("onnxruntime"))
    if not quantized and (hf / "config.json").exists():  # PEFT's LoRA runs on the float model
        out["PyTorch + PEFT LoRA r=8"] = _peft_tokens(hf, prompt, threads, rounds)
    # per mode the round of median total (its parts add up, unlike medians of each part)
    return {label: sorted(rows, key=lambda r: r["total_s"])[len(rows) // 2] for label, rows in out.items()}


def bench_ort_lora(work: Path, threads: int, repeats: int, log=print, models: dict | None = None,
                   labels=None, runs: bool = True, tokens: bool = True) -> dict:
    """Each model's exports to `labels` (float32, int8, int4: bench.quantized's builder), baked, then one child
    per base for the runs side by side (`runs`) and one for the time to the first tokens (`tokens`)."""
    from .measure import child_error
    from .quantized import REAL, REAL_BASES, _build_real
    from .probes import bake_once

    out = {}
    for name, spec in (models or REAL).items():
        bases = _build_real(name, spec, work, log, labels or REAL_BASES)
        rows = {}
        for label, base in bases.items():
            cache = base.parent / f"cache-{label}"
            if not runs:
                rows[label] = {}
                _time_to_tokens_row(name, label, base, work, threads, rows, log)
                continue
            if Path("/usr/bin/time").exists():
                bake_once(base, cache, threads)  # the first load, not what is measured here
            for rank in RANKS:  # the graphs are built here, not in the child: its RSS is the engines' alone
                for nb in BRANCHES:
                    add_lora_branches(base, rank, nb)
            p = subprocess.run([sys.executable, "-m", "shira_toolchain.bench.ort_lora", str(base), str(cache),
                                str(threads), str(repeats)], capture_output=True, text=True, timeout=3600)
            if p.returncode != 0:
                rows[label] = {"error": child_error(p)}
                log(f"  {name} {label}: FAILED {rows[label]['error']}")
                continue
            rows[label] = json.loads(p.stdout.strip().splitlines()[-1])
            for r in rows[label]["lora"]:
                log(f"  {name} {label} LoRA r={r['rank']} x{r['adapters']}: decode {r['ratio']['decode']:.2f}x, "
                    f"prefill {r['ratio']['prefill128']:.2f}x SHiRA's time")
            if tokens:
                _time_to_tokens_row(name, label, base, work, threads, rows, log)
        out[name] = rows
    return out


def _time_to_tokens_row(name: str, label: str, base: Path, work: Path, threads: int, rows: dict, log) -> None:
    """rows[label]["tokens"]: the KV-cache export of `base`'s model, baked, timed in a child."""
    from .measure import child_error
    from .probes import bake_once

    kv = _kv_base(work / name, label)
    if Path("/usr/bin/time").exists():
        bake_once(kv, base.parent / f"cache-kv-{label}", threads)
    for rank in RANKS:
        for nb in BRANCHES:
            add_lora_branches(kv, rank, nb)
    p = subprocess.run([sys.executable, "-m", "shira_toolchain.bench.ort_lora", "tokens", str(kv),
                        str(base.parent / f"cache-kv-{label}"), str(threads)], capture_output=True, text=True,
                       timeout=3600)
    rows[label]["tokens"] = (json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else
                             {"error": child_error(p)})
    log(f"  {name} {label} time to {NEW_TOKENS} tokens: " + ", ".join(
        f"{k} {v['total_s']:.2f}s" for k, v in rows[label]["tokens"].items() if isinstance(v, dict)))


def _kv_base(root: Path, label: str) -> Path:
    """The saved model exported with its KV cache and `label`'s quantization (once); a.shira and b.shira beside
    it (the adapters are bound to the model's weights, the same in every export)."""
    from ..export import export_model
    from ..export.kv_cache import with_kv_cache
    from ..model_source import resolve
    from .quantized import BASES

    out = root / "kv" / f"base-{label}"
    if not (out / "manifest.json").exists():
        export_model(with_kv_cache(resolve(str(root / "hf"))), out, None, formats=("onnx",), log=lambda *a: None,
                     **BASES[label])
    for tag in ("a", "b"):
        if not (out.parent / f"{tag}.shira").exists():
            (out.parent / f"{tag}.shira").write_bytes((root / f"{tag}.shira").read_bytes())
    return out


def markdown(report: dict) -> str:
    m = report["machine"]
    def rows_of(command):
        return ", ".join(f"{name} {label}" for name, rows in report["models"].items() for label, row in rows.items()
                         if command in (row.get("command"), row.get("tokens_command")))

    runs_by = "; ".join(f"`{c}` ({s / 60:.0f} min: {rows_of(c)})" for c, s in report.get("seconds_by_command", {}).items())
    lines = ["# SHiRA in place against ONNX Runtime's LoRA, on float32, int8 and int4 bases", "",
             f"{runs_by} on {m['cpu']} ({m['cores']} cores), {report['threads']} thread(s); onnxruntime "
             f"{m['onnxruntime']}. Per base one process: SHiRA in place (a 1% "
             "adapter active), and beside it, one at a time, ORT sessions of the same base with LoRA branches on "
             "every patchable layer, switched with `.onnx_adapter` files. LoRA / SHiRA: medians of 4 alternating "
             "rounds in that process (above 1: LoRA is slower per run).", "",
             "| model | base | LoRA rank | adapters active | decode ms, SHiRA | decode ms, LoRA | LoRA / SHiRA, "
             "decode | prefill-128 ms, SHiRA | prefill-128 ms, LoRA | LoRA / SHiRA, prefill | RSS added by the "
             "LoRA session MB |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, rows in report["models"].items():
        for label, res in rows.items():
            if "error" in res:
                lines.append(f"| {name} | {label} | failed: {res['error']} |||||||||")
                continue
            for r in res.get("lora", []):
                d, p = r["ms"]["decode"], r["ms"]["prefill128"]
                lines.append(f"| {name} | {label} | {r['rank']} | {r['adapters']} | {d['shira']:.1f} | {d['lora']:.1f}"
                             f" | {r['ratio']['decode']:.2f}x | {p['shira']:.0f} | {p['lora']:.0f} | "
                             f"{r['ratio']['prefill128']:.2f}x | {r['rss_added'] / 2**20:,.0f} |")
    tok = [(name, label, res["tokens"]) for name, rows in report["models"].items() for label, res in rows.items()
           if "error" not in res and "tokens" in res]
    if tok:
        lines += ["", f"## Time to the first {NEW_TOKENS} tokens after a switch (KV cache, {PROMPT}-token prompt)", "",
                  "| model | base | mode | switch ms | prompt s | 63 decode steps s | total s | / SHiRA in place |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, label, t in tok:
            if "error" in t:
                lines.append(f"| {name} | {label} | failed: {t['error']} ||||||")
                continue
            ref = t["SHiRA in place"]["total_s"]
            for mode, r in t.items():
                lines.append(f"| {name} | {label} | {mode} | {r['switch_s'] * 1e3:.1f} | {r['prompt_s']:.2f} | "
                             f"{r['decode_s']:.2f} | {r['total_s']:.2f} | {r['total_s'] / ref:.2f}x |")
        lines += ["", "Each mode switches (SHiRA: to the other of two 1% adapters, in place, in two phases (the "
                  "patchable engine answers until the rebuilt prepacked one lands, the rebuild sharing the cores), "
                  "or on the patchable engine; re-created: that adapter added to a copy of the weights and a new "
                  "constant ORT session built from them; ORT: a new RunOptions with its adapters active; PyTorch + "
                  "PEFT (float32 bases only): set_adapter between two r=8 LoRA adapters on every Linear, eager, "
                  "transformers' KV cache), then generates greedily (shira_runtime.generate for the ORT sessions); "
                  "the round of median total of 3, the modes alternating in one process per base.", ""]
    lines += ["", "Switch (click to the new weights): SHiRA in place "
              + ", ".join(f"{name} {label} {res['shira_switch_ms']:.0f} ms" for name, rows in report["models"].items()
                          for label, res in rows.items() if "shira_switch_ms" in res)
              + "; ORT's LoRA builds a new RunOptions (under 0.1 ms) and pays at every run instead. "
              "Decode here is one token without a KV cache (the layers' work per generated token); SHiRA's RSS "
              "is one engine on the base's own packed weights (reports/real_size).", ""]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    from .figures import pyplot, save_png

    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, k in zip(axes, ("decode", "prefill128")):
        for name, rows in report["models"].items():
            for label, res in rows.items():
                if "error" in res:
                    continue
                for nb in BRANCHES:
                    pts = [r for r in res.get("lora", []) if r["adapters"] == nb]
                    if not pts:
                        continue
                    ax.plot([r["rank"] for r in pts], [r["ratio"][k] for r in pts], marker="o",
                            linestyle="-" if nb == 1 else "--",
                            label=f"{name} {label}, {nb} adapter{'s' if nb > 1 else ''}")
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("LoRA rank")
        ax.set_title(f"{k}: ORT LoRA time / SHiRA in place")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("time per run, LoRA / SHiRA")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path)


def run_ort_lora(out_dir, threads: int = 2, repeats: int = 10, work=None, log=print, models: dict | None = None,
                 labels=None, runs: bool = True, tokens: bool = True) -> dict:
    """ort_lora.{json,md,png} in out_dir. The rows measured here replace those of the same model and base in an
    ort_lora.json already there (the others are kept); every row names the command that measured it."""
    import tempfile

    from shira_format.atomic import write_text

    from .measure import machine

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    command = f"shira-bench --ort-lora --out {out_dir} --threads {threads}"
    if models:
        command += f" --models {','.join(models)}"
    if labels:
        command += f" --bases {','.join(labels)}"
    if not runs:
        command += " --tokens-only"
    if not tokens:
        command += " --runs-only"
    with tempfile.TemporaryDirectory() as tmp:
        measured = bench_ort_lora(Path(work or tmp), threads, repeats, log, models, labels, runs, tokens)
    old = out_dir / "ort_lora.json"
    report = json.loads(old.read_text()) if old.exists() else {"models": {}}
    if "command" in report:  # written before rows named their command: one command measured them all
        for rows in report["models"].values():
            for row in rows.values():
                row.setdefault("command", report["command"])
        report["seconds_by_command"] = {report["command"]: report.get("seconds", 0)}
    for name, rows in measured.items():
        for label, row in rows.items():
            before = report["models"].get(name, {}).get(label, {})
            if not runs and "lora" in before:  # keep the runs measured before
                row = {**before, **row}
                row["tokens_command"] = command
            else:
                row["command"] = command
                if not tokens and "tokens" in before:  # keep the time to tokens measured before
                    row.update(tokens=before["tokens"], tokens_command=before.get("tokens_command", before.get("command")))
            report["models"].setdefault(name, {})[label] = row
    report.update({"machine": machine(), "threads": threads, "repeats": repeats})
    report.setdefault("seconds_by_command", {})[command] = time.time() - t0
    named = {row.get(k) for rows in report["models"].values() for row in rows.values() for k in ("command", "tokens_command")}
    report["seconds_by_command"] = {c: t for c, t in report["seconds_by_command"].items() if c in named}
    report.pop("command", None), report.pop("seconds", None)
    write_text(out_dir / "ort_lora.json", json.dumps(report, indent=1))
    write_text(out_dir / "ort_lora.md", markdown(report))
    plot(report, out_dir / "ort_lora.png")
    log(f"ORT LoRA -> {out_dir} ({time.time() - t0:.0f}s)")
    return report


if __name__ == "__main__":  # a child: one base, JSON on the last line of stdout
    import os

    if sys.argv[1] == "tokens":
        kv_dir, cache_dir, n_threads = sys.argv[2:5]
        os.environ.setdefault("OMP_NUM_THREADS", n_threads)
        print(json.dumps(time_to_tokens(Path(kv_dir), Path(cache_dir), int(n_threads))))
    else:
        base_dir, cache_dir, n_threads, n_repeats = sys.argv[1:5]
        os.environ.setdefault("OMP_NUM_THREADS", n_threads)
        print(json.dumps(measure_base(Path(base_dir), Path(cache_dir), int(n_threads), int(n_repeats))))
