"""`shira build-demo-models`: train the style demo's base net and one SHiRA adapter per style, here, from photos
that ship inside scikit-image / scikit-learn. Outputs are committed so the demo needs no training:

  models/style_net.safetensors     the base, trained to reproduce its input
  models/styles/<style>.shira      one packed SHiRA adapter per style (1.93% of the weights), bound to that base
  models/styles/build_report.json  losses, PSNR on the held-out photo, the command and versions
  models/tiny_llama.safetensors    the small LM, trained on standard-library docstrings (lm_text.py)
  models/lm_tasks/<task>.shira     one packed SHiRA adapter per prompt-prefix task
  models/lm_tasks/build_report.json
"""
from __future__ import annotations

import itertools
import json
import math
import re
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from shira_toolchain.bench.measure import psnr
from shira_toolchain.train import lm_text, photos
from shira_toolchain.train.loop import fit
from shira_toolchain.train.styles import STYLES

MODELS = Path(__file__).resolve().parents[1] / "models"
STYLE_TARGETS = r"^(enc\.2|mix\.0|dec\.3)\.weight$"  # r=1 -> 1,091 values = 1.93% of the net's 56,675
STYLE_MASK = "wm"


def train_base(steps: int = 2000, batch: int = 8, size: int = 48, lr: float = 2e-3, seed: int = 0, log=print):
    from shira_models.style_net import build

    torch.manual_seed(seed)
    net = build(trained=False).train()
    g = torch.Generator().manual_seed(seed)
    fit(net.parameters(), lambda: photos.random_crops(g, batch, size), lambda x: F.mse_loss(net(x), x), steps, lr,
        cosine=True, desc="style-net base", progress=True)
    net.eval()
    with torch.no_grad():
        ev = photos.eval_crops()
        score = psnr(net(ev), ev)
    log(f"base: reconstruction PSNR on the held-out photo {score:.2f} dB")
    return net, score


def build_demo_models(base_steps: int = 2000, style_steps: int = 300, reuse_base: bool = False, log=print) -> dict:
    from safetensors.torch import save_file
    from shira_models.style_net import WEIGHTS
    from shira_toolchain.export import export_model
    from shira_toolchain.model_source import resolve
    from shira_toolchain.pack import pack_adapter
    from shira_toolchain.train import TrainConfig, train

    t0 = time.time()
    if reuse_base and WEIGHTS.exists():
        old = json.loads((MODELS / "styles" / "build_report.json").read_text())["base"]
        base_steps, base_psnr = old["steps"], old["psnr_held_out"]
        log(f"base: reusing {WEIGHTS.name} ({base_psnr:.2f} dB)")
    else:
        net, base_psnr = train_base(base_steps, log=log)
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(WEIGHTS))
    subject = resolve("style-net")  # loads the committed weights
    out = MODELS / "styles"
    work = out / ".build"
    export_model(subject, work / "base", formats=("onnx",), log=log)
    report = {"command": "shira build-demo-models", "targets": STYLE_TARGETS, "mask": STYLE_MASK, "base": {"steps": base_steps, "psnr_held_out": base_psnr},
              "styles": {}}
    for style in STYLES:
        cfg = TrainConfig(task=style, mask=STYLE_MASK, r=1, steps=style_steps, lr=3e-2, targets=STYLE_TARGETS)
        model, rep = train(subject, cfg, work / "peft" / style, log=log)
        pack_adapter(work / "peft" / style, work / "base", out / f"{style}.shira", name=style)
        with torch.no_grad():
            ev = photos.eval_crops()
            target = STYLES[style](ev)
            report["styles"][style] = {"psnr_adapter": psnr(model(ev), target), "psnr_base": psnr(subject.model(ev), target),
                                       "trainable_values": rep["trainable_values"], "loss_first": rep["loss_first"],
                                       "loss_last": rep["loss_last"]}
        log(f"  {style}: PSNR to the style on the held-out photo {report['styles'][style]['psnr_adapter']:.2f} dB "
            f"(base alone {report['styles'][style]['psnr_base']:.2f} dB)")
    report["seconds"] = time.time() - t0
    (out / "build_report.json").write_text(json.dumps(report, indent=1))
    return report


