"""The SHiRA paper's five masks. Each picks exactly `count` entries of a weight viewed as [R, C].

  struct  the diagonal plus every f-th row (f chosen so the rows fill the count; the last row may be partial)
  rand    uniformly random, drawn from the blob format's seeded PRNG so packed blobs store no indices
  wm      largest |W|
  grad    largest |grad W| accumulated over calibration batches
  snip    largest |W * grad W| accumulated over calibration batches (SNIP's connection sensitivity)

Counts follow PEFT: r * (R + C) per layer, so SHiRA and LoRA of rank r train the same number of values.
"""
from __future__ import annotations

import zlib

import numpy as np
import torch
from shira_format.codings import seeded_indices

MASKS = ("struct", "rand", "wm", "grad", "snip")
NEEDS_GRADIENTS = ("grad", "snip")


def layer_seed(seed: int, module: str) -> int:
    """Per-layer PRNG seed: (seed * 1000003 + crc32(module name)) mod 2^64."""
    return (seed * 1_000_003 + zlib.crc32(module.encode("utf-8"))) % 2**64


def _top(scores: np.ndarray, count: int) -> np.ndarray:
    flat = scores.reshape(-1)
    return np.sort(np.argpartition(-flat, count - 1)[:count]) if count < flat.size else np.arange(flat.size)


def struct_indices(rows: int, cols: int, count: int) -> np.ndarray:
    diag = np.arange(min(rows, cols)) * cols + np.arange(min(rows, cols))
    need_rows = max(1, int(np.ceil((count - diag.size) / cols))) if count > diag.size else 0
    stride = max(1, rows // max(need_rows, 1))
    order = np.concatenate([diag] + [r * cols + np.arange(cols) for r in range(0, rows, stride)]
                           + [r * cols + np.arange(cols) for r in range(rows) if r % stride])
    _, first = np.unique(order, return_index=True)
    return np.sort(order[np.sort(first)][:count])


AVOIDABLE = ("wm", "grad", "snip")  # masks ranked by a score: entries to avoid are never picked


def mask_indices(kind: str, weight: torch.Tensor, count: int, module: str, seed: int,
                 grad_score: torch.Tensor | None = None, avoid: np.ndarray | None = None
                 ) -> tuple[np.ndarray, int | None]:
    """-> (sorted flat indices into the weight viewed as [R, C], the PRNG seed if the mask is seed-coded).
    `avoid`: flat indices the mask must not pick (other adapters' entries, for disjoint masks that fuse without
    overlap); only the score-ranked masks (AVOIDABLE) can honour it, and it must leave `count` entries free."""
    rows, cols = weight.shape[0], int(np.prod(weight.shape[1:]))
    if not 0 < count <= rows * cols:
        raise ValueError(f"{module}: {count} entries do not fit a {rows}x{cols} weight")
    if avoid is not None and avoid.size:
        if kind not in AVOIDABLE:
            raise ValueError(f"{module}: mask {kind!r} cannot avoid other adapters' entries (use one of "
                             f"{', '.join(AVOIDABLE)})")
        free = rows * cols - np.unique(avoid).size
        if free < count:
            raise ValueError(f"{module}: {count} entries do not fit the {free} left free by the adapters to avoid")
    w = weight.detach().float().reshape(rows, cols).numpy()
    if kind == "struct":
        return struct_indices(rows, cols, count), None
    if kind == "rand":
        s = layer_seed(seed, module)
        return seeded_indices(s, rows * cols, count), s
    if kind == "wm":
        score = np.abs(w)
    elif grad_score is None:
        raise ValueError(f"{module}: mask {kind!r} needs calibration gradients")
    elif kind in NEEDS_GRADIENTS:  # the caller accumulated the right score: sum |dW| (grad) or sum |W * dW| (snip)
        score = grad_score.reshape(rows, cols).numpy()
    else:
        raise ValueError(f"unknown mask {kind!r}; choose from {', '.join(MASKS)}")
    if avoid is not None and avoid.size:
        score = score.astype(np.float64).reshape(-1)  # a copy: the caller's scores stay as they were
        score[avoid] = -np.inf  # below every real score (all are >= 0)
    return _top(score, count), None
