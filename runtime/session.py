"""`ShiraSession`: one exported base loaded once; adapters switched, fused and reset in place.

    s = ShiraSession("out/tiny-llama")          # loads the inference engine once
    s.load("a.shira"); s.load("b.shira")         # validated completely, nothing patched yet
    s.switch("a")                                # scatter a's values into the live weights
    s.fuse({"a": 0.7, "b": 0.5})                 # overlapping entries sum their scaled deltas
    s.reset()                                    # bit-exact base again
    s.run({"input_ids": ids})

Prepacking modes (`prepack=`, see prepack.py): "off" runs only the aliased engine (least memory; every run
bit-identical for a given state); "background" adds two-phase switching (aliased at once, a fully prepacked
engine installed shortly after); "auto" (the default) measures both engines on the manifest's sample input at
load and keeps two-phase only where the aliased engine is more than 2% slower.
"""
from __future__ import annotations

import hashlib
import statistics
import threading
import time
from pathlib import Path

import numpy as np

from . import manifest as manifest_mod
from .adapter_file import Adapter, read_adapter
from .errors import AdapterError, ManifestError
from .patcher import WeightPatcher
from .prepack import PrepackedRebuilder
from .rwlock import RWLock

BACKENDS = ("onnxruntime", "executorch")
PREPACK_MODES = ("auto", "background", "off")
AUTO_THRESHOLD = 1.02  # two-phase pays off when the aliased engine is slower than this ratio


def _make_backend(name: str, manifest, threads):
    if name == "onnxruntime":
        from .backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(manifest, threads)
    if name == "executorch":
        from .backends.executorch import ExecuTorchBackend  # imports torch: ExecuTorch's bindings need it

        return ExecuTorchBackend(manifest, threads)
    raise ManifestError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")


