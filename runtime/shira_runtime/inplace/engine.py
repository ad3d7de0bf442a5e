"""ONNX Runtime, in place: one engine running on its own packed weights, which the runtime patches where they lie.

The base is baked once per CPU (inplace/bake.py, inplace/cache.py): ORT's optimized model plus one data file holding
every initializer and every packed copy. Loading the baked model, ORT maps each region it reads from that
file into memory, privately and writable (`mmap(MAP_PRIVATE)`, visible as `rw-p` lines of /proc/self/maps),
and computes on those bytes in place. This backend finds those mappings and writes the patched floats into
them: the next run sees them. A written page becomes this process's own copy (copy-on-write), so:
  - memory stays the base's: each page is held once, by ORT's mapping, written or not (RSS is not inflated by
    a second mapping of the same pages, and nothing else holds the weights: no graph inputs, no second engine);
  - the baked file is never written: no disk I/O per switch, nothing to repair after a crash, and any number
    of sessions (in this process or others) share one bake, each with its own patches;
  - every live copy must be found inside one of ORT's mappings, which proves at open that ORT reads it there
    (a region ORT copied to the heap instead would make patches invisible: refused, the session falls back).
Needs /proc/self/maps (Linux, Android); elsewhere the session falls back to two-phase switching and says so.

Each placement has one or more live copies in the file (the packed copy a MatMul reads; a Conv's reordered
weight; the plain copy where some other node also reads it). The patcher's buffers are those copies (flat
float32 views of the file), and an adapter's indices are mapped to each copy's positions when it is loaded,
so a switch is a scatter into the file, nothing more.
"""
from __future__ import annotations

import ctypes
import dataclasses
import json
import os

import numpy as np
from shira_format.errors import ManifestError, first_line
from shira_format.manifest import Manifest
from shira_format.layouts import stable_order
from shira_format.quant import dequantize_entries, entries, matrix_shape, pack_entries

from .layout import (BAKED_DATA, BAKED_MODEL, MAP_FILE, BakeError, group_positions, panel_positions,
                            tile_positions, unpack_groups, unpack_panels)
from .cache import acquire, discard
from .derived_sums import FORMULAS, stored_block_sums
from .derived_sums import sums as quant_sums
from ..backends.onnxruntime import CREATING, NAME, create_session, session_options
from ..engine import Engine



def engine_mappings(path) -> list[tuple[int, int, int]]:
    """(start address, length, file offset) of every mapping of `path` in this process."""
    target = os.stat(path)
    out = []
    with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.split(None, 5)
            if len(parts) < 6 or not parts[5].strip():
                continue
            try:
                inode = int(parts[4])
            except ValueError:
                continue
            if inode != target.st_ino or os.path.realpath(parts[5].strip()) != os.path.realpath(path):
                continue
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            out.append((lo, hi - lo, int(parts[2], 16)))
    return out


def _view(address: int, nbytes: int, dtype=np.float32) -> np.ndarray:
    """An array over memory ORT owns (valid while its session lives; dropped before it is freed)."""
    return np.frombuffer((ctypes.c_char * nbytes).from_address(address), dtype=dtype)


PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
MADV_POPULATE_WRITE = 23  # Linux 5.14+: fault pages in writable (here: copy-on-write them) in the kernel
_libc = None


def _populate_write(address: int, nbytes: int) -> bool:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return _libc.madvise(address, nbytes, MADV_POPULATE_WRITE) == 0


def _trim_heap() -> None:
    """glibc's malloc_trim(0): return freed heap pages to the system (a no-op elsewhere)."""
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
            _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        _libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _buffer_address(buf: np.ndarray) -> int:
    return buf.__array_interface__["data"][0]


class _CacheDamaged(Exception):
    """A baked copy no longer matches the export's checksum (the export itself was checked at bake time)."""