LM_TARGETS = r"(q_proj|v_proj|up_proj|down_proj)\.weight$"
LM_MASK = "snip"
LM_TASKS = ("upper", "reverse", "vowels")  # the shipped adapters (lm_text.PROMPTS has 13 more for fusion studies)


def train_lm_base(steps: int = 1500, lr: float = 3e-3, seed: int = 0, log=print):
    from shira_models.tiny_llama import build

    torch.manual_seed(seed)
    lm = build(trained=False).train()
    g = torch.Generator().manual_seed(seed)
    fit(lm.parameters(), lambda: lm_text.text_batch(g),
        lambda b: lm(input_ids=b["input_ids"], labels=b["labels"], use_cache=False).loss, steps, lr,
        weight_decay=0.01, warmup=100, cosine=True, desc="tiny-llama base", progress=True)
    lm.eval()
    with torch.no_grad():
        b = lm_text.text_batch(torch.Generator().manual_seed(99), 32, held_out=True)
        held = float(lm(input_ids=b["input_ids"], labels=b["labels"], use_cache=False).loss)
    log(f"tiny-llama base: held-out next-byte loss {held:.3f} nats ({held / math.log(2):.2f} bits/byte)")
    return lm, held


def build_lm_models(base_steps: int = 1500, task_steps: int = 300, reuse_base: bool = False, log=print) -> dict:
    from safetensors.torch import save_file
    from shira_models.tiny_llama import WEIGHTS
    from shira_toolchain.export import export_model
    from shira_toolchain.model_source import resolve
    from shira_toolchain.pack import pack_adapter
    from shira_toolchain.train import TrainConfig, train

    from .deltas import apply, effective_deltas

    t0 = time.time()
    out = MODELS / "lm_tasks"
    if reuse_base and WEIGHTS.exists():
        old = json.loads((out / "build_report.json").read_text())["base"]
        base_steps, held = old["steps"], old["held_out_loss"]
    else:
        lm, held = train_lm_base(base_steps, log=log)
        save_file({k: v.contiguous() for k, v in lm.state_dict().items()}, str(WEIGHTS))
    subject = resolve("tiny-llama")
    work = out / ".build"
    export_model(subject, work / "base", formats=("onnx",), log=log)
    report = {"command": "shira build-demo-models --only lm", "targets": LM_TARGETS, "mask": LM_MASK,
              "base": {"steps": base_steps, "held_out_loss": held}, "tasks": {}}
    weights = sum(p.numel() for p in subject.model.parameters())
    deltas = {}
    for i, task in enumerate(LM_TASKS):
        cfg = TrainConfig(task=task, mask=LM_MASK, r=2, steps=task_steps, lr=2e-2, seed=i, targets=LM_TARGETS)
        model, rep = train(subject, cfg, work / "peft" / task, log=log)
        pack_adapter(work / "peft" / task, work / "base", out / f"{task}.shira", name=task)
        report["tasks"][task] = {"accuracy_adapter": lm_text.answer_accuracy(model, task),
                                 "accuracy_base": lm_text.answer_accuracy(subject.model, task),
                                 "trainable_values": rep["trainable_values"],
                                 "share_of_weights": rep["trainable_values"] / weights}
        log(f"  {task}: answer accuracy {report['tasks'][task]['accuracy_adapter']:.3f} "
            f"(base alone {report['tasks'][task]['accuracy_base']:.3f})")
        deltas[task] = effective_deltas(model, subject.model, [t for t in dict(subject.model.named_parameters())
                                                               if re.search(LM_TARGETS, t)])
    # fusion judged per task: each task's own prefix still selects its behaviour in the fused model
    report["fusion"] = {}
    for k in (2, 3):
        for combo in itertools.combinations(LM_TASKS, k):
            fused = apply(subject.model, [deltas[t] for t in combo])
            report["fusion"]["+".join(combo)] = {t: lm_text.answer_accuracy(fused, t) for t in combo}
            log(f"  fused {'+'.join(combo)}: " + ", ".join(f"{t} {a:.3f}" for t, a in
                                                          report["fusion"]["+".join(combo)].items()))
    report["seconds"] = time.time() - t0
    (out / "build_report.json").write_text(json.dumps(report, indent=1))
    return report