class ShiraSession:
    def __init__(self, base_dir, backend: str = "onnxruntime", threads: int | None = None, verify: bool = False,
                 prepack: str = "auto"):
        """Open an exported base directory. `verify` re-hashes every patchable weight against the manifest."""
        if prepack not in PREPACK_MODES:
            raise ValueError(f"prepack must be one of {', '.join(PREPACK_MODES)}, got {prepack!r}")
        self.manifest = manifest_mod.load(base_dir)
        self.backend = _make_backend(backend, self.manifest, threads)
        if verify:
            self._verify_base()
        self.patcher = WeightPatcher(self.backend.buffers, threads)
        self.adapters: dict[str, Adapter] = {}
        # per adapter: buffer name -> (indices in that buffer's layout, sorted; deltas permuted to match)
        self._mapped: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
        self.active: dict[str, float] = {}
        self._lock = RWLock()  # inference = readers, commit = writer
        self._patch_mutex = threading.Lock()  # one load/plan/commit at a time
        self.rebuilder: PrepackedRebuilder | None = None
        self.calibration: dict | None = None
        self.mode = "aliased"
        if prepack != "off" and self.backend.prepacked_available:
            self._start_two_phase(calibrate=prepack == "auto")

    def _start_two_phase(self, calibrate: bool) -> None:
        self.rebuilder = PrepackedRebuilder(self.backend, self._lock)
        self.rebuilder.start()
        self.mode = "two-phase"
        if calibrate:
            x = self.manifest.sample_inputs()
            t = {}
            for label, aliased in (("aliased_ms", True), ("prepacked_ms", False)):
                time.sleep(0.05)  # the other engine's spinning worker threads would steal the cores
                for _ in range(3):  # warm-up: first runs allocate
                    self.backend.run(x, aliased=aliased)
                runs = []
                for _ in range(5):
                    t0 = time.perf_counter()
                    self.backend.run(x, aliased=aliased)
                    runs.append((time.perf_counter() - t0) * 1e3)
                t[label] = statistics.median(runs)
            t["ratio"] = t["aliased_ms"] / t["prepacked_ms"]
            self.calibration = t
            if t["ratio"] <= AUTO_THRESHOLD:  # nothing to win: free the prepacked engine and its memory
                self.close()
                self.mode = "aliased"

    # ---- adapters -------------------------------------------------------------------------------------------
    def load(self, blob, name: str | None = None) -> str:
        """Validate and decode an adapter blob (path or bytes). Refusal raises AdapterError; nothing is patched."""
        adapter = read_adapter(blob, self.manifest)
        name = name or adapter.name
        mapped: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for t in adapter.tensors.values():
            info = self.manifest.tensors[t.target]
            for p in info.placements.get(self.backend.name, ()):
                idx = p.map_indices(t.indices, info.shape)
                if p.layout == "identity":
                    mapped[p.name] = (idx, t.values)
                else:
                    order = np.argsort(idx, kind="stable")
                    mapped[p.name] = (idx[order], t.values[order])
        with self._patch_mutex:
            if name in self.active:
                raise AdapterError(f"{adapter.source}: adapter {name!r} is active; reset() before replacing it")
            self.adapters[name] = adapter
            self._mapped[name] = mapped
        return name

    def unload(self, name: str) -> None:
        with self._patch_mutex:
            if name in self.active:
                raise AdapterError(f"adapter {name!r} is active; reset() or switch away first")
            self.adapters.pop(name, None)
            self._mapped.pop(name, None)

    # ---- switching ------------------------------------------------------------------------------------------
    def switch(self, name: str) -> None:
        """Make `name` the only active adapter, at scale 1."""
        self.fuse({name: 1.0})

    def fuse(self, scales: dict[str, float]) -> None:
        """Activate several adapters at once, each with its scale. Replaces whatever was active."""
        with self._patch_mutex:
            rebuilder = self.rebuilder
            for name, scale in scales.items():
                if name not in self._mapped:
                    raise AdapterError(f"adapter {name!r} is not loaded (loaded: {', '.join(self._mapped) or 'none'})")
                if not np.isfinite(scale):
                    raise AdapterError(f"adapter {name!r}: scale {scale} is not finite")
            terms: dict[str, list] = {}
            for name, scale in scales.items():
                for buf, (idx, delta) in self._mapped[name].items():
                    terms.setdefault(buf, []).append((idx, delta, float(scale)))
            plans = self.patcher.plan(terms)
            with self._lock.write():
                changed = self.patcher.commit(plans)
                self.backend.weights_changed(changed)  # e.g. ExecuTorch reloads a method whose conv weights changed
                if rebuilder is not None and changed:
                    rebuilder.weights_changed()  # runs go to the aliased engine until a rebuild lands
                self.active = dict(scales)
        if rebuilder is not None:
            rebuilder.kick()

    def reset(self) -> None:
        """Back to the base weights, bit-exact."""
        self.fuse({})

    # ---- inference ------------------------------------------------------------------------------------------
    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock.read():
            return self.backend.run(inputs)

    # ---- two-phase switching --------------------------------------------------------------------------------
    def wait_full_speed(self, timeout: float | None = 10.0) -> bool:
        """Block until runs go to a prepacked engine holding the current weights. True in "aliased" mode
        when there is nothing to wait for; False on timeout or if the background build failed."""
        if self.rebuilder is None:
            return True
        return self.rebuilder.wait(timeout)

    @property
    def full_speed(self) -> bool:
        return self.rebuilder is None or self.rebuilder.ready

    def close(self) -> None:
        """Stop the background rebuilder and free the prepacked engine (runs continue on the aliased one)."""
        if self.rebuilder is not None:
            self.rebuilder.close()
            self.rebuilder = None
            with self._lock.write():
                self.backend.drop_prepacked()
            self.mode = "aliased"

    # ---- inspection -----------------------------------------------------------------------------------------
    def weight(self, torch_name: str) -> np.ndarray:
        """A copy of the live weight in torch layout (from its first placement)."""
        info = self.manifest.tensors[torch_name]
        p = info.placements[self.backend.name][0]
        return p.to_torch_layout(self.backend.buffers[p.name], info.shape).copy()

    def _verify_base(self) -> None:
        for info in self.manifest.tensors.values():
            for p in info.placements.get(self.backend.name, ()):
                torch_layout = p.to_torch_layout(self.backend.buffers[p.name], info.shape)
                digest = hashlib.sha256(np.ascontiguousarray(torch_layout).tobytes()).hexdigest()
                if digest != info.sha256:
                    raise ManifestError(f"{self.manifest.root}: weights of {info.name} ({p.name}) differ from the "
                                        "manifest's sha256: the weights file was modified")

    @property
    def input_names(self) -> list[str]:
        return self.backend.input_names

    @property
    def output_names(self) -> list[str]:
        return self.backend.output_names


def open_base(base_dir, backend: str = "onnxruntime", threads: int | None = None, verify: bool = False) -> ShiraSession:
    return ShiraSession(Path(base_dir), backend, threads, verify)
