"""`shira report fusion`: how much of each adapter survives when several are fused, SHiRA against LoRA.

Every adapter has the same trainable count (r * (R + C) per weight: SHiRA's mask size, LoRA's rank r) and the
same steps; the recipes differ only in how the adapters were trained (toolchain/train/joint.py):
  alone      each task trained by itself (`shira-train`; SHiRA's snip/wm/... mask picked per task, so masks overlap)
  disjoint   each task trained by itself on the disjoint masks --joint deals (`--joint --fused-weight 0`)
  joint      `shira-train --joint`: disjoint masks, loss = alone + 0.5 * fused with a random subset of the others
Training runs the functions `shira-train` runs, with the arguments the report prints beside each row.

What is judged is what a user gets, not the training's float tensors:
  SHiRA   every checkpoint is packed by `shira-pack adapter` with its defaults (f16 values) against an ONNX export
          of the base, the blobs are loaded into one ShiraSession, "alone" is `switch(task)` and "fused" is
          `fuse(scales, rule)`: the runtime's own merge, in the engine's own weights.
  LoRA    what a LoRA user does to fuse: the dense B @ A deltas summed into a copy of the base in torch (PEFT's
          merge), scale 1 each.

Concept loss:
  LM tasks   each task has its own prompt, so one fused model can do all of them: the loss of a task is its
             answer accuracy alone minus fused (deltas at scale 1), in points; retained = fused / alone.
  styles     one input, one output: three styles fused at scales 1/3 can at best give the blend (mean) of their
             targets, which running the three adapters and averaging their outputs (3 inferences) also gives.
             Concept loss = PSNR of that output ensemble to the blend minus PSNR of the fused model's output, in
             dB (0: fusing the weights loses nothing against running each adapter).
The three-task LM table is trained with several seeds (each seed: new masks' calibration batches, batches,
fused subsets) and reports the mean and the range; the 16-task curve and the styles, one seed.
"""
from __future__ import annotations

import json
import re
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from shira_format.atomic import write_text
from shira_runtime import ShiraSession
from shira_runtime.patcher import RULES, merge
from shira_toolchain.export import export_model
from shira_toolchain.model_source import resolve
from shira_toolchain.pack import pack_adapter
from shira_toolchain.train import TrainConfig, lm_text, photos, train
from shira_toolchain.train.joint import train_jointly
from shira_toolchain.train.styles import STYLES

from .deltas import apply, effective_deltas
from .demo_models import LM_TARGETS, LM_TASKS, psnr  # the shipped LM adapters' layers and tasks, r = 2

STYLE_TARGETS = r"^(enc\.2|mix\.0)\.weight$"  # dec.3 has 3 output channels: 3 disjoint r=1 masks do not fit
FUSED_STYLES = ("sepia", "blue-fire", "pencil")
CURVE_N = (1, 2, 3, 4, 6, 8, 12, 16)
CURVE_SUBSETS = 4  # random subsets per N (one at N = all)
FUSED_WEIGHT = 0.5
SEEDS = (0, 1, 2)
ALL_LINEAR = "SHiRA-snip, joint, every Linear"  # shira-train's default --targets: the three-task table only


def recipes(curve_masks=("snip",)):
    """(label, kind, mask, how, targets): how = alone | disjoint | joint; targets None = every Linear/Conv."""
    out = [(f"SHiRA-{m}, alone", "shira", m, "alone", LM_TARGETS) for m in curve_masks]
    out += [("SHiRA-snip, disjoint", "shira", "snip", "disjoint", LM_TARGETS),
            ("SHiRA-snip, joint", "shira", "snip", "joint", LM_TARGETS),
            (ALL_LINEAR, "shira", "snip", "joint", None),
            ("LoRA, alone", "lora", None, "alone", LM_TARGETS), ("LoRA, joint", "lora", None, "joint", LM_TARGETS)]
    return out


