"""Real SHiRA adapters made by PEFT itself (`peft.ShiraConfig`), and PEFT's merged model as the reference
output the runtime is checked against. Tasks come from the one registry (tasks.py).
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from . import tasks
from .loop import fit


def train_shira(family: str, base: torch.nn.Module, task: str, out_dir, targets: list[str], r: int = 1,
                steps: int = 40, lr: float = 2e-2, seed: int = 0, log=print) -> dict:
    """Train one SHiRA adapter with PEFT for a few steps and save_pretrained it to out_dir."""
    from peft import ShiraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(copy.deepcopy(base), ShiraConfig(r=r, target_modules=targets, random_seed=seed))
    model.train()
    g = torch.Generator().manual_seed(seed)
    run = fit(model.parameters(), lambda: tasks.batch(task, g), lambda b: tasks.loss(family, model, b), steps, lr)
    first, last = run.losses[0], run.losses[-1]
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


def reference_output(family: str, model: torch.nn.Module, inputs: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        if family == "causal-lm":
            return model(input_ids=torch.from_numpy(inputs["input_ids"]), use_cache=False).logits.numpy()
        return model(torch.from_numpy(inputs["image"])).numpy()
