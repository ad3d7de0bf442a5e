"""What a bake leaves on disk and how to read it: file names, the position-map forms, the bake's errors.

Its own module so that the in-place backend (which reads bakes) and the baker (which proves a bake through
that backend) share it without importing each other.
"""
from __future__ import annotations

import mmap

import numpy as np

BAKED_MODEL, BAKED_DATA, MAP_FILE = "baked.onnx", "baked.bin", "bake.json"
FORMAT = 2  # 2: quantized copies may be signed and carry derived sums (ARM)
EXIT_CANNOT, EXIT_DAMAGED, EXIT_NO_ROOM = 3, 4, 5  # the child's verdicts: this base cannot be baked / the export
# is damaged / the bake could not be written (a full or read-only disk: tried again at the next open)


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
#   {"form": "row_groups", ...} MatMulNBits' packed integers of W [N, K]: rows in groups of `group`; a group's
#                           rows stored chunk by chunk (`chunk` entries of one row, then the same chunk of the
#                           next row...), a permutation `perm` inside each chunk: (n, k) lies at
#                           g*group*K + (k // chunk)*G*chunk + r*chunk + perm[k % chunk], g, r = divmod(n, group),
#                           G = min(group, N - g*group)
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


def group_positions(flat: np.ndarray, form: dict) -> np.ndarray:
    n_total, k_total, group, chunk = (int(form[x]) for x in ("rows", "cols", "group", "chunk"))
    n, k = np.divmod(flat.astype(np.int64), k_total)
    g, r = np.divmod(n, group)
    kc, j = np.divmod(k, chunk)
    in_group = np.minimum(group, n_total - g * group)
    return g * group * k_total + kc * in_group * chunk + r * chunk + np.asarray(form["perm"], dtype=np.int64)[j]


def unpack_groups(slots: np.ndarray, form: dict) -> np.ndarray | None:
    """The weight [N, K] (flat, row-major) read out of a row_groups region by reshaping: what
    slots[group_positions(arange(N*K))] gives without N*K int64 positions. None if the last group is partial."""
    n_total, k_total, group, chunk = (int(form[x]) for x in ("rows", "cols", "group", "chunk"))
    if n_total % group:
        return None
    s = slots[:n_total * k_total].reshape(n_total // group, k_total // chunk, group, chunk)
    return s[..., np.asarray(form["perm"], dtype=np.int64)].transpose(0, 2, 1, 3).reshape(-1)


def _groups(positions: np.ndarray, shape) -> dict | None:
    """MatMulNBits' packed integers: rows packed in groups of `group`, each row's entries in chunks of `chunk`
    (chunk by chunk across the group's rows), a fixed permutation inside each chunk."""
    if len(shape) != 2:
        return None
    rows, cols = int(shape[0]), int(shape[1])
    probe = np.unique(np.concatenate([np.arange(min(positions.size, 4096)), np.arange(max(0, positions.size - 4096),
                                      positions.size), np.random.default_rng(0).integers(0, positions.size, 4096)]))
    for chunk in (16, 32, 64, 128, 256):
        if cols % chunk or sorted(positions[:chunk].tolist()) != list(range(chunk)):
            continue
        for group in (1, 2, 4, 8, 16):
            form = {"form": "row_groups", "rows": rows, "cols": cols, "group": group, "chunk": chunk,
                    "perm": [int(v) for v in positions[:chunk]]}
            if np.array_equal(group_positions(probe, form), positions[probe]) and all(
                    np.array_equal(group_positions(np.arange(lo, min(lo + (1 << 22), positions.size)), form),
                                   positions[lo:lo + (1 << 22)]) for lo in range(0, positions.size, 1 << 22)):
                return form
    return None


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
        probe = np.unique(np.concatenate([np.arange(min(n, 4096)), np.arange(max(0, n - 4096), n),
                                          np.random.default_rng(0).integers(0, n, 4096)]))
        if not np.array_equal(tile_positions(probe, form), positions[probe]):
            continue  # most candidates fail on a sample: a whole-weight check for each would cost seconds
        if all(np.array_equal(tile_positions(np.arange(lo, min(lo + (1 << 22), n)), form), positions[lo:lo + (1 << 22)])
               for lo in range(0, n, 1 << 22)):
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
    groups = _groups(positions, shape)
    if groups is not None:
        return groups
    probe = np.unique(np.concatenate([np.arange(min(n, 64)), np.arange(max(0, n - 64), n),
                                      np.random.default_rng(0).integers(0, n, 4096)]))
    for form in panel_forms(shape):
        if np.array_equal(panel_positions(probe, form), positions[probe]) and \
                np.array_equal(panel_positions(np.arange(n), form), positions):
            return form
    return None


def panel_forms(shape):
    """Every MLAS panel packing tried for a float weight of `shape` (none unless it is a matrix), most likely first."""
    if len(shape) != 2:
        return
    rows, cols = int(shape[0]), int(shape[1])
    for panel in (16, 8, 32, 4, 64):
        for kblock in (256, 128, 512, 64, 1024, rows):
            for align in sorted({panel, 16, 32, 64}):
                yield {"form": "panels", "rows": rows, "cols": cols, "k_block": kblock, "panel": panel,
                       "aligned_n": -(-cols // align) * align}


def form_positions(flat: np.ndarray, form) -> np.ndarray:
    """Where entries `flat` of a float weight lie in its region under `form` ("contiguous" or panels)."""
    return flat.astype(np.int64) if form == "contiguous" else panel_positions(flat, form)


def read_form(region: np.ndarray, form, n: int) -> np.ndarray:
    """The weight's n entries (flat, row-major) read out of its region under `form`."""
    if form == "contiguous":
        return region[:n]
    out = unpack_panels(region, form)
    return out if out is not None else region[panel_positions(np.arange(n), form)]


def release_pages(*mapped: np.ndarray) -> None:
    """Let go of the pages of read-only file mappings read so far: they stay in the page cache, but no longer
    count in this process's RSS (a bake that reads every weight twice would otherwise hold them all)."""
    if not hasattr(mmap, "MADV_DONTNEED"):
        return
    for a in mapped:
        for _ in range(16):  # down the chain of views to the mapping itself
            if isinstance(a, mmap.mmap):
                a.madvise(mmap.MADV_DONTNEED)
                break
            a = a.obj if isinstance(a, memoryview) else getattr(a, "_mmap", None) or getattr(a, "base", None)
            if a is None:
                break