class _Copy:
    """One live copy of a placement in the data file: its buffer and where each entry of the weight lies."""

    def __init__(self, key: str, spec: dict, slot_dir, size: int, quant=None):
        self.key = key
        self.keys: list[str] = []  # its buffers: one per mapping of ORT's that holds the region (see _open)
        self.offset, self.length = int(spec["offset"]), int(spec["length"])
        self.size = size
        self.export_quant = quant  # a quantized placement: slots are bytes (int8) or nibbles (int4), not floats
        # the slots as this copy holds them: u, or u XOR the zero point (KleidiAI's signed nibbles on ARM)
        self.quant = dataclasses.replace(quant, signed=True) if quant is not None and spec.get("signed") else quant
        self.unit = spec.get("unit", "float")
        want = "float" if quant is None else "byte" if quant.bits == 8 else "nibble"
        if self.unit != want:
            raise _CacheDamaged(f"{slot_dir / MAP_FILE}: {key} is mapped in {self.unit}s, the manifest says {want}s")
        form = spec["positions"]
        self.form = form
        self._map = np.load(slot_dir / form, mmap_mode="r") if isinstance(form, str) and form != "contiguous" else None
        self.sums = None  # (formula, float32 word of each sum in the region): floats derived from the integers
        if spec.get("sums") is not None:
            if quant is None or spec["sums"].get("formula") not in FORMULAS:
                raise _CacheDamaged(f"{slot_dir / MAP_FILE}: {key}: sums {spec['sums']!r} are not understood")
            self.sums = (spec["sums"]["formula"], np.load(slot_dir / spec["sums"]["words"]).astype(np.int64))

    def positions(self, flat: np.ndarray) -> np.ndarray:
        if self.form == "contiguous":
            return flat.astype(np.int64, copy=False)
        if self._map is not None:
            return self._map[flat].astype(np.int64)
        if self.form.get("form") == "tiles":
            return tile_positions(flat, self.form)
        if self.form.get("form") == "row_groups":
            return group_positions(flat, self.form)
        return panel_positions(flat, self.form)

    def values(self, region: np.ndarray) -> np.ndarray:
        """The weight, flat in its stored layout, read out of this copy's region (a copy of the values); for a
        quantized copy (`region`: its bytes) the integer entries in torch order."""
        if self.quant is not None:
            if self._map is None and self.form != "contiguous" and self.form.get("form") == "row_groups":
                slots = region if self.quant.bits == 8 else np.stack([region & 15, region >> 4], 1).reshape(-1)
                out = unpack_groups(slots, self.form)
                if out is not None:
                    return out ^ self.quant.flip
            return entries(region, self.quant)[self.positions(np.arange(self.size, dtype=np.int64))]
        if self.form == "contiguous":
            return np.array(region[:self.size])
        if self._map is None and self.form.get("form") == "panels":
            out = unpack_panels(region, self.form)
            if out is not None:
                return out
        return region[self.positions(np.arange(self.size, dtype=np.int64))]

    @property
    def nbytes(self) -> int:
        """The bytes of the region the buffer covers."""
        if self.quant is not None:
            return self.length
        return 4 * (self.size if self.form == "contiguous" else self.length // 4)

    def byte_of(self, pos: np.ndarray) -> np.ndarray:
        """Buffer positions (slots) -> byte offsets in the region."""
        return pos * 4 if self.unit == "float" else pos if self.unit == "byte" else pos >> 1


class InPlaceOrtEngine(Engine):
    """The in-place engine (engine.py's contract): no prepacked twin, the engine IS the prepacked one."""
    name = NAME
    route = "baked"  # its packed weights are a baked file's mappings (inplace/live.py: "live", found in memory)

    def __init__(self, manifest: Manifest, threads: int | None = None, verify: str = "fast", cache_dir=None,
                 log=lambda msg: None, bake_dir=None):
        """`bake_dir`: open this bake as it is (the bake's own proof), instead of the cache's."""
        self.manifest = manifest
        self.bake_dir = None
        self._empty()
        if bake_dir is not None:
            self.bake_dir = bake_dir
            self._open(threads, verify)
            return
        for attempt in (1, 2):
            self.bake_dir = acquire(manifest, cache_dir, threads, log)
            try:
                self._open(threads, verify)
                return
            except _CacheDamaged as e:  # the export checked out when it was baked: the cached copy went bad
                self.close()
                discard(self.bake_dir)
                if attempt == 2:
                    raise ManifestError(str(e)) from None
                log(f"{e}; baking it again")
            except BaseException:
                self.close()
                raise

    def _empty(self) -> None:
        """What an engine of either route holds, empty: its session, its buffers (views into ORT's memory) and
        what the patcher reads beside them."""
        self.session = None
        self.buffers: dict[str, np.ndarray] = {}
        self._sum_state: dict[str, dict] = {}  # quantized placements whose packer derives sums (inplace/derived_sums.py)
        self.absmax: dict[str, float] = {}  # per buffer, for the patcher
        self._absmax: dict[str, float] = {}  # per placement
        self.buffer_quant: dict = {}  # quantized buffer -> its Quant, for the patcher
        self._places = {p.name: p for _, p in self.manifest.placements(NAME)}
        self.copies: dict[str, list[_Copy]] = {}
        self.summed: list[str] = []  # placements whose packer derives sums from their integers

    def _open(self, threads, verify) -> None:
        slot = self.bake_dir
        spec = json.loads((slot / MAP_FILE).read_text())
        data_path = slot / BAKED_DATA
        file_size = data_path.stat().st_size
        self._empty()
        for info in self.manifest.tensors.values():
            for p in info.placements.get(NAME, ()):
                entry = spec["placements"].get(p.name)
                if entry is None:
                    raise _CacheDamaged(f"{slot / MAP_FILE}: no map for {p.name}")
                size = int(np.prod(p.shape))
                copies = []
                for c in entry["copies"]:
                    copy = _Copy(f"{p.name}@{c['offset']}", c, slot, size, p.quant)
                    if copy.offset + copy.nbytes > file_size:
                        raise _CacheDamaged(f"{data_path}: {p.name} lies outside the file (truncated?)")
                    copies.append(copy)
                self.copies[p.name] = copies
                self._absmax[p.name] = float(entry["absmax"])
        if verify != "off":
            self._verify(verify, data_path)
            _trim_heap()  # the check's temporaries are freed; give their pages back (glibc keeps them otherwise)
        # optimized at bake time, and with the bake's settings: with others ORT packs anew
        opts = session_options(threads, optimize=False, config=spec.get("session_config", {}))
        with CREATING:  # this session's mappings are the ones its creation added (others' may lie beside them)
            before = set(engine_mappings(data_path))
            try:
                self.session = create_session(slot / BAKED_MODEL, opts)
            except ManifestError as e:  # the bake load-tested it on this machine: the cached copy went bad
                raise _CacheDamaged(str(e)) from None
            maps = [m for m in engine_mappings(data_path) if m not in before]
        # placements whose packer derives sums from their integers: the only work weights_changed() has
        self.summed = [pname for pname, copies in self.copies.items() if any(c.sums is not None for c in copies)]
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        for pname, copies in self.copies.items():
            for copy in copies:
                nbytes = copy.nbytes
                where = [lo + copy.offset - off for lo, size, off in maps
                         if off <= copy.offset and copy.offset + nbytes <= off + size]
                if not where:
                    raise BakeError(f"{data_path}: ONNX Runtime does not read {pname} ({copy.key}) from the baked "
                                    "file's mapping (copied it instead?); patches would be invisible")
                # ORT maps each tensor on its own, page-aligned, so a small region also lies in its neighbours'
                # mappings of the same pages, and /proc/self/maps cannot tell which one is this tensor's: the
                # patch goes into every mapping holding the whole region (neighbours never read these bytes)
                for k, address in enumerate(where):
                    key = f"{copy.key}#{k}"
                    self.buffers[key] = _view(address, nbytes, np.float32 if copy.quant is None else np.uint8)
                    if copy.quant is None:
                        self.absmax[key] = self._absmax[pname]
                    else:
                        self.buffer_quant[key] = copy.quant
                    copy.keys.append(key)

    def _verify(self, mode: str, data_path) -> None:
        """Every live copy, read from the file (not through the mapping: the pages stay out of this process),
        must hold the weight the manifest's checksum names."""
        from ..integrity import verify_placements

        scales = {}
        if self.buffer_quant or any(c.quant is not None for cs in self.copies.values() for c in cs):
            scales = {name: np.array(s) for name, s in self._scales().items()}
        with open(data_path, "rb") as f:
            for pname, copies in self.copies.items():
                for copy in copies:
                    f.seek(copy.offset)
                    raw = f.read(copy.nbytes)
                    if copy.quant is None:
                        values = copy.values(np.frombuffer(raw, dtype=np.float32))
                    else:  # the integers back in the export's byte order, which its checksum covers
                        values = pack_entries(copy.values(np.frombuffer(raw, dtype=np.uint8)), copy.export_quant)
                    try:
                        verify_placements(mode, self.manifest, NAME, {pname: values}, data_path, threads=1,
                                          only={pname}, scales=scales)
                    except ManifestError as e:
                        raise _CacheDamaged(str(e)) from None

    def to_buffers(self, mapped: dict[str, tuple]) -> dict[str, tuple]:
        """Placement name -> (flat indices, deltas, [entry scales]) becomes copy buffer -> (positions sorted,
        the other arrays permuted to match)."""
        out = {}
        for pname, (idx, *rest) in mapped.items():
            for copy in self.copies[pname]:
                pos = copy.positions(idx)
                if not (copy.form == "contiguous" or (pos.size and np.all(pos[1:] > pos[:-1]))):
                    order = stable_order(pos)
                    pos, sorted_rest = pos[order], tuple(a[order] for a in rest)
                else:
                    sorted_rest = tuple(rest)
                for key in copy.keys:
                    out[key] = (pos, *sorted_rest)
        return out

    def _scales(self) -> dict:
        """Quantized placement name -> its scales, read through a mapping of the export's weights file (opened
        for the call: the pages leave this process with it)."""
        from shira_format.safetensors_file import parse
        from shira_format.weights import quant_scales

        path = self.manifest.file(self.manifest.files_of(NAME).weights)
        try:
            st = parse(np.memmap(path, dtype=np.uint8, mode="r"), str(path))
        except Exception as e:  # noqa: BLE001 - a missing or damaged file: one line naming it
            raise ManifestError(f"{path}: cannot read the quantization scales: {first_line(e)}") from None
        return quant_scales(self.manifest, st, path)

    def entry_scales(self, pname: str, flat: np.ndarray, cols: int) -> np.ndarray:
        p = self._places[pname]
        return p.quant.scale_of(self._scales()[pname], flat, cols)

    def placement_scales(self, pname: str) -> np.ndarray:
        return np.array(self._scales()[pname])

    def prepare_pages(self, mapped: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        """Make the pages an adapter will write this process's own now, at load(), not in its first switch.

        ORT's mapping is copy-on-write: the first write to a page copies it (a page fault each). At 1% random
        density that is every page of the patched weights: 0.34 s of a 168M Llama's first switch, against 22 ms
        for later ones. MADV_POPULATE_WRITE does those copies in the kernel in one call per run of pages; where
        the kernel lacks it, one float per page is written back unchanged (under the patch mutex: no patch
        can interleave; a concurrent run reads the same value either way)."""
        byte_of = {key: copy.byte_of for copies in self.copies.values() for copy in copies for key in copy.keys}
        for key, (pos, *_) in mapped.items():
            buf = self.buffers[key]
            start = _buffer_address(buf)
            pages = np.unique((start + byte_of[key](pos)) // PAGE)  # pos is sorted: so are the pages
            if not pages.size:
                continue
            breaks = np.flatnonzero(np.diff(pages) > 1)
            first = np.concatenate([[0], breaks + 1])
            last = np.concatenate([breaks, [pages.size - 1]])
            ok = all(_populate_write(int(pages[a]) * PAGE, int(pages[b] - pages[a] + 1) * PAGE)
                     for a, b in zip(first, last))
            if not ok:  # one byte per page written back as it is
                offsets = byte_of[key](pos)
                first = offsets[np.unique((start + offsets) // PAGE, return_index=True)[1]]
                raw = buf.view(np.uint8)
                raw[first] = raw[first]

    def placement_of(self) -> dict[str, str]:
        return {key: pname for pname, copies in self.copies.items() for c in copies for key in c.keys}

    @property
    def needs_entries(self) -> bool:
        return bool(self.summed)

    def live_weight(self, p, shape) -> np.ndarray:
        if p.quant is not None:
            return dequantize_entries(self.placement_values(p.name), self.placement_scales(p.name), p.quant,
                                      *matrix_shape(shape)).reshape(shape)
        return p.to_torch_layout(self.placement_values(p.name), shape).copy()

    def placement_values(self, pname: str) -> np.ndarray:
        """The live weight of a placement, flat in its stored layout (a copy); a quantized one's integer
        entries in torch order."""
        copy = self.copies[pname][0]
        return copy.values(self.buffers[copy.keys[0]])

    def weights_changed(self, names: set[str], entries: dict[str, np.ndarray] | None = None) -> None:
        """The engine reads the file the patch was written into; what is left are the sums some packers derive
        from a quantized weight's integers (inplace/derived_sums.py). `entries`: placement -> the entries (flat, sorted)
        the active adapters touch; the sums of the blocks holding them, and of those the previous state
        touched, are computed again from the integers now in place."""
        for pname in self.summed:
            self._update_sums(pname, (entries or {}).get(pname, np.zeros(0, dtype=np.int64)))

    def _sum_base(self, pname: str) -> dict:
        """The export's integers of a placement, their block sums and scales: what the sums start from."""
        state = self._sum_state.get(pname)
        if state is None:
            from shira_format.safetensors_file import parse

            p = self._places[pname]
            rows, cols = matrix_shape(next(i.shape for i in self.manifest.tensors.values()
                                           if any(q.name == pname for q in i.placements.get(NAME, ()))))
            path = self.manifest.file(self.manifest.files_of(NAME).weights)
            stored = parse(np.memmap(path, dtype=np.uint8, mode="r"), str(path)).array(pname).reshape(-1)
            base_u = entries(stored, p.quant)
            blk = stored_block_sums(stored, p.quant.bits, rows, cols, p.quant.block)
            scales = np.asarray(self._scales()[pname], dtype=np.float32).reshape(rows, cols // p.quant.block)
            state = self._sum_state[pname] = {"rows": rows, "cols": cols, "base_u": base_u, "blk": blk,
                                              "scales": scales, "blocks": np.zeros(0, dtype=np.int64)}
        return state

    def _update_sums(self, pname: str, idx: np.ndarray) -> None:
        st, p = self._sum_base(pname), self._places[pname]
        cols, block = st["cols"], p.quant.block
        nb = cols // block
        first = self.copies[pname][0]
        now = entries(self.buffers[first.keys[0]], first.quant)[first.positions(idx)].astype(np.int32)
        delta = now - st["base_u"][idx].astype(np.int32)
        blocks = (idx // cols) * nb + (idx % cols) // block
        touched, where = np.unique(blocks, return_inverse=True)
        moved = np.bincount(where, weights=delta, minlength=touched.size).astype(np.int32)
        affected = np.union1d(st["blocks"], touched)  # blocks the previous state moved go back to the base
        blk = st["blk"].reshape(-1)[affected].copy()
        blk[np.searchsorted(affected, touched)] += moved
        st["blocks"] = touched
        for copy in self.copies[pname]:
            if copy.sums is None:
                continue
            formula, words = copy.sums
            if formula == "block":
                at = affected
                values = quant_sums(formula, blk[:, None], st["scales"].reshape(-1)[affected][:, None])
            else:  # "row": a row's sum runs over all its blocks
                at = np.unique(affected // nb)
                rows_blk = st["blk"][at].copy()
                r = np.searchsorted(at, affected // nb)
                rows_blk[r, affected % nb] = blk
                values = quant_sums(formula, rows_blk, st["scales"][at])
            for key in copy.keys:
                buf = self.buffers[key]
                buf[: buf.size // 4 * 4].view(np.float32)[words[at]] = values

    def run(self, inputs: dict[str, np.ndarray], patchable: bool = False) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise KeyError(f"missing model input(s) {missing} (inputs: {self.input_names})")
        outs = self.session.run(self.output_names, {n: inputs[n] for n in self.input_names})
        return dict(zip(self.output_names, outs))

    def close(self) -> None:
        """Drop the views into ORT's memory (in place: the patcher holds this same dict), then free the engine."""
        self.buffers.clear()
        self.session = None