def command(recipe, tasks, r: int, steps: int, lr: float, seed: int, model: str = "tiny-llama") -> str:
    """The `shira-train` line(s) that train this recipe as the report does."""
    label, kind, mask, how, targets = recipe
    opts = (f"--r {r} --steps {steps} --lr {lr:g}" + (f" --targets '{targets}'" if targets else "")
            + (" --lora" if kind == "lora" else f" --mask {mask}"))
    if how == "alone":
        return "; ".join(f"shira-train {model} --task {t} {opts} --seed {seed * len(tasks) + i} --out ckpt/{t}"
                         for i, t in enumerate(tasks))
    fw = "" if how == "joint" else " --fused-weight 0"
    return f"shira-train {model} --task {','.join(tasks)} --joint{fw} {opts} --seed {seed} --out ckpt/tasks"


def fused_deltas(deltas: list[dict], scales: list[float], rule: str) -> dict[str, torch.Tensor]:
    """The runtime's merge of dense deltas: an adapter touches the entries where its delta is non-zero (all of
    them for LoRA)."""
    out = {}
    for w in deltas[0]:
        idx = [np.flatnonzero(d[w].numpy().reshape(-1)) for d in deltas]
        terms = np.concatenate([d[w].numpy().reshape(-1)[i].astype(np.float64) * s
                                for d, i, s in zip(deltas, idx, scales)])
        where = np.concatenate(idx)
        entries, group = np.unique(where, return_inverse=True)
        flat = np.zeros(deltas[0][w].numel(), dtype=np.float64)
        flat[entries] = merge(group, terms, entries.size, rule)
        out[w] = torch.from_numpy(flat.astype(np.float32)).view_as(deltas[0][w])
    return out


class _SessionModel:
    """A patched ShiraSession called like the torch model the accuracy and PSNR helpers take (the exports run
    batch 1: one run per row)."""

    def __init__(self, session: ShiraSession):
        self.session = session

    def __call__(self, image=None, input_ids=None, use_cache=None):
        s = self.session
        if input_ids is not None:
            rows = [s.run({"input_ids": r[None]})["logits"] for r in input_ids.numpy()]
            return SimpleNamespace(logits=torch.from_numpy(np.concatenate(rows)))
        out = s.output_names[0]
        return torch.from_numpy(np.concatenate([s.run({s.input_names[0]: x[None]})[out] for x in image.numpy()]))


class PackedAdapters:
    """SHiRA as a user runs it: each checkpoint packed with `shira-pack adapter`'s defaults, every blob loaded into
    one ShiraSession on the exported base; alone = switch, fused = the runtime's fuse."""

    def __init__(self, base_dir: Path, checkpoints: dict[str, Path], blob_dir: Path, cache_dir: Path):
        blob_dir.mkdir(parents=True, exist_ok=True)
        self.packed = {t: pack_adapter(ck, base_dir, blob_dir / f"{t}.shira") for t, ck in checkpoints.items()}
        self.session = ShiraSession(base_dir, cache_dir=cache_dir)
        for t, rep in self.packed.items():
            self.session.load(rep.out, name=t)

    def model(self, scales: dict[str, float], rule: str = "sum"):
        if len(scales) == 1 and next(iter(scales.values())) == 1.0:
            self.session.switch(next(iter(scales)))
        else:
            self.session.fuse(scales, rule)
        return _SessionModel(self.session)

    def evidence(self) -> dict:
        """What was judged: the blobs' value coding and size, and the session's engine."""
        return {"values": sorted({p.value_coding for p in self.packed.values()}),
                "blob_bytes": {t: p.blob_bytes for t, p in self.packed.items()}, "session_mode": self.session.mode}

    def close(self):
        self.session.close()


class MergedDeltas:
    """LoRA as its users fuse it: the dense deltas summed into a copy of the base in torch."""

    def __init__(self, base: torch.nn.Module, deltas: dict[str, dict]):
        self.base, self.deltas = base, deltas

    def model(self, scales: dict[str, float], rule: str = "sum"):
        if len(scales) == 1 and next(iter(scales.values())) == 1.0:
            return apply(self.base, [self.deltas[next(iter(scales))]])
        return apply(self.base, [fused_deltas([self.deltas[t] for t in scales], list(scales.values()), rule)])

    def evidence(self) -> dict:
        return {"values": ["f32 (torch)"]}

    def close(self):
        pass


