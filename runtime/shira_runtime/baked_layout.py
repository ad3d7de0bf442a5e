"""What a bake leaves on disk and how to read it: file names, the position-map forms, the bake's errors.

Its own module so that the in-place backend (which reads bakes) and the baker (which proves a bake through
that backend) share it without importing each other.
"""
from __future__ import annotations

import numpy as np

BAKED_MODEL, BAKED_DATA, MAP_FILE = "baked.onnx", "baked.bin", "bake.json"
FORMAT = 1
EXIT_CANNOT, EXIT_DAMAGED = 3, 4  # the child's verdicts: this base cannot be baked / the export is damaged


class BakeError(Exception):
    """This base cannot be served in place on this runtime; the message says why (one line)."""


# ---- position maps ------------------------------------------------------------------------------------------
# A copy's map is kept as a formula where one fits exactly (checked on every entry), else as a .npy file.
#   "contiguous"            the weight as stored: entry f at f
#   {"form": "panels", ...} MLAS's SGEMM packing of B [K, N]: K cut into blocks of k_block rows; in each
#                           block, N cut into panels of `panel` columns (the last padded to aligned_n), each
#                           panel stored row by row: f = k*N + n lies at
#                           kb*k_block*aligned_n + (n // panel)*Kb*panel + (k % k_block)*panel + n % panel,
#                           kb = k // k_block, Kb = min(K - kb*k_block, k_block)
#   {"form": "tiles", ...}  a permutation repeated in tiles of `period` entries (MatMulNBits' packed integers:
#                           at 4 bits two blocks of 32 interleave nibble by nibble): f lies at
#                           (f // period) * period + perm[f % period]

def panel_positions(flat: np.ndarray, form: dict) -> np.ndarray:
    k_total, n_total, kblock, panel, aligned = (form[x] for x in ("rows", "cols", "k_block", "panel", "aligned_n"))
    k, n = np.divmod(flat.astype(np.int64), n_total)
    kb, kk = np.divmod(k, kblock)
    kb_rows = np.minimum(k_total - kb * kblock, kblock)
    return kb * kblock * aligned + (n // panel) * kb_rows * panel + kk * panel + n % panel


def unpack_panels(region: np.ndarray, form: dict) -> np.ndarray | None:
    """The weight [K, N] (flat, row-major) read out of its panels by reshaping, block by block: what
    region[panel_positions(arange(K*N))] gives, without the K*N int64 positions. None if a panel straddles
    the padded width (then gather by positions)."""
    k_total, n_total, kblock, panel, aligned = (form[x] for x in ("rows", "cols", "k_block", "panel", "aligned_n"))
    if aligned % panel:
        return None
    out = np.empty((k_total, n_total), dtype=region.dtype)
    for k0 in range(0, k_total, kblock):
        rows = min(k_total - k0, kblock)
        block = region[k0 * aligned:(k0 + rows) * aligned].reshape(aligned // panel, rows, panel)
        out[k0:k0 + rows] = block.transpose(1, 0, 2).reshape(rows, aligned)[:, :n_total]
    return out.reshape(-1)


def tile_positions(flat: np.ndarray, form: dict) -> np.ndarray:
    period = int(form["period"])
    q, r = np.divmod(flat.astype(np.int64), period)
    return q * period + np.asarray(form["perm"], dtype=np.int64)[r]


def _tiles(positions: np.ndarray) -> dict | None:
    n = positions.size
    for period in (2, 4, 8, 16, 32, 64, 128, 256, 512, 1024):
        if n % period:
            break
        perm = positions[:period]
        if sorted(perm.tolist()) != list(range(period)):
            continue
        form = {"form": "tiles", "period": period, "perm": [int(v) for v in perm]}
        if np.array_equal(tile_positions(np.arange(n), form), positions):
            return form
    return None


def describe(positions: np.ndarray, shape) -> str | dict | None:
    """The formula that gives exactly `positions` (entry f of a weight of `shape` -> index in its region), if any."""
    n = positions.size
    if np.array_equal(positions, np.arange(n)):
        return "contiguous"
    tiles = _tiles(positions)
    if tiles is not None:
        return tiles
    if len(shape) != 2:
        return None
    rows, cols = int(shape[0]), int(shape[1])
    probe = np.unique(np.concatenate([np.arange(min(n, 64)), np.arange(max(0, n - 64), n),
                                      np.random.default_rng(0).integers(0, n, 4096)]))
    for panel in (16, 8, 32, 4, 64):
        for kblock in (256, 128, 512, 64, 1024, rows):
            for align in sorted({panel, 16, 32, 64}):
                form = {"form": "panels", "rows": rows, "cols": cols, "k_block": kblock, "panel": panel,
                        "aligned_n": -(-cols // align) * align}
                if np.array_equal(panel_positions(probe, form), positions[probe]) and \
                        np.array_equal(panel_positions(np.arange(n), form), positions):
                    return form
    return None
