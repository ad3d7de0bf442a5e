"""`shira-train --joint`: several adapters trained together so that they still work when fused.

Adapters trained one by one collapse when summed: each moves the base as if it were alone, and on the tiny LM
three task adapters fused keep ~15% of their accuracy even when their masks share no entry (measured in
reports/fusion). Keeping masks apart is not enough; what works is training for the sum:

  masks   disjoint by construction: every task ranks the entries by its own score (wm |W|; grad/snip its
          calibration gradients) and the tasks take their best free entries in turns, a chunk at a time, so
          no entry belongs to two adapters and every adapter keeps the same count r * (R + C).
  loss    step s trains task t = s mod N:  loss(t alone) + fused_weight * loss(t fused with a random subset of
          the other adapters, 1 to N-1 of them). A random subset, not always all N, so that any selection a
          user fuses later is one the adapters have met.
  fused   language tasks each have their own prompt, so the fused model is judged on task t's answer, deltas
          summed at scale 1 (the runtime's fuse with scales 1). An image net has one output for one input: the
          fused target is the blend (mean) of the subset's targets, deltas at scales 1/k, the fuse a user makes
          to mix k styles equally.

`steps` is per task (N * steps optimizer steps in all), so each adapter gets as many solo updates as when
trained alone; a step costs two forwards. The LoRA twin (`--lora`) trains the same objective with one rank-r
LoRA per task at the same trainable count; it is the baseline the fusion report compares with. Each adapter is
written as its own checkpoint, out/<task>/, that `shira-pack adapter` packs like any other.
"""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.func import functional_call

from ..export import patchable_weights
from .config import TrainConfig
from .loop import fit
from .masks import AVOIDABLE

CHUNKS = 16  # turns per task when dealing entries: fairness between tasks vs. time spent dealing


def deal(orders: list[np.ndarray], count: int) -> list[np.ndarray]:
    """Disjoint masks: `orders[i]` is task i's flat indices, best first (all of one weight). In turns of
    ceil(count / CHUNKS) entries (the first task of a turn rotates), each task takes its best entries that no
    task has taken yet. -> per task, `count` sorted flat indices."""
    n, size = len(orders), orders[0].size
    if n * count > size:
        raise ValueError(f"{n} disjoint masks of {count} entries do not fit a weight of {size} entries "
                         f"(lower --r or train fewer tasks together)")
    taken = np.zeros(size, dtype=bool)
    picked, pos = [[] for _ in orders], [0] * n
    chunk = max(1, math.ceil(count / CHUNKS))
    turn = 0
    while any(sum(len(p) for p in picked[i]) < count for i in range(n)):
        for i in [(turn + j) % n for j in range(n)]:
            need = min(chunk, count - sum(len(p) for p in picked[i]))
            if need <= 0:
                continue
            rest = orders[i][pos[i]:]
            free = np.flatnonzero(~taken[rest])[:need]
            take = rest[free]
            taken[take] = True
            picked[i].append(take)
            pos[i] += int(free[-1]) + 1
        turn += 1
    return [np.sort(np.concatenate(p)) for p in picked]


def disjoint_masks(subject, task_names, cfg: TrainConfig, wanted) -> dict[str, dict[str, np.ndarray]]:
    """task -> torch weight name -> sorted flat indices; no entry in two tasks' masks."""
    from .trainer import calibration_scores

    if cfg.mask not in AVOIDABLE:
        raise ValueError(f"--joint needs a mask ranked by a score ({', '.join(AVOIDABLE)}), not {cfg.mask!r}: "
                         "the tasks take their best entries in turns")
    params = dict(subject.model.named_parameters())
    if cfg.mask == "wm":
        scores = {t: {w: params[w].detach().abs() for w in wanted} for t in task_names}
    else:
        scores = {t: calibration_scores(subject, subject.model, list(wanted), replace(cfg, task=t)) for t in task_names}
    masks = {t: {} for t in task_names}
    for w in wanted:
        p = params[w]
        count = cfg.r * (p.shape[0] + int(np.prod(p.shape[1:])))
        # a stable sort, so equal scores (all tasks' wm) are taken in index order
        orders = [np.argsort(-scores[t][w].reshape(-1).double().numpy(), kind="stable") for t in task_names]
        try:
            for t, idx in zip(task_names, deal(orders, count)):
                masks[t][w] = idx
        except ValueError as e:
            raise ValueError(f"{w}: {e}") from None
    return masks