def train_recipe(subject, names, recipe, r, steps, lr, targets, tmp: Path, log, seed: int = 0) -> dict:
    """-> task -> checkpoint directory (SHiRA: what shira-pack packs) or dense delta (LoRA)."""
    label, kind, mask, how, _ = recipe
    t0 = time.time()
    if how == "alone":
        out = {}
        for i, t in enumerate(names):
            cfg = TrainConfig(task=t, mask=mask or "snip", r=r, steps=steps, lr=lr, seed=seed * len(names) + i,
                              targets=targets, lora=kind == "lora")
            model, _ = train(subject, cfg, tmp / t, log=lambda *a: None, progress=False)
            if kind == "lora":
                wanted = [w for w in dict(subject.model.named_parameters()) if re.search(targets, w)]
                out[t] = effective_deltas(model, subject.model, wanted)
            else:
                out[t] = tmp / t
    else:
        cfg = TrainConfig(task="", mask=mask or "snip", r=r, steps=steps, lr=lr, targets=targets, seed=seed,
                          lora=kind == "lora")
        deltas, _ = train_jointly(subject, names, cfg, tmp, FUSED_WEIGHT if how == "joint" else 0.0,
                                  log=lambda *a: None, progress=False, save=kind == "shira")
        out = deltas if kind == "lora" else {t: tmp / t for t in names}
    log(f"  {label:<31} seed {seed}: {len(names)} tasks trained in {time.time() - t0:.0f}s")
    return out


def judge(kind: str, subject, trained: dict, base_dir: Path, tmp: Path):
    if kind == "lora":
        return MergedDeltas(subject.model, trained)
    return PackedAdapters(base_dir, trained, tmp / "blobs", tmp.parent / "bake-cache")


def _range(values) -> list[float]:
    return [float(min(values)), float(max(values))]


def lm_section(subject, base_dir, recipe_list, steps, tmp, log, seeds=SEEDS) -> dict:
    base = subject.model
    base_acc = {t: lm_text.answer_accuracy(base, t) for t in lm_text.PROMPTS}
    three, curve = [], []
    for rec in recipe_list:
        label, kind = rec[0], rec[1]
        lr = 1e-2 if kind == "lora" else 2e-2
        targets = rec[4]
        per_rule: dict[str, list[dict]] = {}
        evidence = None
        for seed in seeds:
            work = tmp / "lm3" / label / str(seed)
            d3 = train_recipe(subject, LM_TASKS, rec, 2, steps, lr, targets, work, log, seed)
            j = judge(kind, subject, d3, base_dir, work)
            try:
                alone = {t: lm_text.answer_accuracy(j.model({t: 1.0}), t) for t in LM_TASKS}
                for rule in (RULES if kind == "shira" else ("sum",)):
                    m = j.model({t: 1.0 for t in LM_TASKS}, rule)
                    per_rule.setdefault(rule, []).append(
                        {"seed": seed, "alone": alone, "fused": {t: lm_text.answer_accuracy(m, t) for t in LM_TASKS}})
                evidence = evidence or j.evidence()
            finally:
                j.close()
        for rule, runs in per_rule.items():
            three.append(_three_row(label, rule, runs, evidence,
                                    command(rec, LM_TASKS, 2, steps, lr, 0).replace("--seed 0", "--seed S")))
        if label == ALL_LINEAR:
            continue
        # the curve: all 16 tasks, seed 0
        names = list(lm_text.PROMPTS)
        work = tmp / "lm16" / label
        d = train_recipe(subject, names, rec, 2, steps, lr, targets, work, log)
        j = judge(kind, subject, d, base_dir, work)
        try:
            alone = {t: lm_text.answer_accuracy(j.model({t: 1.0}), t) for t in names}
            rng = np.random.default_rng(0)
            for n in CURVE_N:
                subsets = [names] if n == len(names) else [sorted(rng.choice(names, n, replace=False)) for _ in
                                                             range(CURVE_SUBSETS)]
                ratios = []
                for sub in subsets:
                    m = j.model({t: 1.0 for t in sub})
                    ratios += [lm_text.answer_accuracy(m, t) / max(alone[t], 1e-9) for t in sub]
                curve.append({"recipe": label, "n": n, "retained": float(np.mean(ratios)),
                              "retained_min": float(np.min(ratios))})
        finally:
            j.close()
        log(f"  {label:<31} 16 fused: {curve[-1]['retained']:.0%} retained")
        curve.append({"recipe": label, "alone": alone})
    return {"tasks": list(LM_TASKS), "seeds": list(seeds), "base_accuracy": base_acc, "three": three,
            "curve": curve}


