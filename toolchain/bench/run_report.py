"""reports/bench: the small-model bench's result as markdown and a PNG, with the paper's anchors beside it."""
from __future__ import annotations

from pathlib import Path


PAPER = ("Paper anchors (SHiRA, NeurIPS 2024): SHiRA vs LoRA switch 4.68x faster on SDXL and 5.71x on LLaMA2-7B end "
         "to end on CPU, up to 16x in a micro-benchmark; unfused LoRA up to +30% inference latency.")


def _ref(row: dict, key: str) -> float:
    """The prepacked baseline of the same runtime as `key`."""
    base = "prepacked_base_et" if key.endswith("_et") else "prepacked_base_ort"
    return row[base]["median_ms"]


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = ["# shira-bench", "", f"`{report['command']}` on {m['cpu']} ({m['cores']} cores), {report['threads']} "
             f"thread(s); torch {m['torch']}, onnxruntime {m['onnxruntime']}. Medians (min-max) of "
             f"{report['repeats']} samples, all in one process ({report.get('seconds', 0):.0f} s in all).", "",
             "## Switch latency", "",
             "| model | method | median ms | min-max ms | vs SHiRA (ORT) |", "|---|---|---|---|---|"]
    for r in report["models"]:
        ref = r["switch"]["shira_onnxruntime"]["median_ms"]
        for k, s in r["switch"].items():
            lines.append(f"| {r['model']} | {k} | {s['median_ms']:.3f} | {s['min_ms']:.3f}-{s['max_ms']:.3f} | "
                         f"{s['median_ms'] / ref:.1f}x |")
    lines += ["", "`patch_kernel_onnxruntime` is the bare WeightPatcher plan+commit on the same buffers; the rest "
              "of `shira_onnxruntime` is the session's validation and locking.", "",
              "## Fusing k adapters in place (equal scales, from one other adapter active)", "",
              "| model | runtime | k | median ms | min-max ms |", "|---|---|---|---|---|"]
    for r in report["models"]:
        for key, s in r.get("fusion", {}).items():
            _, runtime, k = key.split("_")
            lines.append(f"| {r['model']} | {runtime} | {k} | {s['median_ms']:.3f} | {s['min_ms']:.3f}-{s['max_ms']:.3f} |")
    lines += ["", "## Inference after a switch", "",
              "Each ratio is against the prepacked base of the same runtime (ONNX Runtime: every weight an "
              "initializer, prepacked; ExecuTorch: `model_prepacked.pte`). `patchable`: the patchable engine right after "
              "a switch; `two_phase`: the same session once its prepacked engine is installed (issue 7); `inplace`: "
              "ORT's own packed weights patched where they lie, right after a switch (docs/INPLACE.md).", "",
              "| model | shape | method | median ms | vs prepacked base |", "|---|---|---|---|---|"]
    for r in report["models"]:
        for shape, row in r["inference"].items():
            for k, s in row.items():
                lines.append(f"| {r['model']} | {shape} | {k} | {s['median_ms']:.3f} | {s['median_ms'] / _ref(row, k):.2f}x |")
    lines += generation_lines(report)
    if any("two_phase" in r for r in report["models"]):
        lines += ["", "## Two-phase switching", "",
                  "| model | runtime | switch seen by the caller, ms | to prepacked speed, ms | extra memory | auto mode picks |",
                  "|---|---|---|---|---|---|"]
        for r in report["models"]:
            for b, t in r.get("two_phase", {}).items():
                pick = _auto_pick(r.get("auto_mode", {}).get(b))
                lines.append(f"| {r['model']} | {b} | {t['visible_switch']['median_ms']:.3f} | "
                             f"{t['to_full_speed']['median_ms']:.1f} ({t['to_full_speed']['min_ms']:.1f}-"
                             f"{t['to_full_speed']['max_ms']:.1f}) | {t['extra_bytes'] / 1e6:.2f} MB | {pick} |")
    lines += ["", "## Adapter size on disk (same number of trainable values)", "",
              "| model | packed blob (f16) | PEFT SHiRA checkpoint | PEFT LoRA checkpoint | ORT `.onnx_adapter` (LoRA) |",
              "|---|---|---|---|---|"]
    for r in report["models"]:
        s = r["size"]
        lines.append(f"| {r['model']} | {s['blob_f16']:,} B | {s['peft_shira']:,} B | {s['peft_lora']:,} B | "
                     f"{s.get('onnx_adapter', 0):,} B |")
    sc = report.get("scaling")
    if sc:
        lines += ["", f"## Scaling: switch time against model size (1% of every block Linear; copy bandwidth "
                  f"{sc['copy_bandwidth_gbps']:.1f} GB/s)", "",
                  "| model | dtype | parameters | SHiRA switch ms | PEFT LoRA switch ms (rank) | LoRA / SHiRA | "
                  "bandwidth floor ms | dense copy ms |", "|---|---|---|---|---|---|---|---|"]
        for row in sc["rows"]:
            sh, lo = row["shira_switch"]["median_ms"], row["lora_switch"]["median_ms"]
            lines.append(f"| {row['size']} | {row['dtype']} | {row['parameters'] / 1e6:,.0f}M | {sh:.2f} | "
                         f"{lo:.1f} (r={row['lora_rank']}) | {lo / sh:.1f}x | {row['bound_ms']:.2f} | "
                         f"{row['dense_copy_ms']:.1f} |")
    lines += ["", PAPER, "", targets_summary(report), ""]
    return "\n".join(lines)


