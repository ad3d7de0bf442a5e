"""What one `shira-train` run trains: the task, the SHiRA mask (or the LoRA baseline) and the optimizer settings."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainConfig:
    task: str
    mask: str = "rand"
    r: int = 1
    steps: int = 100
    lr: float = 1e-2
    seed: int = 0
    batch: int = 8
    calib_batches: int = 4
    targets: str | None = None  # regex over torch parameter names; default: every Linear/Conv weight
    lora: bool = False
    data: str | None = None  # LMs: a UTF-8 text file, trained next-token (task "text")
    quantized_base: str | None = None  # an int8/int4 export: train on its integers, within its scales (quantized.py)
    avoid: tuple[str, ...] = ()  # adapter blobs (.shira) whose entries this mask must not pick: disjoint masks