def _three_row(label, rule, runs, evidence, cmd) -> dict:
    """Mean over seeds of alone, fused, retained and concept loss, with each one's range over seeds."""
    tasks = list(runs[0]["alone"])
    mean = lambda key: {t: float(np.mean([r[key][t] for r in runs])) for t in tasks}  # noqa: E731
    kept = [{t: r["fused"][t] / max(r["alone"][t], 1e-9) for t in tasks} for r in runs]
    loss = [concept_loss(r) for r in runs]
    return {"recipe": label, "rule": rule, "alone": mean("alone"), "fused": mean("fused"),
            "retained": {t: float(np.mean([k[t] for k in kept])) for t in tasks},
            "retained_range": {t: _range([k[t] for k in kept]) for t in tasks},
            "concept_loss_points": float(np.mean(loss)), "concept_loss_range": _range(loss),
            "per_seed": runs, "judged": evidence, "command": cmd}


def style_section(subject, base_dir, recipe_list, steps, tmp, log) -> dict:
    base = subject.model
    ev = photos.eval_crops(8)
    blend = torch.stack([STYLES[s](ev) for s in FUSED_STYLES]).mean(0)
    rows, images = [], {"input": ev[0], "blend target": blend[0]}
    for rec in recipe_list:
        label, kind, mask, how, _ = rec
        if (kind == "shira" and mask != "snip") or label == ALL_LINEAR:
            continue
        lr = 1e-2 if kind == "lora" else 3e-2
        work = tmp / "style" / label
        d = train_recipe(subject, FUSED_STYLES, rec, 1, steps, lr, STYLE_TARGETS, work, log)
        j = judge(kind, subject, d, base_dir, work)
        try:
            with torch.no_grad():
                outs = {s: j.model({s: 1.0})(ev) for s in FUSED_STYLES}
                alone = {s: psnr(outs[s], STYLES[s](ev)) for s in FUSED_STYLES}
                ensemble = psnr(torch.stack(list(outs.values())).mean(0), blend)
                for rule in (RULES if kind == "shira" else ("sum",)):
                    out = j.model({s: 1 / 3 for s in FUSED_STYLES}, rule)(ev)
                    rows.append({"recipe": label, "rule": rule, "alone_psnr": alone, "ensemble_psnr": ensemble,
                                 "fused_psnr": psnr(out, blend), "concept_loss_db": ensemble - psnr(out, blend),
                                 "judged": j.evidence()})
                    if rule == "sum":
                        images[label] = out[0]
                        log(f"  {label:<31} styles fused (sum): concept loss {rows[-1]['concept_loss_db']:.2f} dB")
        finally:
            j.close()
    return {"styles": list(FUSED_STYLES), "targets": STYLE_TARGETS, "rows": rows, "images": images}


def concept_loss(row: dict) -> float:
    """Mean over tasks of accuracy alone minus fused, in points."""
    return float(np.mean([(row["alone"][t] - row["fused"][t]) * 100 for t in row["alone"]]))


