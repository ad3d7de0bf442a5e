"""ONNX Runtime, in place: one engine running on its own packed weights, which the runtime patches in the file.

The base is baked once per CPU (bake.py, bake_cache.py): ORT's optimized model plus one data file holding
every initializer and every packed copy. The engine memory-maps that file and reads the packed weights where
they lie; this backend maps the same file writable and shared, so a write at a weight's packed position is
seen by the next run. Nothing else holds the weights: no graph inputs, no second engine, no rebuild.

Each placement has one or more live copies in the file (the packed copy a MatMul reads; a Conv's reordered
weight; the plain copy where some other node also reads it). The patcher's buffers are those copies (flat
float32 views of the file), and an adapter's indices are mapped to each copy's positions when it is loaded,
so a switch is a scatter into the file, nothing more.
"""
from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
from shira_format.errors import ManifestError
from shira_format.manifest import Manifest

from ..bake import BAKED_DATA, BAKED_MODEL, MAP_FILE, BakeError, panel_positions
from ..bake_cache import acquire
from .onnxruntime import NAME, create_session


class _CacheDamaged(Exception):
    """A baked copy no longer matches the export's checksum (the export itself was checked at bake time)."""


class _Copy:
    """One live copy of a placement in the data file: its buffer and where each entry of the weight lies."""

    def __init__(self, key: str, spec: dict, slot_dir, size: int):
        self.key = key
        self.offset, self.length = int(spec["offset"]), int(spec["length"])
        self.size = size
        form = spec["positions"]
        self.form = form
        self._map = np.load(slot_dir / form, mmap_mode="r") if isinstance(form, str) and form != "contiguous" else None

    def positions(self, flat: np.ndarray) -> np.ndarray:
        if self.form == "contiguous":
            return flat.astype(np.int64, copy=False)
        if self._map is not None:
            return self._map[flat].astype(np.int64)
        return panel_positions(flat, self.form)

    @property
    def buffer_elements(self) -> int:
        return self.size if self.form == "contiguous" else self.length // 4


class InPlaceOnnxRuntimeBackend:
    name = NAME
    prepacked_available = False  # nothing to rebuild: the engine IS the prepacked one
    restore_before_close = True  # writes reach a file: a closing session puts the base back first

    def __init__(self, manifest: Manifest, threads: int | None = None, verify: str = "fast", cache_dir=None,
                 log=lambda msg: None):
        self.manifest = manifest
        self.session = None
        self._data = None
        for attempt in (1, 2):
            self.slot = acquire(manifest, cache_dir, threads, log)
            try:
                self._open(threads, verify)
                return
            except _CacheDamaged as e:  # the export checked out when it was baked: the cached copy went bad
                self._data = None
                self.buffers = {}
                self.slot.discard()
                self.slot = None
                if attempt == 2:
                    raise ManifestError(str(e)) from None
                log(f"{e}; baking it again")
            except BaseException:
                self.close(clean=True)  # nothing was written yet
                raise

    def _open(self, threads, verify) -> None:
        slot = self.slot.path
        spec = json.loads((slot / MAP_FILE).read_text())
        data_path = slot / BAKED_DATA
        self._data = np.memmap(data_path, dtype=np.uint8, mode="r+")  # shared: writes reach the engine's mapping
        self.buffers: dict[str, np.ndarray] = {}
        self.absmax: dict[str, float] = {}
        self.copies: dict[str, list[_Copy]] = {}
        for info in self.manifest.tensors.values():
            for p in info.placements.get(NAME, ()):
                entry = spec["placements"].get(p.name)
                if entry is None:
                    raise BakeError(f"{slot / MAP_FILE}: no map for {p.name}; the cache is stale")
                size = int(np.prod(p.shape))
                copies = []
                for c in entry["copies"]:
                    copy = _Copy(f"{p.name}@{c['offset']}", c, slot, size)
                    if copy.offset + copy.buffer_elements * 4 > self._data.size:
                        raise ManifestError(f"{data_path}: {p.name} lies outside the file (truncated?)")
                    self.buffers[copy.key] = self._data[copy.offset: copy.offset + copy.buffer_elements * 4].view(np.float32)
                    self.absmax[copy.key] = float(entry["absmax"])
                    copies.append(copy)
                self.copies[p.name] = copies
        if verify != "off":
            self._verify(verify, data_path)
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        # already optimized at bake time; optimizing again could only make private copies of the weights
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.log_severity_level = 3
        self.session = create_session(slot / BAKED_MODEL, opts)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def _verify(self, mode: str, data_path) -> None:
        """Every live copy, read from the file (not through the mapping: the pages stay out of this process),
        must hold the weight the manifest's checksum names."""
        from ..integrity import verify_placements

        with open(data_path, "rb") as f:
            for pname, copies in self.copies.items():
                flats = None
                for copy in copies:
                    f.seek(copy.offset)
                    region = np.frombuffer(f.read(copy.buffer_elements * 4), dtype=np.float32)
                    if flats is None:
                        flats = np.arange(copy.size, dtype=np.int64)
                    values = region[copy.positions(flats)]
                    try:
                        verify_placements(mode, self.manifest, NAME, {pname: values}, data_path, threads=1,
                                          only={pname})
                    except ManifestError as e:
                        raise _CacheDamaged(str(e)) from None

    def to_buffers(self, mapped: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Placement name -> (flat indices, deltas) becomes copy buffer -> (positions sorted, deltas to match)."""
        out = {}
        for pname, (idx, delta) in mapped.items():
            for copy in self.copies[pname]:
                pos = copy.positions(idx)
                if copy.form == "contiguous" or (pos.size and np.all(pos[1:] > pos[:-1])):
                    out[copy.key] = (pos, delta)
                else:
                    order = np.argsort(pos, kind="stable")
                    out[copy.key] = (pos[order], delta[order])
        return out

    def placement_values(self, pname: str) -> np.ndarray:
        """The live weight of a placement, flat in its stored layout (a copy)."""
        copy = self.copies[pname][0]
        return self.buffers[copy.key][copy.positions(np.arange(copy.size, dtype=np.int64))]

    def weights_changed(self, names: set[str]) -> None:
        """Nothing to do: the engine reads the file the patch was written into."""

    def drop_prepacked(self) -> None:
        pass

    def run(self, inputs: dict[str, np.ndarray], patchable: bool = False) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise KeyError(f"missing model input(s) {missing} (inputs: {self.input_names})")
        outs = self.session.run(self.output_names, {n: inputs[n] for n in self.input_names})
        return dict(zip(self.output_names, outs))

    def close(self, clean: bool = True) -> None:
        """Free the engine, flush and unmap the file, release the slot (clean: the base values are back)."""
        self.session = None
        self.buffers = {}
        if self._data is not None:
            self._data.flush()  # the mapping itself goes with its last view (the patcher's buffers)
            self._data = None
        if self.slot is not None:
            self.slot.release(clean)
            self.slot = None
