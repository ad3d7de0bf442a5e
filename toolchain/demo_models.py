"""`shira build-demo-models`: train the style demo's base net and one SHiRA adapter per style, here, from photos
that ship inside scikit-image / scikit-learn. Outputs are committed so the demo needs no training:

  models/style_net.safetensors     the base, trained to reproduce its input
  models/styles/<style>.shira      one packed SHiRA adapter per style (1.93% of the weights), bound to that base
  models/styles/build_report.json  losses, PSNR on the held-out photo, the command and versions
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from . import photos
from .styles import STYLES

MODELS = Path(__file__).resolve().parents[1] / "models"
STYLE_TARGETS = r"^(enc\.2|mix\.0|dec\.3)\.weight$"  # r=1 -> 1,091 values = 1.93% of the net's 56,675
STYLE_MASK = "wm"


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1.0 / F.mse_loss(a.clamp(0, 1), b)))


def train_base(steps: int = 2000, batch: int = 8, size: int = 48, lr: float = 2e-3, seed: int = 0, log=print):
    from tqdm import tqdm

    from shira_models.style_net import build

    torch.manual_seed(seed)
    net = build(trained=False).train()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    g = torch.Generator().manual_seed(seed)
    bar = tqdm(range(steps), desc="style-net base", leave=False)
    for _ in bar:
        x = photos.random_crops(g, batch, size)
        loss = F.mse_loss(net(x), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.5f}")
    net.eval()
    with torch.no_grad():
        ev = photos.eval_crops()
        score = psnr(net(ev), ev)
    log(f"base: reconstruction PSNR on the held-out photo {score:.2f} dB")
    return net, score


def style_task_batch(style: str, g: torch.Generator, batch: int = 8, size: int = 48) -> dict:
    x = photos.random_crops(g, batch, size)
    return {"image": x, "target": STYLES[style](x)}


def build_demo_models(base_steps: int = 2000, style_steps: int = 300, reuse_base: bool = False, log=print) -> dict:
    from safetensors.torch import save_file

    from shira_models.style_net import WEIGHTS

    from .export import export_model
    from .model_source import resolve
    from .pack import pack_adapter
    from .train import TrainConfig, train

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
