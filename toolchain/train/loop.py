"""The one training loop: Adam (AdamW with weight decay) over the given parameters, with an optional warm-up
and cosine schedule, a progress bar, and per-step loss and time. Adapters, baselines and the demos' base
models all train through it, so their step times are measured the same way.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class Fit:
    losses: list[float]  # per step
    step_s: list[float]  # per step: forward + backward + optimizer step (not the batch's creation)
    optimizer_state_bytes: int


def fit(params, batch_fn: Callable[[], dict], loss_fn: Callable[[dict], torch.Tensor], steps: int, lr: float, *,
        weight_decay: float = 0.0, warmup: int = 0, cosine: bool = False, desc: str = "train",
        progress: bool = False, after_step: Callable[[], None] | None = None) -> Fit:
    """`after_step`: called after every optimizer step (e.g. to project the parameters back into a range)."""
    from tqdm import tqdm

    params = [p for p in params if p.requires_grad]
    opt = (torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay) if weight_decay
           else torch.optim.Adam(params, lr=lr))
    sched = None
    if warmup or cosine:
        def factor(s: int) -> float:
            w = min(1.0, s / warmup) if warmup else 1.0
            return w * (0.5 * (1 + math.cos(math.pi * s / steps)) if cosine else 1.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    losses, step_s = [], []
    bar = tqdm(range(steps), desc=desc, disable=not progress, leave=False)
    for _ in bar:
        b = batch_fn()
        t = time.perf_counter()
        loss = loss_fn(b)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if after_step is not None:
            after_step()
        if sched is not None:
            sched.step()
        step_s.append(time.perf_counter() - t)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    state = sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values()
                if isinstance(v, torch.Tensor) and v.ndim > 0)
    return Fit(losses, step_s, state)
