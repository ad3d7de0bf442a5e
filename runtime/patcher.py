"""Sparse in-place patching of weight buffers with bit-exact restore.

For each buffer the patcher remembers which entries currently differ from the base (`idx`) and their base
values (`saved`). Applying a new state first restores those entries by overwrite, then saves and writes the
new ones. Nothing is ever subtracted, so after any sequence of operations the base comes back bit-exact.

`plan()` does all the arithmetic and every check without touching a buffer; `commit()` is two scatters per
buffer. The session runs `commit()` under the write side of its lock, so inference never sees a mix.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import AdapterError

EMPTY_IDX = np.zeros(0, dtype=np.int64)
EMPTY_VAL = np.zeros(0, dtype=np.float32)


@dataclass
class BufferPlan:
    idx: np.ndarray  # sorted unique flat indices to write
    values: np.ndarray  # the patched values to write there
    base: np.ndarray  # the base values there (saved for the next restore)


class WeightPatcher:
    def __init__(self, buffers: dict[str, np.ndarray]):
        """`buffers`: placement name -> 1-D writable float32 view of the memory the inference engine reads."""
        self.buffers = buffers
        self.idx = {name: EMPTY_IDX for name in buffers}
        self.saved = {name: EMPTY_VAL for name in buffers}

    def plan(self, terms: dict[str, list[tuple[np.ndarray, np.ndarray, float]]]) -> dict[str, BufferPlan]:
        """`terms`: buffer name -> [(indices, deltas, scale), ...]. Buffers not named are restored to base."""
        plans = {}
        for name in self.buffers:
            parts = terms.get(name, [])
            if not parts:
                plans[name] = BufferPlan(EMPTY_IDX, EMPTY_VAL, EMPTY_VAL)
                continue
            with np.errstate(over="ignore", invalid="ignore"):  # overflow is caught by the isfinite check below
                if len(parts) == 1:
                    idx, delta, scale = parts[0]
                    delta = delta if scale == 1.0 else (delta * np.float32(scale)).astype(np.float32)
                else:  # overlapping indices sum their scaled deltas
                    idx, inverse = np.unique(np.concatenate([p[0] for p in parts]), return_inverse=True)
                    weights = np.concatenate([p[1].astype(np.float64) * p[2] for p in parts])
                    delta = np.bincount(inverse, weights=weights, minlength=idx.size).astype(np.float32)
                base = self._base_values(name, idx)
                values = base + delta
            if not np.all(np.isfinite(values)):
                raise AdapterError(f"buffer {name}: the requested combination produces non-finite weights")
            plans[name] = BufferPlan(idx, values, base)
        return plans

    def _base_values(self, name: str, idx: np.ndarray) -> np.ndarray:
        """Base values at `idx`: live values, except where a patch sits now (then the saved originals)."""
        base = self.buffers[name][idx]
        cur = self.idx[name]
        if cur.size:
            pos = np.searchsorted(cur, idx)
            pos_clipped = np.minimum(pos, cur.size - 1)
            hit = cur[pos_clipped] == idx
            base[hit] = self.saved[name][pos_clipped[hit]]
        return base

    def commit(self, plans: dict[str, BufferPlan]) -> set[str]:
        """Write the plans; returns the names of the buffers whose contents changed."""
        changed = set()
        for name, p in plans.items():
            buf = self.buffers[name]
            if self.idx[name].size:
                buf[self.idx[name]] = self.saved[name]
                changed.add(name)
            if p.idx.size:
                buf[p.idx] = p.values
                changed.add(name)
            self.idx[name], self.saved[name] = p.idx, p.base
        return changed

    @property
    def patched_entries(self) -> int:
        return sum(i.size for i in self.idx.values())
