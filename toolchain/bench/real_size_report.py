"""reports/real_size: the real-size bench's result as markdown and a PNG."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = ["# Switching at real size", "",
             f"`{report['command']}` on {m['cpu']} ({m['cores']} cores), {report['threads']} thread(s); "
             f"onnxruntime {m['onnxruntime']}, torch {m['torch']}. Each mode runs in its own process (RSS is that "
             f"mode's alone); times are medians of {report['repeats']} runs. {report['seconds']:.0f} s in all.", "",
             "| model | mode | load s | RSS at rest MB | peak RSS over a switch MB | first switch ms | later switches ms "
             "| first run after ms | click-to-result ms | runs after / constant, side by side | to full speed s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    for name, row in report["models"].items():
        for mode, r in row["modes"].items():
            if "error" in r:
                lines.append(f"| {name} | {mode} | failed: {r['error']} |||||||||")
                continue
            ratios = [f"{v:.3f} ({k})" for k, v in r.get("vs_constant", {}).items()]
            shown = f"{mode} ({r['route']})" if r.get("route") else mode
            lines.append(f"| {name} | {shown} | {r['load_s']:.2f} | {r['rss_rest'] / 2**20:,.0f} | "
                         f"{r['rss_peak_switch'] / 2**20:,.0f} | {fmt(r.get('switch_ms'), '.1f')} | "
                         f"{fmt(r.get('switch_median_ms'), '.1f')} | {fmt(r.get('first_run_ms'), '.1f')} | "
                         f"{fmt(r.get('click_to_result_ms'), '.1f')} | {', '.join(ratios) or '-'} | "
                         f"{fmt(r.get('to_full_speed_s'), '.2f')} |")
        bake = row.get("bake", {})
        if "bake_s" in bake:
            lines.append(f"| {name} | first-load bake (child process) | {bake['bake_s']:.1f} | | "
                         f"{bake['bake_peak_rss'] / 2**20:,.0f} |||||||")
        if "bandwidth_floor_ms" in row:
            lines.append(f"| {name} | in-place switch at the copy bandwidth (floor) | | | | | "
                         f"{row['bandwidth_floor_ms']:.1f} |||||")
    lines += ["", "constant: a plain ONNX Runtime session of `model_prepacked.onnx` (the base; never switches). "
              "first switch: the first after load (in place, it copies the pages it touches: copy-on-write); "
              "later switches: the median of switching back and forth. click-to-result: a switch plus the first "
              "run after it (decode for an LM). runs after / constant: this mode's runs after its switches against "
              "a constant-weight session opened in the same process afterwards, alternating (4 rounds). peft-lora: "
              "PyTorch eager, LoRA r=8 on every Linear but the head, unmerge + merge (its runs are torch's). The "
              "bake's peak counts the weight files it maps (page cache) as well as its own memory.", ""]
    first = [(n, row["bake"], row["modes"]["constant"]) for n, row in report["models"].items()
             if "bake_s" in row.get("bake", {}) and "load_s" in row["modes"].get("constant", {})]
    if first:
        lines += ["## The first load: the bake against a plain session", "",
                  "| model | how the weights were found | bake s | plain session s | bake / plain | bake peak RSS MB "
                  "| plain session RSS MB | peak / plain |", "|---|---|---|---|---|---|---|---|"]
        for n, b, c in first:
            lines.append(f"| {n} | {b.get('route', '-')} | {b['bake_s']:.1f} | {c['load_s']:.2f} | "
                         f"{b['bake_s'] / c['load_s']:.0f}x | {b['bake_peak_rss'] / 2**20:,.0f} | "
                         f"{c['rss_rest'] / 2**20:,.0f} | {b['bake_peak_rss'] / c['rss_rest']:.1f}x |")
        lines += ["", "plain session: the constant row (a plain ONNX Runtime session of `model_prepacked.onnx`, "
                  "its creation). The bake runs once per base, CPU and ONNX Runtime version, in a child "
                  "process (`python -m shira_runtime.inplace.bake`); its peak counts the pages of the files it maps.", ""]
    split = [(n, row["modes"]["in-place"], row["bandwidth_floor_ms"]) for n, row in report["models"].items()
             if "restore_median_ms" in row["modes"].get("in-place", {}) and "bandwidth_floor_ms" in row]
    if split:
        lines += ["## The in-place switch against its floor", "",
                  "| model | switch a <-> b ms | restore a (reset) ms | write b (from the base) ms | floor ms | "
                  "switch / floor |", "|---|---|---|---|---|---|"]
        for n, r, floor in split:
            lines.append(f"| {n} | {r['switch_median_ms']:.1f} | {r['restore_median_ms']:.1f} | "
                         f"{r['write_median_ms']:.1f} | {floor:.1f} | {r['switch_median_ms'] / floor:.2f}x |")
        lines += ["", "Floor: every 64-byte line a switch a -> b touches, read and written once at the copy "
                  "bandwidth of a large numpy copy measured in this run. A switch to a decoded adapter is a "
                  "restore and a write per buffer (its base values and new values planned at load).", ""]
    for n, row in report["models"].items():
        many = row.get("many_adapters")
        if not many or "error" in many:
            continue
        lines += [f"## Many adapters loaded ({n}, in place)", "",
                  "| adapters loaded | RSS MB | switch between two decoded ms | switch to one decoded again ms |",
                  "|---|---|---|---|"]
        for c in many["counts"]:
            cold = f"{c['cold_switch_ms']:.0f}" if "cold_switch_ms" in c else "-"
            lines.append(f"| {c['n']} | {c['rss'] / 2**20:,.0f} | {c['warm_switch_ms']:.1f} | {cold} |")
        lines += ["", f"Each adapter touches 1% of every patchable weight; its blob is {many['blob_bytes'] / 2**20:.1f} "
                  f"MB. RSS per loaded adapter (from {many['counts'][-2]['n']} to {many['counts'][-1]['n']}): "
                  f"{many['rss_per_adapter'] / 2**20:.2f} MB, {many['rss_per_adapter'] / many['blob_bytes']:.2f}x "
                  f"its blob: the session keeps the blob and only the {many['plan_cache']} most recently used "
                  "adapters decoded (`plan_cache`); a switch to any other decodes its blob again "
                  "(`prepare(name)` does that ahead).", ""]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    """Per model: memory (at rest, peak over a switch) and click-to-result time, per mode."""
    from .figures import pyplot, save_png

    plt = pyplot()

    names = list(report["models"])
    fig, axes = plt.subplots(2, len(names), figsize=(5.5 * len(names), 7), squeeze=False)
    for j, name in enumerate(names):
        modes = {k: r for k, r in report["models"][name]["modes"].items() if "error" not in r}
        labels = list(modes)
        y = np.arange(len(labels))
        ax = axes[0][j]
        ax.barh(y - 0.2, [modes[k]["rss_rest"] / 2**20 for k in labels], 0.4, label="at rest")
        ax.barh(y + 0.2, [modes[k]["rss_peak_switch"] / 2**20 for k in labels], 0.4, label="peak over a switch")
        ax.set_yticks(y, labels)
        ax.set_xlabel("RSS, MB")
        ax.set_title(name)
        ax.legend(fontsize=7)
        ax = axes[1][j]
        click = [modes[k].get("click_to_result_ms", 0) for k in labels]
        ax.barh(y, [max(c, 1e-3) for c in click], color=["tab:green" if k == "in-place" else "tab:gray" for k in labels])
        ax.set_xscale("log")
        ax.set_yticks(y, labels)
        ax.set_xlabel("click-to-result ms (switch + first run), log")
    fig.tight_layout()
    save_png(fig, path)
