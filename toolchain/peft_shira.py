"""Make real SHiRA adapters with PEFT (`peft.ShiraConfig`), and PEFT's merged model as the reference output.

The demo's tasks are small objectives of the built-in models, with data that ships with Python itself:
  tiny-llama: next-byte prediction on the Zen of Python (`zen`) and on the `json` module's docstring (`json-doc`);
  style-net:  colour transforms of random images: `invert` (1 - x) and `warm` (scale R up, B down).
"""
from __future__ import annotations

import codecs
import contextlib
import copy
import io
import json
from pathlib import Path

import numpy as np
import torch


def zen_of_python() -> str:
    with contextlib.redirect_stdout(io.StringIO()):
        import this
    return codecs.decode(this.s, "rot13")


LM_TASKS = {"zen": zen_of_python, "json-doc": lambda: json.__doc__}
IMAGE_TASKS = {
    "invert": lambda x: 1.0 - x,
    "warm": lambda x: (x * torch.tensor([1.15, 1.0, 0.8]).view(1, 3, 1, 1)).clamp(0, 1),
}
TASKS = {"tiny-llama": LM_TASKS, "style-net": IMAGE_TASKS}


def task_batch(model_name: str, task: str, g: torch.Generator, batch: int = 8):
    if model_name == "style-net" and task not in IMAGE_TASKS:  # a demo style trained on real photos
        from .demo_models import style_task_batch

        return style_task_batch(task, g, batch)
    if model_name == "tiny-llama" and task not in LM_TASKS:  # a prompt-prefix task (lm_tasks.py)
        from . import lm_tasks

        return lm_tasks.task_batch(task, g, batch)
    if model_name == "tiny-llama":
        data = torch.tensor(list(LM_TASKS[task]().encode("utf-8")), dtype=torch.int64)
        win = 64
        starts = torch.randint(0, data.numel() - win - 1, (batch,), generator=g)
        return {"input_ids": torch.stack([data[s : s + win] for s in starts])}
    x = torch.rand(batch, 3, 32, 32, generator=g)
    return {"image": x, "target": IMAGE_TASKS[task](x)}


def task_loss(model_name: str, model, b) -> torch.Tensor:
    if model_name == "tiny-llama":
        return model(input_ids=b["input_ids"], labels=b.get("labels", b["input_ids"]), use_cache=False).loss
    return torch.nn.functional.mse_loss(model(b["image"]), b["target"])


def train_shira(model_name: str, base: torch.nn.Module, task: str, out_dir, targets: list[str], r: int = 1,
                steps: int = 40, lr: float = 2e-2, seed: int = 0, log=print) -> dict:
    """Train one SHiRA adapter with PEFT for a few steps and save_pretrained it to out_dir."""
    from peft import ShiraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(copy.deepcopy(base), ShiraConfig(r=r, target_modules=targets, random_seed=seed))
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    g = torch.Generator().manual_seed(seed)
    first = last = None
    for _ in range(steps):
        loss = task_loss(model_name, model, task_batch(model_name, task, g))
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
        last = loss.item()
    model.save_pretrained(str(out_dir))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(f"  trained SHiRA adapter {task!r}: {trainable:,} trainable values, loss {first:.3f} -> {last:.3f} "
        f"in {steps} steps")
    return {"task": task, "loss_first": first, "loss_last": last, "trainable": trainable}


def load_peft(base: torch.nn.Module, adapter_dirs: dict[str, Path]):
    """A PeftModel over a copy of `base` holding every adapter under its name."""
    from peft import PeftModel

    names = list(adapter_dirs)
    model = PeftModel.from_pretrained(copy.deepcopy(base), str(adapter_dirs[names[0]]), adapter_name=names[0])
    for n in names[1:]:
        model.load_adapter(str(adapter_dirs[n]), adapter_name=n)
    return model.eval()


def merged_model(peft_model, base: torch.nn.Module, scales: dict[str, float]) -> torch.nn.Module:
    """PEFT's own merge of `scales` (adapter -> scale) into a copy of the base: the reference for the runtime."""
    from peft.tuners.shira.layer import ShiraLayer

    if not scales:
        return base
    m = copy.deepcopy(peft_model)
    for mod in m.modules():
        if isinstance(mod, ShiraLayer):
            for name, s in scales.items():
                mod.set_scale(name, s)
    return m.merge_and_unload(adapter_names=list(scales))


def reference_output(model_name: str, model: torch.nn.Module, inputs: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        if model_name == "tiny-llama":
            return model(input_ids=torch.from_numpy(inputs["input_ids"]), use_cache=False).logits.numpy()
        return model(torch.from_numpy(inputs["image"])).numpy()