def fusion_report(out_dir, steps: int = 300, curve_masks=("snip", "wm", "grad", "rand", "struct"), log=print,
                  seeds=SEEDS) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    recipe_list = recipes(curve_masks)
    quiet = lambda *a: None  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        log("LM tasks (tiny-llama):")
        llama = resolve("tiny-llama")
        export_model(llama, tmp / "llama", formats=("onnx",), log=quiet)  # `shira-export model tiny-llama`
        lm = lm_section(llama, tmp / "llama", recipe_list, steps, tmp, log, seeds)
        log("styles (style-net):")
        net = resolve("style-net")
        export_model(net, tmp / "style-net", formats=("onnx",), log=quiet)
        style = style_section(net, tmp / "style-net", recipe_list, steps, tmp, log)
    images = style.pop("images")
    masks = " ".join(curve_masks)
    report = {"command": f"shira report fusion --out {out_dir} --steps {steps} --masks '{masks}'"
                         + (f" --seeds {','.join(map(str, seeds))}" if tuple(seeds) != SEEDS else ""),
              "steps": steps, "fused_weight": FUSED_WEIGHT, "lm": lm, "style": style, "seconds": time.time() - t0,
              "machine": machine()}
    write_text(out_dir / "report.json", json.dumps(report, indent=1))
    plot_png(out_dir / "curve.png", lm["curve"])
    grid_png(out_dir / "styles.png", images)
    write_text(out_dir / "README.md", markdown(report))
    log(f"report -> {out_dir} ({report['seconds']:.0f}s)")
    return report


def machine() -> str:
    """The machine in one line, from the benches' own record of it."""
    from shira_toolchain.bench.measure import machine as record

    m = record()
    return f"{m['cpu']}, {m['cores']} cores"


