"""reports/first_open: the first open of a base, as markdown and a PNG."""
from __future__ import annotations

from pathlib import Path

import numpy as np

LABELS = {"plain": "plain ORT session (creation)", "live-first": "in place, first open (live: found + proven)",
          "live-later": "in place, later open (live: found)", "baked-first": "in place, first open (bake)",
          "baked-later": "in place, later open (baked file)"}


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = ["# The first open of a base: in place against a plain session", "",
             f"`{report['command']}` on {m['cpu']} ({m['cores']} cores), {report['threads']} thread(s); onnxruntime "
             f"{m['onnxruntime']}. Each open in its own process; plain and live opens alternate (after one plain "
             f"open not counted), medians of {report['repeats']} (the bake once); \"per round\": the median of each "
             f"round's open against that round's plain session. {report['seconds']:.0f} s in all.", "",
             "| model | open | s | / plain | / plain, per round | peak RSS MB | / plain |", "|---|---|---|---|---|---|---|"]
    for name, rows in report["models"].items():
        plain = rows.get("plain", {})
        for key, label in LABELS.items():
            r = rows.get(key)
            if r is None:
                continue
            if "error" in r:
                lines.append(f"| {name} | {label} | failed: {r['error']} |||||")
                continue
            rel = (f"{r['s'] / plain['s']:.2f}x", f"{r['peak_rss'] / plain['peak_rss']:.2f}x") if "s" in plain else ("-", "-")
            route = "" if key == "plain" or r.get("route") in key else f" (got: {r.get('route')})"
            per = f"{r['per_round']:.2f}x" if "per_round" in r else "-"
            lines.append(f"| {name} | {label}{route} | {r['s']:.1f} | {rel[0]} | {per} | {r['peak_rss'] / 2**20:,.0f} "
                         f"| {rel[1]} |")
    lines += ["", "plain: `ort.InferenceSession(model_prepacked.onnx)`, what any app pays to load the model. The "
              "opens are `ShiraSession(base, mode=\"in-place\")` with `bake=\"auto\"` (live: ORT's packed weights "
              "found in the session's memory; the first open also checks every entry and proves a patch against the "
              "reference output the export ships in sample.npz, later ones check a sample) or `bake=\"always\"` (the first open bakes in a child "
              "process, later ones map the baked file). Every open checks the export's CRC-32s (verify=\"fast\"). "
              "Peak RSS: /usr/bin/time's maximum resident set of the largest process (file pages mapped count).", ""]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    from .figures import pyplot, save_png

    plt = pyplot()

    names = list(report["models"])
    fig, axes = plt.subplots(1, 2, figsize=(12, 1.2 + 1.1 * len(names) * len(LABELS) / 3), squeeze=False)
    keys = list(LABELS)
    y = np.arange(len(names))
    h = 0.8 / len(keys)
    for i, key in enumerate(keys):
        for ax, field, scale in ((axes[0][0], "s", 1.0), (axes[0][1], "peak_rss", 2**30)):
            vals = [report["models"][n].get(key, {}).get(field, 0) / scale for n in names]
            ax.barh(y + (i - len(keys) / 2) * h, vals, h, label=LABELS[key])
    axes[0][0].set_xscale("log")
    axes[0][0].set_xlabel("seconds to an open session, log")
    axes[0][1].set_xlabel("peak RSS, GiB")
    for ax in axes[0]:
        ax.set_yticks(y, names)
    axes[0][1].legend(fontsize=7, loc="lower right")
    fig.suptitle(report["command"], fontsize=8)
    fig.tight_layout()
    save_png(fig, path)
