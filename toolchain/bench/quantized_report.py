"""reports/quantized: the quantized-bases bench's result as markdown and a PNG."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def markdown(report: dict) -> str:
    """The report as markdown: a template, one table after another (long, but flat: no logic to split out)."""
    m = report["machine"]
    names = {"lm": "tiny-llama", "style": "style net", "real": "168M, ONNX Runtime", "executorch": "168M, ExecuTorch"}
    runs = {}
    for part, sec in report.get("sections", {}).items():
        runs.setdefault(sec["command"], []).append(names[part] + (f" {sec['seconds']:.0f} s" if sec["seconds"] else ""))
    lines = ["# Quantized bases", "",
             f"On {m['cpu']} ({m['cores']} cores), {report['threads']} thread(s). Measured by:", "",
             *[f"- `{cmd}`: {', '.join(parts)}" for cmd, parts in runs.items()], "",
             "## Quality: tiny-llama and its task adapters (models/lm_tasks)", "",
             "Accuracy: teacher-forced answer characters on 32 held-out snippets. `float-trained`: the shipped "
             "adapter (trained on the float32 base), written into the integers. `trained on the base`: the same "
             "recipe with `shira-train --quantized-base` (frozen integers, values kept within the scales). "
             "`kept`: how much of the float-trained delta the base holds at its entries "
             "(1 - |held - (W + delta)| / |delta|). `merged, then quantized`: the float-trained adapter merged "
             "into the float32 model, the whole model quantized with the same settings. Every base makes q/v/up/"
             "down patchable (what the adapters touch); weights: the files the engine loads.", "",
             "| base | weights | bits/byte | task | base alone | float-trained | clamped | kept | trained on the "
             "base | clamped | merged, then quantized |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, row in report["quality"].items():
        for i, (task, r) in enumerate(row["tasks"].items()):
            head = (f"{label} | {row['weights_bytes'] / 1e6:.2f} MB | {row['bits_per_byte']:.3f}" if i == 0
                    else " | | ")
            f = r["float_trained"]
            q = r.get("trained_on_base")
            m = r.get("merged_then_quantized")
            lines.append(f"| {head} | {task} | {f['accuracy_base']:.2f} | {f['accuracy']:.2f} | "
                         f"{f['clamped']} of {f['entries']} | {f['delta_kept']:.2f} | "
                         + (" / ".join(f"{x['accuracy']:.2f}" for x in q) + " | "
                            + " / ".join(str(x["clamped"]) for x in q) + " | " if q else "- | - | ")
                         + (f"{m['accuracy']:.2f} |" if m else "- |"))
    if report.get("blobs"):
        lines += ["", "Adapter blobs: the same files load on every base (float values, re-quantized by the runtime "
                  "against each base's scales): " + "; ".join(
                      f"{d}: " + ", ".join(f"{n} {b / 1e3:.1f} kB" for n, b in blobs.items())
                      for d, blobs in report["blobs"].items()) + "."]
    if report.get("style"):
        lines += ["", "## Quality: the style net and its style adapters (models/styles)", "",
                  "PSNR to each style on the held-out photo (8 crops of 96 px, as models/styles/build_report.json), "
                  "through the runtime. Convolutions are 8-bit per channel in every quantized base (DequantizeLinear "
                  "feeding Conv); the Linear layers follow the mode. Patchable: what the adapters touch (enc.2, mix.0, "
                  "dec.3); the other weights are quantized constants. `image`: one 256x256 image with `sepia` "
                  "switched in, against the same base's constant-weight session, side by side.", "",
                  "`vs fp32`: this base's constant session against the float32 one, alternating in one process.", "",
                  "| base | weights | session | image ms: session / constant | vs fp32 | style | base alone | "
                  "adapter | clamped | kept | merged, then quantized |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for label, row in report["style"].items():
            for i, (style, r) in enumerate(row["styles"].items()):
                im = row["image_ms"]
                head = (f"{label} | {row['weights_bytes'] / 1e3:.0f} kB | {row['session_mode']} | "
                        f"{im['session']:.1f} / {im['constant']:.1f} | {row.get('image_vs_fp32', float('nan')):.2f}x"
                        if i == 0 else " | | | | ")
                mq = r.get("merged_then_quantized")
                lines.append(f"| {head} | {style} | {r['psnr_base']:.2f} dB | {r['psnr']:.2f} dB | "
                             f"{r['clamped']} of {r['entries']} | {r['delta_kept']:.2f} | "
                             + (f"{mq:.2f} dB |" if mq is not None else "- |"))
    lines += ["", "## Size and speed at 168M parameters (Llama-shaped, random weights, random 1% adapters)", "",
              "In place against the same base's constant-weight session (`model_prepacked.onnx` as ORT loads it), "
              "each in its own process; `runs after` is side by side in one process (1.00 = as fast).", "",
              "`patchable weights`: weights.safetensors (the token embedding, a Gather, stays float32 in the "
              "model file). RSS at rest: after loading and a few runs, before any adapter.", "",
              "| base | patchable weights | bake s | bake peak RSS | RSS at rest: constant | in place | switch ms "
              "(later) | "
              "first run after, ms | runs after: decode | prefill 128 |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, rows in report["real_size"].items():
        for label, row in rows.items():
            c, ip, b = row["modes"].get("constant", {}), row["modes"].get("in-place", {}), row.get("bake", {})
            vs = ip.get("vs_constant", {})
            lines.append(
                f"| {name} {label} | {row['weights_bytes'] / 1e6:.0f} MB | {b.get('bake_s', float('nan')):.1f} | "
                f"{b.get('bake_peak_rss', 0) / 2**30:.2f} GB | {c.get('rss_rest', 0) / 2**20:.0f} MB | "
                f"{ip.get('rss_rest', 0) / 2**20:.0f} MB ({ip.get('session_mode', ip.get('error', '?'))}) | "
                f"{ip.get('switch_median_ms', float('nan')):.1f} | {ip.get('first_run_ms', float('nan')):.1f} | "
                f"{vs.get('decode', float('nan')):.2f}x | {vs.get('prefill128', float('nan')):.2f}x |")
    if report.get("executorch"):
        lines += ["", "## ExecuTorch (XNNPACK) at 168M parameters", "",
                  "The same model exported with `--format pte`. float32: two-phase (the Linear weights are patched "
                  "live in model.pte, which XNNPACK reads unpacked at every run, while model_prepacked.pte is "
                  "rebuilt in the background: `full speed` is when runs use it again). Quantized: XNNPACK packs "
                  "integer weights at load, so a switch writes the .pte's integers and reloads the method "
                  "(`reloads`), and is at full speed when it returns. `constant`: the constant-weight program "
                  "(model_prepacked.pte for float32, model.pte when quantized) loaded the plain way (ExecuTorch's "
                  "Runtime), its RSS in its own process, its runs side by side with the session's after a switch "
                  "(1.00 = as fast).", "",
                  "| base | .pte | RSS at rest: constant | ShiraSession | switch ms | full speed ms | reloads per "
                  "switch | decode, constant | prefill 128, constant | runs after: decode | prefill 128 |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, rows in report["executorch"].items():
            for label, r in rows.items():
                if "error" in r:
                    lines.append(f"| {name} {label} | failed: {r['error']} | | | | | | | | | |")
                    continue
                vs, ms = r["vs_constant"], r["run_ms"]
                lines.append(f"| {name} {label} | {r['pte_bytes'] / 1e6:.0f} MB | "
                             f"{r.get('plain_rss_rest', 0) / 2**20:.0f} MB | {r['rss_rest'] / 2**20:.0f} MB | "
                             f"{r['switch_median_ms']:.0f} | {r['full_speed_median_ms']:.0f} | "
                             f"{r['reloads_per_switch']:.1f} | "
                             f"{ms.get('decode', float('nan')):.1f} ms | {ms.get('prefill128', float('nan')):.0f} ms | "
                             f"{vs.get('decode', float('nan')):.2f}x | {vs.get('prefill128', float('nan')):.2f}x |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    """Left: task accuracy per base (with the adapter patched in, and merged-then-quantized). Right: RSS at rest
    and switch time at 168M per base."""
    from .figures import pyplot, save_png

    plt = pyplot()

    style = report.get("style") or {}
    fig, axes = plt.subplots(1, 3 if style else 2, figsize=(19 if style else 13, 4.5))
    a, b = axes[0], axes[1]
    if style:  # PSNR to each style with its adapter written into each base
        c = axes[2]
        names = list(next(iter(style.values()))["styles"])
        x = np.arange(len(names))
        width = 0.8 / len(style)
        for i, (label, row) in enumerate(style.items()):
            c.bar(x + (i - (len(style) - 1) / 2) * width, [row["styles"][n]["psnr"] for n in names], width,
                  label=label)
        c.plot(x, [next(iter(style.values()))["styles"][n]["psnr_base"] for n in names], "k_", markersize=25,
               label="float32 base alone")
        c.set_xticks(x, names)
        c.set_ylabel("PSNR to the style, dB")
        c.set_title("style net: style adapters on quantized bases")
        c.legend(fontsize=7)
    labels = list(report["quality"])
    x = np.arange(len(labels))
    kinds = (("float_trained", "float-trained adapter"), ("trained_on_base", "trained on the base"),
             ("merged_then_quantized", "merged, then quantized"))
    for i, (key, text) in enumerate(kinds):
        def acc(r):
            v = r[key]
            return np.mean([x["accuracy"] for x in v]) if isinstance(v, list) else v["accuracy"]
        vals = [np.mean([acc(r) for r in report["quality"][lb]["tasks"].values()])
                if key in next(iter(report["quality"][lb]["tasks"].values())) else 0 for lb in labels]
        a.bar(x + (i - 1) * 0.27, vals, 0.27, label=text)
    base_alone = [np.mean([r["float_trained"]["accuracy_base"] for r in report["quality"][lb]["tasks"].values()])
                  for lb in labels]
    a.plot(x, base_alone, "k_", markersize=30, label="base alone")
    a.set_xticks(x, [lb.replace(", ", "\n") for lb in labels], fontsize=8)
    a.set_ylabel("answer accuracy, mean of the 3 tasks")
    a.set_title("tiny-llama task adapters on quantized bases")
    a.legend(fontsize=7)
    for name, rows in report["real_size"].items():
        names = list(rows)
        rest = [rows[k]["modes"].get("in-place", {}).get("rss_rest", 0) / 2**20 for k in names]
        const = [rows[k]["modes"].get("constant", {}).get("rss_rest", 0) / 2**20 for k in names]
        y = np.arange(len(names))
        b.barh(y - 0.2, const, 0.4, label="constant session")
        b.barh(y + 0.2, rest, 0.4, label="in place")
        for j, k in enumerate(names):
            sw = rows[k]["modes"].get("in-place", {}).get("switch_median_ms")
            if sw is not None:
                b.text(rest[j], y[j] + 0.2, f" switch {sw:.0f} ms", va="center", fontsize=7)
        b.set_yticks(y, names)
        b.set_xlabel("RSS at rest, MB")
        b.set_title(name)
        b.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path)