def _auto_pick(auto: dict | None) -> str:
    """What mode="auto" chose, in words (older reports carry no choice)."""
    if not auto:
        return "-"
    cal = auto.get("calibration")
    return auto["mode"] + (f" (patchable/prepacked {cal['ratio']:.2f}x)" if cal else "")


def generation_lines(report: dict) -> list[str]:
    gens = [r for r in report["models"] if "generation" in r]
    if not gens:
        return []
    lines = ["", "## Generating one token (adapter switched in, ONNX Runtime)", "",
             "| model | context | with the KV cache (`--kv-cache`) ms | recomputing the prefix ms | speed-up |",
             "|---|---|---|---|---|"]
    for r in gens:
        g = r["generation"]
        w, c = g["with_kv_cache"]["median_ms"], g["recompute_prefix"]["median_ms"]
        lines.append(f"| {r['model']} | {g['context']} | {w:.3f} | {c:.3f} | {c / w:.1f}x |")
    return lines


def targets_summary(report: dict) -> str:
    """The issue's targets, checked against this run and stated plainly (met or not)."""
    out = ["## Against the targets", ""]
    sc = report.get("scaling")
    if sc:
        big = max(sc["rows"], key=lambda r: (r["parameters"], r["dtype"] == "float32"))
        x = big["lora_switch"]["median_ms"] / big["shira_switch"]["median_ms"]
        out.append(f"- Switch vs PEFT LoRA switch on the largest model ({big['size']}, {big['dtype']}): {x:.1f}x "
                   f"(target >= 30x): {'met' if x >= 30 else 'NOT met'}.")
    for r in report["models"]:
        sw = r["switch"]
        x = sw["ort_session_recreate"]["median_ms"] / sw["shira_onnxruntime"]["median_ms"]
        out.append(f"- {r['model']}: switch vs ONNX Runtime session re-creation {x:.0f}x (target >= 25x): "
                   f"{'met' if x >= 25 else 'NOT met'}.")
        for shape, row in r["inference"].items():
            for k in ("shira_inplace_ort", "shira_patchable_ort", "shira_two_phase_ort", "shira_patchable_et",
                      "shira_two_phase_et"):
                if k in row:
                    q = row[k]["median_ms"] / _ref(row, k)
                    out.append(f"- {r['model']} {shape} {k}: {q:.2f}x the prepacked base session (target <= 1.02x): "
                               f"{'met' if q <= 1.02 else 'NOT met'}.")
    return "\n".join(out)


def plot(report: dict, path: Path) -> None:
    import matplotlib.ticker

    from .figures import pyplot, save_png

    plt = pyplot()

    n = len(report["models"])
    fig, axes = plt.subplots(2, max(n, 2), figsize=(6.5 * max(n, 2), 8.5), squeeze=False)
    for ax, r in zip(axes[0], report["models"]):
        names = list(r["switch"])
        med = [r["switch"][k]["median_ms"] for k in names]
        lo = [m - r["switch"][k]["min_ms"] for k, m in zip(names, med)]
        hi = [r["switch"][k]["max_ms"] - m for k, m in zip(names, med)]
        ax.barh(names, med, xerr=[lo, hi], color=["tab:green" if k.startswith(("shira", "patch")) else "tab:gray"
                                                  for k in names])
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels collide on short ranges
        ax.set_xlabel("switch latency, ms (log)")
        ax.set_title(f"{r['model']} ({r['parameters']:,} params)")
    ax = axes[1][0]
    if report.get("scaling"):
        from .scaling import plot_scaling

        plot_scaling(report["scaling"], ax)
    ax = axes[1][1]
    labels, ratios, colors = [], [], []
    for r in report["models"]:
        for shape, row in r["inference"].items():
            for k, s in row.items():
                if k.startswith("constant"):
                    continue
                labels.append(f"{r['model']} {shape} {k}")
                ratios.append(s["median_ms"] / _ref(row, k))
                colors.append("tab:green" if ("two_phase" in k or "inplace" in k) else
                              "tab:olive" if "patchable" in k else "tab:gray")
    ax.barh(labels, ratios, color=colors)
    ax.axvline(1.0, color="black", lw=0.8)
    ax.axvline(1.02, color="red", lw=0.8, ls="--", label="target 1.02x")
    ax.tick_params(axis="y", labelsize=6)
    ax.set_xlabel("inference time / prepacked base session of the same runtime")
    ax.set_title("Inference after a switch")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path)