def plot_png(path: Path, curve: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label in dict.fromkeys(c["recipe"] for c in curve):
        pts = [c for c in curve if c["recipe"] == label and "n" in c]
        style = "--" if label.startswith("LoRA") else "-"
        ax.plot([p["n"] for p in pts], [p["retained"] * 100 for p in pts], style, marker="o", label=label)
    ax.set_xlabel("adapters fused (sum, scale 1)")
    ax.set_ylabel("accuracy fused / alone (%), mean over tasks")
    ax.set_title("16 LM prompt tasks on tiny-llama: what survives fusion")
    ax.set_ylim(0, 110)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def grid_png(path: Path, images: dict, tile: int = 128) -> None:
    from PIL import Image, ImageDraw

    label_h = 14
    sheet = Image.new("RGB", (len(images) * tile, tile + label_h), "white")
    draw = ImageDraw.Draw(sheet)
    for j, (label, t) in enumerate(images.items()):
        img = Image.fromarray((t.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
        sheet.paste(img.resize((tile, tile)), (j * tile, label_h))
        draw.text((j * tile + 2, 1), label[:21], fill="black")
    tmp = path.with_name(f".{path.name}.tmp.png")
    sheet.save(tmp)
    tmp.replace(path)


def markdown(r: dict) -> str:
    lm, st = r["lm"], r["style"]
    seeds = ", ".join(map(str, lm["seeds"]))
    lines = ["# Fusion: what survives when adapters are fused", "",
             f"Generated by `{r['command']}` in {r['seconds'] / 60:.0f} min on {r['machine']}. Every adapter: "
             f"{r['steps']} steps per task, the same trainable count for SHiRA and LoRA (r = 2 on `{LM_TARGETS}` "
             f"for the LM, r = 1 on `{st['targets']}` for the styles). Recipes: *alone* = each task trained by "
             "itself; *disjoint* = by itself on masks that share no entry; *joint* = `shira-train --joint` "
             f"(disjoint masks, loss = alone + {r['fused_weight']} x fused with a random subset of the others); "
             f"*{ALL_LINEAR}* = the same without `--targets`, so every Linear layer (lm_head included) is "
             "adapted at r = 2.", "",
             "**Judged as a user runs it.** Every SHiRA checkpoint is packed by `shira-pack adapter` with its "
             "defaults (f16 values) against an ONNX export of the base, and the blobs are switched (alone) and "
             "fused (`ShiraSession.fuse`, each merge rule) in one ONNX Runtime session. LoRA is fused as its users "
             "do: the dense deltas summed into the base in torch. report.json gives each row's `shira-train` "
             "command, the blobs' sizes and the session's mode.", "",
             "## LM tasks: upper, reverse, vowels fused (accuracy of each task's answer, held-out snippets)", "",
             f"Mean over training seeds {seeds}; in brackets the lowest and highest seed.", "",
             "| recipe | rule | alone | fused | retained | concept loss (points) |", "|---|---|---|---|---|---|"]
    fmt = lambda d: " / ".join(f"{v:.2f}" for v in d.values())  # noqa: E731
    for row in lm["three"]:
        kept = " / ".join(f"{v:.0%} [{lo:.0%}-{hi:.0%}]" for v, (lo, hi) in
                          zip(row["retained"].values(), row["retained_range"].values()))
        lo, hi = row["concept_loss_range"]
        lines.append(f"| {row['recipe']} | {row['rule']} | {fmt(row['alone'])} | {fmt(row['fused'])} | {kept} | "
                     f"{row['concept_loss_points']:.1f} [{lo:.1f}, {hi:.1f}] |")
    lora = {row["recipe"]: row["concept_loss_points"] for row in lm["three"] if row["recipe"].startswith("LoRA")}
    lines += ["", "Concept loss against LoRA's (sum rule; the issue's goal is <= 0.35x):", "",
              "| SHiRA recipe | vs LoRA, alone | vs LoRA, joint |", "|---|---|---|"]
    for row in lm["three"]:
        if row["rule"] == "sum" and row["recipe"].startswith("SHiRA"):
            lines.append(f"| {row['recipe']} | {_ratio(row['concept_loss_points'], lora.get('LoRA, alone'))} | "
                         f"{_ratio(row['concept_loss_points'], lora.get('LoRA, joint'))} |")
    lines += ["", "## 2 to 16 LM adapters fused (seed 0)", "", "![curve](curve.png)", "",
              "| recipe | " + " | ".join(f"N={n}" for n in CURVE_N) + " |", "|---|" + "---|" * len(CURVE_N)]
    for label in dict.fromkeys(c["recipe"] for c in lm["curve"]):
        pts = {c["n"]: c["retained"] for c in lm["curve"] if c["recipe"] == label and "n" in c}
        lines.append(f"| {label} | " + " | ".join(f"{pts[n]:.0%}" for n in CURVE_N) + " |")
    lines += ["", f"Mean of fused / alone accuracy over every task of {CURVE_SUBSETS} random subsets of N tasks "
              "(the 16 tasks of lm_text.PROMPTS), deltas summed at scale 1.", "",
              "## Styles: sepia, blue-fire, pencil fused at scales 1/3 (seed 0)", "",
              "| recipe | rule | PSNR alone (own style) | ensemble -> blend | fused -> blend | concept loss (dB) |",
              "|---|---|---|---|---|---|"]
    for row in st["rows"]:
        lines.append(f"| {row['recipe']} | {row['rule']} | {' / '.join(f'{v:.1f}' for v in row['alone_psnr'].values())}"
                     f" | {row['ensemble_psnr']:.2f} | {row['fused_psnr']:.2f} | {row['concept_loss_db']:.2f} |")
    lora_db = {row["recipe"]: row["concept_loss_db"] for row in st["rows"] if row["recipe"].startswith("LoRA")}
    lines += ["", "Concept loss against LoRA's (sum rule):", "",
              "| SHiRA recipe | vs LoRA, alone | vs LoRA, joint |", "|---|---|---|"]
    for row in st["rows"]:
        if row["rule"] == "sum" and row["recipe"].startswith("SHiRA"):
            lines.append(f"| {row['recipe']} | {_ratio(row['concept_loss_db'], lora_db.get('LoRA, alone'), 'dB')} | "
                         f"{_ratio(row['concept_loss_db'], lora_db.get('LoRA, joint'), 'dB')} |")
    lines += ["", "![styles](styles.png)", "",
              "The blend target is the mean of the three styles' targets; the ensemble runs each adapter alone and "
              "averages the three outputs (3 inferences); the fused model is one inference with the three deltas "
              "at 1/3. Concept loss = ensemble PSNR - fused PSNR (negative: fusing beats the ensemble)."]
    return "\n".join(lines) + "\n"


def _ratio(a: float, b: float | None, unit: str = "points") -> str:
    if b is None:
        return "-"
    if b <= 0:
        return f"{a:.2f} vs {b:.2f} {unit} (LoRA loses nothing)"
    return f"{a / b:.2f}x"