class _Deltas:
    """The trainable part of every task's adapter, as dense weight changes: SHiRA values scattered at their
    mask, or LoRA's B @ A."""

    def __init__(self, subject, task_names, cfg: TrainConfig, wanted, masks):
        self.params = dict(subject.model.named_parameters())
        self.wanted, self.lora, self.masks = list(wanted), cfg.lora, masks
        g = torch.Generator().manual_seed(cfg.seed)
        self.values: dict[tuple[str, str], torch.Tensor | tuple[torch.Tensor, torch.Tensor]] = {}
        for t in task_names:
            for w in self.wanted:
                p = self.params[w]
                rows, cols = p.shape[0], int(np.prod(p.shape[1:]))
                if cfg.lora:  # PEFT's initialisation: A Kaiming-uniform (a = sqrt 5), B zero
                    bound = 1 / math.sqrt(cols)
                    a = ((torch.rand(cfg.r, cols, generator=g) * 2 - 1) * bound).requires_grad_()
                    self.values[t, w] = (a, torch.zeros(rows, cfg.r, requires_grad=True))
                else:
                    idx = torch.from_numpy(masks[t][w].astype(np.int64))
                    self.values[t, w] = (idx, torch.zeros(idx.numel(), requires_grad=True))

    def trainable(self) -> list[torch.Tensor]:
        return [v for pair in self.values.values() for v in (pair if self.lora else pair[1:])]

    def delta(self, t: str, w: str) -> torch.Tensor:
        p = self.params[w]
        if self.lora:
            a, b = self.values[t, w]
            return (b @ a).view_as(p)
        idx, v = self.values[t, w]
        return torch.zeros(p.numel()).index_add(0, idx, v).view_as(p)

    def weights(self, scales: dict[str, float]) -> dict[str, torch.Tensor]:
        return {w: self.params[w].detach() + sum(s * self.delta(t, w) for t, s in scales.items())
                for w in self.wanted}


class _Applied:
    """The base model called with some adapters' deltas added (functional_call), for tasks.loss."""

    def __init__(self, model, weights):
        self.model, self.weights = model, weights

    def __call__(self, *args, **kwargs):
        return functional_call(self.model, self.weights, args=args, kwargs=kwargs)


