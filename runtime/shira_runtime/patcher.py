"""Sparse in-place patching of weight buffers with bit-exact restore.

For each buffer the patcher remembers which entries currently differ from the base (`idx`) and their base
values (`saved`). Applying a new state first restores those entries by overwrite, then saves and writes the
new ones. Nothing is ever subtracted, so after any sequence of operations the base comes back bit-exact.

`plan()` does all the arithmetic and every check without touching a buffer; `commit()` is a scatter (restore),
a gather (save) and a scatter (write) per buffer, nothing more. The session runs `commit()` under the write side
of its lock, so inference never sees a mix. A plan made ahead (`switch_plan`: one adapter at scale 1, at load)
already holds the base values and the values to write, so its commit is two scatters: restore, write.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from shira_format.errors import AdapterError
from shira_format.quant import Quant, requantize

# How overlapping entries combine when several adapters are fused (docs/FORMAT.md §6.1). Every rule gives the
# plain scaled delta where one adapter touches an entry; they differ only where adapters overlap.
RULES = ("sum", "mean", "ties", "magnitude")

EMPTY_IDX = np.zeros(0, dtype=np.int64)
EMPTY_VAL = np.zeros(0, dtype=np.float32)


@dataclass
class BufferPlan:
    idx: np.ndarray  # sorted unique flat indices to write
    delta: np.ndarray  # what to add to the base values there
    values: np.ndarray | None = None  # what to write at idx (a quantized buffer: re-quantized bytes), if made ahead
    clamped: int = 0  # a quantized buffer: entries whose re-quantized value was clamped to the integer range
    base: np.ndarray | None = None  # the base values at idx, if read ahead (the base never changes)


F32_MAX = float(np.finfo(np.float32).max)


def merge(group: np.ndarray, terms: np.ndarray, n: int, rule: str) -> np.ndarray:
    """Scaled deltas (binary64, in adapter order) and the entry each belongs to (`group`, 0..n-1) -> one binary64
    delta per entry (docs/FORMAT.md §6.1). Sums run in term order (np.bincount adds sequentially), so a second
    runtime that adds in adapter order gets the same bits."""
    if rule == "magnitude":  # the term of largest magnitude wins, the first in adapter order among equals
        order = np.lexsort((np.arange(terms.size), -np.abs(terms), group))
        starts = np.flatnonzero(np.r_[True, group[order][1:] != group[order][:-1]])
        return terms[order[starts]]
    total = np.bincount(group, weights=terms, minlength=n)
    if rule == "sum":
        return total
    if rule == "mean":  # each entry's sum over the adapters that touch it
        return total / np.bincount(group, minlength=n)
    # ties: the sum's sign is elected; the terms of that sign are averaged, the others dropped
    sign = np.sign(total)[group]
    keep = (np.sign(terms) == sign) & (sign != 0)
    kept = np.bincount(group, weights=np.where(keep, terms, 0.0), minlength=n)
    count = np.bincount(group, weights=keep.astype(np.float64), minlength=n)
    return np.divide(kept, count, out=np.zeros(n), where=count > 0)


class WeightPatcher:
    PARALLEL_ABOVE = 200_000  # entries per commit above which buffers are patched on several threads

    def __init__(self, buffers: dict[str, np.ndarray], threads: int | None = None,
                 absmax: dict[str, float] | None = None, quant: dict[str, Quant] | None = None):
        """`buffers`: placement name -> 1-D writable float view of the memory the inference engine reads, or the
        bytes of a quantized buffer. `quant`: quantized buffer name -> its Quant; such a buffer's terms address
        entries (a nibble each at 4 bits) and carry each entry's scale; its plan re-quantizes them
        (docs/QUANTIZATION.md) into whole bytes, which commit() writes like any value. `threads`: for large commits, buffers are patched in parallel (numpy's
        fancy indexing releases the GIL; 2 threads measured 1.7x faster on 2 cores)."""
        self.quant = quant or {}
        self.buffers = buffers
        self.raw = buffers  # (the name tests and benches use for the stored bytes)
        self.threads = max(1, threads or os.cpu_count() or 1)
        self._pool = None
        self.idx = {name: EMPTY_IDX for name in buffers}
        self.saved = {name: EMPTY_VAL for name in buffers}
        # max |base value| per buffer, for the overflow bound in plan(); the base never changes. Given by a
        # backend whose buffers are file mappings (scanning them would pull every page into this process)
        self._absmax = absmax if absmax is not None else {
            n: float(np.max(np.abs(b))) if b.size else 0.0 for n, b in buffers.items() if n not in self.quant}

    def plan(self, terms: dict[str, list[tuple]], ready: dict[str, BufferPlan] | None = None, rule: str = "sum"
             ) -> dict[str, BufferPlan]:
        """`terms`: buffer name -> [(indices, deltas, scale), ...], for a quantized buffer
        [(indices, deltas, scale, entry scales), ...], in adapter order. Buffers not named are restored to base.
        `ready`: plans made earlier for some buffers (a quantized buffer's plan depends on the base only, so one
        adapter's plan at scale 1 is made once, at load). `rule`: how entries that several adapters touch combine
        (RULES, docs/FORMAT.md §6.1)."""
        if rule not in RULES:
            raise AdapterError(f"unknown merge rule {rule!r} (known: {', '.join(RULES)})")
        plans = {}
        for name in self.buffers:
            parts = terms.get(name, [])
            if ready is not None and name in ready:
                plans[name] = ready[name]
                continue
            if not parts:
                plans[name] = BufferPlan(EMPTY_IDX, EMPTY_VAL)
                continue
            with np.errstate(over="ignore", invalid="ignore"):  # overflow is caught by the checks below
                if len(parts) == 1:
                    idx, delta, scale = parts[0][:3]
                    # scaled in binary64 and rounded once, exactly as a sum of several (FORMAT.md §6)
                    delta = delta if scale == 1.0 else (delta.astype(np.float64) * scale).astype(np.float32)
                    qscale = parts[0][3] if name in self.quant else None
                else:  # overlapping indices combine their scaled deltas by the rule
                    idx, first, inverse = np.unique(np.concatenate([p[0] for p in parts]), return_index=True,
                                                    return_inverse=True)
                    weights = np.concatenate([p[1].astype(np.float64) * p[2] for p in parts])
                    if not np.all(np.isfinite(weights)):
                        raise AdapterError(f"buffer {name}: the requested combination produces non-finite weights")
                    delta = merge(inverse, weights, idx.size, rule).astype(np.float32)
                    qscale = np.concatenate([p[3] for p in parts])[first] if name in self.quant else None
                if name in self.quant:  # the fused delta, re-quantized once per entry with the base's scale
                    if not np.all(np.isfinite(delta)):
                        raise AdapterError(f"buffer {name}: the requested combination produces non-finite weights")
                    plans[name] = self._quantized_plan(name, idx, delta, qscale)
                    continue
                self._check_finite(name, idx, delta)
            plans[name] = BufferPlan(idx, delta)
        return plans

    def switch_plan(self, terms: dict[str, tuple]) -> dict[str, BufferPlan]:
        """One adapter at scale 1 (`terms`: buffer -> (indices, deltas[, entry scales])), planned ahead: base
        values read now and the values to write computed now, so that switching to it later is a restore and a
        write per buffer. A buffer whose values would not be finite gets no plan (the switch plans it then, and
        refuses it with the reason)."""
        plans = {}
        for name, (idx, delta, *qscale) in terms.items():
            if name in self.quant:
                plans[name] = self._quantized_plan(name, idx, delta, qscale[0])
                continue
            base = self._base_values(name, idx)
            with np.errstate(over="ignore", invalid="ignore"):
                values = (base + delta).astype(self.buffers[name].dtype)
            if np.all(np.isfinite(values)):
                plans[name] = BufferPlan(idx, delta, values, base=base)
        return plans

    def _quantized_plan(self, name: str, idx: np.ndarray, delta: np.ndarray, qscale: np.ndarray) -> BufferPlan:
        """Entries (sorted) re-quantized from the base's integers -> the bytes that hold them, with their new
        values: at 4 bits a byte's other nibble keeps its base value unless it is patched too."""
        q = self.quant[name]
        if q.bits == 8:  # signed storage (ExecuTorch): stored byte = u XOR 0x80, both ways
            base = self._base_values(name, idx)
            values, clamped = requantize(base ^ q.flip, delta, qscale, q)
            return BufferPlan(idx, delta, values ^ q.flip, clamped, base)
        byte_idx, where = np.unique(idx >> 1, return_inverse=True)
        base_bytes = self._base_values(name, byte_idx)
        high = (idx & 1).astype(bool)
        base_u = np.where(high, base_bytes[where] >> np.uint8(4), base_bytes[where] & np.uint8(15)) ^ q.flip
        new_u, clamped = requantize(base_u, delta, qscale, q)
        new_u = new_u ^ q.flip  # signed nibbles (ONNX Runtime's KleidiAI packing): stored as u XOR 0x8
        out = base_bytes.copy()
        lo, hi = ~high, high
        out[where[lo]] = (out[where[lo]] & np.uint8(0xF0)) | new_u[lo]
        out[where[hi]] = (out[where[hi]] & np.uint8(0x0F)) | (new_u[hi] << np.uint8(4))
        return BufferPlan(byte_idx, delta, out, clamped, base_bytes)

    def _check_finite(self, name: str, idx: np.ndarray, delta: np.ndarray) -> None:
        """Refuse a plan whose base + delta would not be finite. A bound settles it without touching the
        entries (|base| + |delta| below float max cannot overflow); only if the bound fails are the sums formed."""
        dmax = float(np.max(np.abs(delta))) if delta.size else 0.0
        if not np.isfinite(dmax):
            raise AdapterError(f"buffer {name}: the requested combination produces non-finite weights")
        limit = F32_MAX if self.buffers[name].dtype == np.float32 else float(np.finfo(self.buffers[name].dtype).max)
        if self._absmax[name] + dmax < limit * 0.5:
            return
        values = self._base_values(name, idx).astype(self.buffers[name].dtype) + delta
        if not np.all(np.isfinite(values.astype(self.buffers[name].dtype))):
            raise AdapterError(f"buffer {name}: the requested combination produces non-finite weights")

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
        """Write the plans: restore the saved base values by overwrite, then save and write the new ones.
        Returns the names of the buffers whose contents changed."""
        work = sum(p.idx.size + self.idx[n].size for n, p in plans.items())
        if self.threads > 1 and work > self.PARALLEL_ABOVE:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="shira-patch")
            results = list(self._pool.map(self._commit_one, plans.keys(), plans.values()))
        else:
            results = [self._commit_one(n, p) for n, p in plans.items()]
        return {n for n, changed in zip(plans, results) if changed}

    def _commit_one(self, name: str, p: BufferPlan) -> bool:
        buf = self.buffers[name]
        changed = bool(self.idx[name].size or p.idx.size)
        if self.idx[name].size:
            buf[self.idx[name]] = self.saved[name]
        base = buf[p.idx] if p.base is None else p.base  # the base everywhere now: the restore above just ran
        if p.idx.size:
            buf[p.idx] = base + p.delta if p.values is None else p.values
        self.idx[name], self.saved[name] = p.idx, base
        return changed

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    @property
    def patched_entries(self) -> int:
        return sum(i.size for i in self.idx.values())
