"""The one task registry: every built-in training objective, by name, for `shira-train --task`, the demos,
the bench and the reports.

A task draws a batch from a seeded generator and is judged by its family's loss:
  causal-lm  next-token cross-entropy (labels -100 are ignored)
             zen, json-doc     next byte on texts that ship with Python
             upper, reverse, vowels and 13 more   prompt-prefix tasks on standard-library docstrings
                                                  (lm_text.PROMPTS)
  image      MSE to a target image, [N, 3, H, W] in [0, 1]
             invert, warm      colour transforms of random images
             sepia, blue-fire, posterize, pencil   styles of bundled photos (styles.py, photos.py)
`--data FILE` (task "text", trainer-side) trains a causal LM on a user's own text instead.
"""
from __future__ import annotations

import codecs
import contextlib
import io
import json
from dataclasses import dataclass
from typing import Callable

import torch

FAMILIES = ("causal-lm", "image")
PREFIX_TASKS = ("upper", "reverse", "vowels", "double", "rot13", "shift", "sort", "nospace", "dash", "title",
                "initials", "lasts", "pairs", "dedup", "atbash", "stars")  # lm_text.PROMPTS (not imported here)


@dataclass(frozen=True)
class Task:
    name: str
    family: str  # one of FAMILIES
    batch: Callable[[torch.Generator, int], dict]  # (generator, batch size) -> model inputs + targets


def zen_of_python() -> str:
    with contextlib.redirect_stdout(io.StringIO()):
        import this
    return codecs.decode(this.s, "rot13")


def _byte_windows(text: Callable[[], str], window: int = 64):
    def batch(g: torch.Generator, n: int) -> dict:
        data = torch.tensor(list(text().encode("utf-8")), dtype=torch.int64)
        starts = torch.randint(0, data.numel() - window - 1, (n,), generator=g)
        return {"input_ids": torch.stack([data[s : s + window] for s in starts])}
    return batch


def _prefix_task(name: str):
    def batch(g: torch.Generator, n: int) -> dict:
        from . import lm_text

        return lm_text.task_batch(name, g, n)
    return batch


def _random_image_task(fn):
    def batch(g: torch.Generator, n: int) -> dict:
        x = torch.rand(n, 3, 32, 32, generator=g)
        return {"image": x, "target": fn(x)}
    return batch


def _style_task(name: str, size: int = 48):
    def batch(g: torch.Generator, n: int) -> dict:
        from . import photos
        from .styles import STYLES

        x = photos.random_crops(g, n, size)
        return {"image": x, "target": STYLES[name](x)}
    return batch


def _warm(x: torch.Tensor) -> torch.Tensor:
    return (x * torch.tensor([1.15, 1.0, 0.8]).view(1, 3, 1, 1)).clamp(0, 1)


TASKS: dict[str, Task] = {t.name: t for t in [
    Task("zen", "causal-lm", _byte_windows(zen_of_python)),
    Task("json-doc", "causal-lm", _byte_windows(lambda: json.__doc__)),
    *(Task(n, "causal-lm", _prefix_task(n)) for n in PREFIX_TASKS),
    Task("invert", "image", _random_image_task(lambda x: 1.0 - x)),
    Task("warm", "image", _random_image_task(_warm)),
    *(Task(n, "image", _style_task(n)) for n in ("sepia", "blue-fire", "posterize", "pencil")),
]}


def tasks_for(family: str) -> dict[str, Task]:
    """The tasks a model of `family` trains on (a module of unknown kind is treated as an image net)."""
    family = "causal-lm" if family == "causal-lm" else "image"
    return {n: t for n, t in TASKS.items() if t.family == family}


def batch(task: str, g: torch.Generator, n: int = 8) -> dict:
    return TASKS[task].batch(g, n)


def loss(family: str, model, b: dict) -> torch.Tensor:
    """The family's training loss of `model` on batch `b`."""
    if family == "causal-lm":
        return model(input_ids=b["input_ids"], labels=b.get("labels", b["input_ids"]), use_cache=False).loss
    return torch.nn.functional.mse_loss(model(b["image"]), b["target"])