def train_jointly(subject, task_names, cfg: TrainConfig, out_root, fused_weight: float = 0.5, log=print,
                  progress: bool = True, save: bool = True):
    """Train one adapter per task together (module docstring); write out_root/<task>/ checkpoints when `save`.
    -> (task -> torch weight name -> dense delta, report)."""
    from . import tasks
    from .trainer import _tasks, task_family

    task_names = list(dict.fromkeys(task_names))
    if len(task_names) < 2:
        raise ValueError("--joint trains several tasks together: give at least two (--task a,b,...)")
    unknown = [t for t in task_names if t not in _tasks(subject) or t == "text"]
    if unknown:
        raise ValueError(f"unknown task {unknown[0]!r} for this model; choose from "
                         f"{', '.join(t for t in _tasks(subject) if t != 'text')}")
    if cfg.avoid or cfg.quantized_base or cfg.data:
        raise ValueError("--joint makes its own disjoint masks on the float model from built-in tasks: "
                         "not with --avoid, --quantized-base or --data")
    if fused_weight < 0 or not math.isfinite(fused_weight):
        raise ValueError(f"--fused-weight {fused_weight}: must be a finite number >= 0")
    family = task_family(subject)
    model = subject.model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    torch.manual_seed(cfg.seed)
    wanted = patchable_weights(model, cfg.targets)
    if not wanted:
        raise ValueError(f"--targets {cfg.targets!r} matches no Linear/Conv weight")
    masks = None if cfg.lora else disjoint_masks(subject, task_names, cfg, wanted)
    deltas = _Deltas(subject, task_names, cfg, wanted, masks)
    g, pick = torch.Generator().manual_seed(cfg.seed), np.random.default_rng(cfg.seed)
    n, step = len(task_names), [0]

    def next_batch():
        t = task_names[step[0] % n]
        step[0] += 1
        others = [o for o in task_names if o != t]
        subset = [t, *pick.choice(others, size=int(pick.integers(1, n)), replace=False).tolist()]
        state = g.get_state()
        b = tasks.batch(t, g, cfg.batch)
        fused_b = b
        if family == "image":  # the blend of the subset's targets on the same images
            targets = [b["target"]]
            for o in subset[1:]:
                g2 = torch.Generator()
                g2.set_state(state)
                ob = tasks.batch(o, g2, cfg.batch)
                if not torch.equal(ob["image"], b["image"]):
                    raise ValueError(f"image tasks {t!r} and {o!r} draw different inputs; --joint trains image "
                                     "tasks that share them (the styles)")
                targets.append(ob["target"])
            fused_b = {"image": b["image"], "target": torch.stack(targets).mean(0)}
        return {"task": t, "subset": subset, "solo": b, "fused": fused_b}

    def loss(b):
        scale = 1.0 if family == "causal-lm" else 1.0 / len(b["subset"])
        solo = tasks.loss(family, _Applied(model, deltas.weights({b["task"]: 1.0})), b["solo"])
        if fused_weight == 0:
            return solo
        fused = tasks.loss(family, _Applied(model, deltas.weights({s: scale for s in b["subset"]})), b["fused"])
        return solo + fused_weight * fused

    kind = "lora" if cfg.lora else "shira"
    run = fit(deltas.trainable(), next_batch, loss, cfg.steps * n, cfg.lr,
              desc=f"{kind} joint {'+'.join(task_names)}", progress=progress)
    out = {t: {w: deltas.delta(t, w).detach().clone() for w in wanted} for t in task_names}
    report = {"config": {**cfg.__dict__, "task": task_names}, "joint": {"tasks": task_names,
              "fused_weight": fused_weight, "steps_per_task": cfg.steps, "optimizer_steps": cfg.steps * n},
              "trainable_values_per_task": sum(v.numel() for v in deltas.trainable()) // n,
              "loss_first": run.losses[0], "loss_last": run.losses[-1],
              "step_ms_median": float(np.median(run.step_s) * 1e3)}
    if save:
        for t in task_names:
            _save(subject, replace(cfg, task=t), deltas, t, masks, Path(out_root) / t, report)
    log(f"{kind} joint {', '.join(task_names)} ({cfg.mask if not cfg.lora else 'lora'}, r={cfg.r}, fused weight "
        f"{fused_weight}): {report['trainable_values_per_task']:,} trainable values per task, loss "
        f"{run.losses[0]:.4f} -> {run.losses[-1]:.4f}, {report['step_ms_median']:.1f} ms/step"
        + (f" -> {out_root}/<task>" if save else ""))
    return out, report


def _save(subject, cfg: TrainConfig, deltas: _Deltas, task: str, masks, out_dir: Path, report: dict) -> None:
    """One task's adapter as the checkpoint `train` writes: PEFT's model built on the same mask (or LoRA), its
    trainable values replaced by the jointly trained ones."""
    from .trainer import build_adapted, save_checkpoint

    model, info = build_adapted(subject, cfg, chosen=None if cfg.lora else masks[task])
    named = dict(model.named_parameters())
    with torch.no_grad():
        for w in deltas.wanted:
            module = w.removesuffix(".weight")
            if cfg.lora:
                a, b = deltas.values[task, w]
                la = next(p for n, p in named.items() if n.endswith(f"{module}.lora_A.default.weight"))
                lb = next(p for n, p in named.items() if n.endswith(f"{module}.lora_B.default.weight"))
                la.copy_(a.view_as(la))
                lb.copy_(b.view_as(lb))
            else:
                v = next(p for n, p in named.items()
                         if n.endswith(f"{module}.shira_weight.default") or n.endswith(f"{module}.shira_weight"))
                v.copy_(deltas.values[task, w][1])
    save_checkpoint(model, info, cfg, {**report, "adapter": info, "task": task}, out_dir)
