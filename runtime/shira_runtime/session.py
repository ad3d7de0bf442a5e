"""`ShiraSession`: one exported base loaded once; adapters switched, fused and reset in place.

    s = ShiraSession("out/tiny-llama")          # loads the inference engine once
    s.load("a.shira"); s.load("b.shira")         # validated completely, nothing patched yet
    s.switch("a")                                # scatter a's values into the live weights
    s.fuse({"a": 0.7, "b": 0.5})                 # overlapping entries sum their scaled deltas
    s.reset()                                    # bit-exact base again
    s.run({"input_ids": ids})
    s.close()                                    # or `with ShiraSession(...) as s:`

Lifetime: `close()` stops the background thread and frees both engines; later calls raise ShiraError. A
session that is never closed is closed when it is garbage-collected or at interpreter exit (before native
libraries are torn down: a background build of an ORT session still running at exit aborted the process).

Modes (`mode=` asks for one; `session.mode` says which one a session got, `session.mode_reason` why not another):
  "in-place"    ONNX Runtime only: one engine on its own packed weights, patched where they lie: found in the
                live session's memory (inplace/live.py), or baked once per CPU into a cached file whose
                mappings are patched (inplace/bake.py, inplace/engine.py; `bake=` chooses). Base speed at
                once after every switch, the base's memory, no background work. Refused with the reason where
                neither route can serve the base.
  "patchable"   only the patchable engine (weights as graph inputs / non-static XNNPACK weights): least
                memory, slower runs.
  "two-phase"   two-phase switching (two_phase.py): the patchable engine at once, a fully prepacked engine
                rebuilt in the background after each switch. Twice the memory; slow runs until the rebuild lands.
  "auto"        (default) "in-place" where it works; otherwise measures both engines on the manifest's sample
                input and keeps two-phase only where the patchable engine is more than 2% slower.
"""
from __future__ import annotations

import logging
import os
import statistics
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from shira_format import manifest as manifest_mod
from shira_format.adapter import Adapter, read_adapter
from shira_format.errors import AdapterError, ManifestError, ShiraError, first_line
from shira_format.quant import matrix_shape

from .integrity import VERIFY_MODES
from .patcher import WeightPatcher
from .two_phase import PrepackedRebuilder
from .rwlock import RWLock

BACKENDS = ("onnxruntime", "executorch")
MODES = ("auto", "in-place", "two-phase", "patchable")
BAKE_CHOICES = ("auto", "always", "never")
AUTO_THRESHOLD = 1.02  # two-phase pays off when the patchable engine is slower than this ratio
SAME_ANSWER = 1e-4  # two engines answer alike if their outputs differ by at most this share of the output's scale
# (float32 kernels differ in summation order, ~1e-6; quantized kernels that quantize activations their own way
# differ by percents, and then "auto" keeps one engine: a state's answer must not depend on which one ran)
PLAN_CACHE = 4  # adapters kept decoded with their switch plans: a fusion of up to 4, or back and forth between 2
log = logging.getLogger("shira_runtime")


@dataclass(frozen=True)
class LoadedAdapter:
    """A loaded adapter as the session keeps it: the validated blob itself (its compact bytes, not decoded
    arrays), decoded again when a switch needs it and it is not among the `plan_cache` most recent."""
    name: str
    source: str
    nnz: int
    blob: bytes = field(repr=False)


@dataclass
class _Decoded:
    """What switching to one adapter needs, per engine buffer (in place: per copy in the baked file)."""
    mapped: dict  # buffer -> (indices in the buffer's layout, sorted; deltas permuted to match[, entry scales])
    touched: dict  # quantized placement -> the entries this adapter writes
    plans: dict  # buffer -> BufferPlan of this adapter alone at scale 1, made ahead (WeightPatcher.switch_plan)


def _make_inplace_engine(name: str, manifest, threads, verify, cache_dir, bake: str):
    """The in-place engine, or (None, why not). `bake`: see ShiraSession."""
    if name != "onnxruntime":
        return None, ("ExecuTorch has no in-place route: XNNPACK packs its weights into private memory at "
                      "method load (docs/INPLACE.md)")
    if not os.path.exists("/proc/self/maps"):  # Linux and Android have it; macOS and Windows do not
        return None, ("no /proc/self/maps on this system: neither ONNX Runtime's packed weights in memory nor its "
                      "mappings of a baked file can be found")
    from .inplace.engine import InPlaceOrtEngine
    from .inplace.layout import BakeError
    from .inplace.live import LiveOrtEngine

    if bake in ("auto", "never"):
        try:
            return LiveOrtEngine(manifest, threads, verify, cache_dir, log=log.info), None
        except BakeError as e:
            if bake == "never":
                return None, f"ORT's packed weights cannot be found in its memory: {e}"
            log.info("%s: ORT's packed weights cannot be found in its memory (%s); baking them", manifest.root, e)
    try:
        return InPlaceOrtEngine(manifest, threads, verify, cache_dir, log=log.info), None
    except BakeError as e:
        return None, str(e)


def _make_engine(name: str, manifest, threads, verify):
    if name == "onnxruntime":
        from .backends.onnxruntime import OrtEngine

        return OrtEngine(manifest, threads, verify)
    if name == "executorch":
        from .backends.executorch import (
            ExecuTorchEngine,  # imports torch: ExecuTorch's bindings need it
        )

        return ExecuTorchEngine(manifest, threads, verify)
    raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")


class _Resources:
    """What a session owns natively, closed exactly once: by close(), by the garbage collector, or at exit.

    Kept apart from the session so that the finalizer holds no reference to the session itself."""

    def __init__(self):
        self.engine = None
        self.rebuilder: PrepackedRebuilder | None = None
        self.patcher: WeightPatcher | None = None

    def close(self) -> None:
        if self.rebuilder is not None:
            self.rebuilder.close()  # joins the builder thread: no engine is being built after this
            self.rebuilder = None
        if self.patcher is not None:
            self.patcher.close()
        if self.engine is not None:
            self.engine.close()
            self.engine = None


class ShiraSession:
    def __init__(self, base_dir, backend: str = "onnxruntime", threads: int | None = None, verify: str = "fast",
                 mode: str = "auto", cache_dir=None, plan_cache: int = PLAN_CACHE, bake: str = "auto"):
        """Open an exported base directory.

        `verify`: "fast" (default) checks every patchable weight, and its place and layout in the manifest,
        against the CRC-32 recorded at export; "full" also re-hashes each weight in torch layout (SHA-256);
        "off" skips both. A damaged base raises ManifestError naming the file. In-place mode checks the
        bytes the engine reads: every live copy in the baked file.
        `cache_dir`: where in-place mode keeps its baked files (default $SHIRA_CACHE_DIR, else ~/.cache/shira).
        `bake`: how in-place mode finds ORT's packed weights. "auto" (default): in the live session's memory (no
        file, inplace/live.py; later opens take 1.2x a plain session's creation, a baked file's 1.5x: it checks
        every copy it maps), and only a base where that cannot be done (quantized, a packing no form describes)
        is baked. "always": bake (the file the Java runtime reads; later opens map it). "never": never bake.
        `plan_cache`: how many adapters stay decoded with their switch plans ready (about 20 bytes per entry
        each); every other loaded adapter costs its blob's bytes and is decoded again when switched to
        (`prepare(name)` does that ahead of time)."""
        if isinstance(plan_cache, bool) or not isinstance(plan_cache, int) or plan_cache < 1:
            raise ValueError(f"plan_cache must be an integer >= 1, got {plan_cache!r}")
        self._plan_cache = plan_cache
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if verify not in VERIFY_MODES:
            raise ValueError(f"verify must be one of {', '.join(VERIFY_MODES)}, got {verify!r}")
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        if bake not in BAKE_CHOICES:
            raise ValueError(f"bake must be one of {', '.join(BAKE_CHOICES)}, got {bake!r}")
        self._closed = True  # until every engine is up: a failed __init__ leaves nothing to close
        self.rebuilder: PrepackedRebuilder | None = None  # two-phase switching's background builder
        self._lock = RWLock()  # inference = readers, commit = writer
        self._patch_mutex = threading.Lock()  # one load/plan/commit at a time
        self._res = _Resources()
        self._finalizer = weakref.finalize(self, self._res.close)  # also runs at interpreter exit
        self.manifest = manifest_mod.load(base_dir)
        self.mode_reason: str | None = None
        try:
            inplace = None
            if mode in ("auto", "in-place"):
                inplace, self.mode_reason = _make_inplace_engine(backend, self.manifest, threads, verify, cache_dir,
                                                                  bake)
                if inplace is None and mode == "in-place":
                    raise ShiraError(f"{self.manifest.root}: cannot patch in place: {self.mode_reason}")
            self._res.engine = self.engine = inplace or _make_engine(backend, self.manifest, threads, verify)
            self._open(threads, "in-place" if inplace else mode)
        except BaseException:
            self._finalizer()
            raise
        self._closed = False

    def _open(self, threads, wanted: str) -> None:
        self._res.patcher = self.patcher = WeightPatcher(self.engine.buffers, threads, self.engine.absmax,
                                                         dict(self.engine.buffer_quant))
        self.clamped = 0  # quantized bases: entries of the active state clamped to the integer range
        self._placement_of = self.engine.placement_of()  # in place: copy buffer -> its placement
        self.adapters: dict[str, LoadedAdapter] = {}
        self._decoded: OrderedDict[str, _Decoded] = OrderedDict()  # the plan_cache most recently used, last newest
        self.active: dict[str, float] = {}
        self.rule = "sum"  # the merge rule of the active state (fuse)
        self.calibration: dict | None = None
        self.mode = "in-place" if wanted == "in-place" else "patchable"
        if wanted in ("auto", "two-phase"):
            if self.engine.prepacked_available:
                self._start_two_phase(calibrate=wanted == "auto")
            else:  # an explicit request that cannot be met raises; "auto" says why it stayed on one engine
                why = (f"two-phase switching needs the export's prepacked {'program' if self.engine.name == 'executorch' else 'model'}"
                       " with weights it packs, and this export has none (exported by an older shira-export?)")
                if wanted == "two-phase":
                    raise ShiraError(f"{self.manifest.root}: cannot switch in two phases: {why}")
                self._fall_back(why)

    def _start_two_phase(self, calibrate: bool) -> None:
        x = self.manifest.sample_inputs() if calibrate else None  # a missing sample fails before any thread starts
        self._res.rebuilder = self.rebuilder = PrepackedRebuilder(self.engine, self._lock)
        self.rebuilder.start()
        self.mode = "two-phase"
        if calibrate:
            t = {}
            for label, patchable in (("patchable_ms", True), ("prepacked_ms", False)):
                time.sleep(0.05)  # the other engine's spinning worker threads would steal the cores
                try:
                    for _ in range(3):  # warm-up: first runs allocate
                        self.engine.run(x, patchable=patchable)
                except Exception as e:  # noqa: BLE001 - the engines raise their own types for a bad feed
                    raise ManifestError(f"{self.manifest.file(self.manifest.sample)}: the "
                                        f"sample input does not run: {first_line(e, 200)}") from None
                runs = []
                for _ in range(5):
                    t0 = time.perf_counter()
                    self.engine.run(x, patchable=patchable)
                    runs.append((time.perf_counter() - t0) * 1e3)
                t[label] = statistics.median(runs)
            t["ratio"] = t["patchable_ms"] / t["prepacked_ms"]
            a, b = self.engine.run(x, patchable=True), self.engine.run(x, patchable=False)
            t["engines_differ"] = max((float(np.max(np.abs(a[k] - b[k]))) / max(float(np.max(np.abs(b[k]))), 1e-12)
                                       for k in b if b[k].size), default=0.0)
            self.calibration = t
            if t["engines_differ"] > SAME_ANSWER:  # one engine, so that a state always gets the same answer
                why = (f"two-phase switching is off: the packed engine's output is {t['engines_differ']:.2g} of its "
                       "scale away from the patchable engine's (other kernels)")
                self._fall_back(why)
                self._stop_two_phase()
            elif t["ratio"] <= AUTO_THRESHOLD:  # nothing to win: free the prepacked engine and its memory
                why = (f"two-phase switching is off: the patchable engine runs within {AUTO_THRESHOLD - 1:.0%} of the "
                       f"packed one on the sample input ({t['ratio']:.2f}x), so its second engine buys nothing")
                self._fall_back(why)
                self._stop_two_phase()

    # ---- lifetime -------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the background thread, free both engines and the patch threads. Idempotent; any later call on
        the session raises ShiraError."""
        with self._patch_mutex:
            if self._closed:
                return
            self._closed = True
        if self._res.rebuilder is not None:
            # joined WITHOUT the session's lock: a builder that finished its engine takes the write lock to
            # install it, and would wait for us forever (then die mid-build at interpreter exit)
            self._res.rebuilder.close()
        with self._lock.write():  # no run() is inside an engine while it is freed
            self._finalizer()
            self.rebuilder = None

    @property
    def mode(self) -> str:
        """"in-place", "two-phase" or "patchable"; "patchable" too once a background build failed (its thread
        has stopped: runs stay on the patchable engine, and mode_reason says why)."""
        if self._mode == "two-phase" and self.rebuilder is not None and self.rebuilder.last_error:
            return "patchable"
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        self._mode = value

    @property
    def mode_reason(self) -> str | None:
        """Why this session is not in place (one line), and, in two-phase mode, a background build that failed:
        runs then stay on the patchable engine (correct, slower) until a later switch builds again."""
        failed = self.rebuilder.last_error if self.rebuilder is not None else None
        if failed:
            return "; ".join(r for r in (self._mode_reason, f"the background build failed: {first_line(failed)}") if r)
        return self._mode_reason

    @mode_reason.setter
    def mode_reason(self, value: str | None) -> None:
        self._mode_reason = value

    def _fall_back(self, why: str) -> None:
        """Add one reason this session runs slower than the mode it would have preferred."""
        self._mode_reason = f"{self._mode_reason}; {why}" if self._mode_reason else why

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "ShiraSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ShiraError(f"{self.manifest.root}: this session is closed")

    # ---- adapters -------------------------------------------------------------------------------------------
    def load(self, blob, name: str | None = None) -> str:
        """Validate and decode an adapter blob (path or bytes). Refusal raises AdapterError; nothing is patched.
        The session keeps the blob's bytes; the decoded form stays only while the adapter is among the
        `plan_cache` most recently loaded or switched to."""
        self._check_open()
        source = str(blob) if isinstance(blob, (str, Path)) else "<adapter bytes>"
        if isinstance(blob, (str, Path)):
            try:
                blob = Path(blob).read_bytes()
            except OSError as e:
                raise AdapterError(f"{source}: cannot read: {e.strerror or e}") from None
        adapter = read_adapter(blob, self.manifest, source=source)
        name = name or adapter.name
        mapped, touched = self._map(adapter)
        with self._patch_mutex:
            self._check_open()
            if name in self.active:
                raise AdapterError(f"{adapter.source}: adapter {name!r} is active; reset() before replacing it")
            self.engine.prepare_pages(mapped)  # in place: copy-on-write now, not in the first switch
            self.adapters[name] = LoadedAdapter(name, adapter.source, adapter.nnz, bytes(blob))
            self._decoded.pop(name, None)
            self._keep_decoded(name, _Decoded(mapped, touched, self.patcher.switch_plan(mapped)))
        return name

    def prepare(self, name: str) -> None:
        """Decode `name` and plan its switch now (e.g. when a style comes into view), so that the switch to it
        is only the scatter. A no-op for an adapter that is still decoded."""
        with self._patch_mutex:
            self._check_open()
            self._decoded_for(name)

    def _map(self, adapter: Adapter) -> tuple[dict, dict]:
        """An adapter's entries in the engine's buffers: buffer -> (indices, deltas[, entry scales]), and the
        quantized placements' entries it writes."""
        mapped: dict[str, tuple] = {}
        touched: dict[str, np.ndarray] = {}  # quantized placement -> the entries this adapter writes
        for t in adapter.tensors.values():
            info = self.manifest.tensors[t.target]
            for p in info.placements.get(self.engine.name, ()):
                mapped[p.name] = p.patch_terms(t.indices, t.values, info.shape)  # scaled where BN was folded
                if p.quant is not None:  # each entry's quantization scale travels with it (quant.py)
                    mapped[p.name] += (self.engine.entry_scales(p.name, mapped[p.name][0], matrix_shape(info.shape)[1]),)
                    touched[p.name] = mapped[p.name][0]
        return self.engine.to_buffers(mapped), touched  # in place: each placement's copies in the baked file

    def _decoded_for(self, name: str) -> _Decoded:
        """The adapter's decoded form, decoding its blob again if it left the cache (under the patch mutex)."""
        d = self._decoded.get(name)
        if d is None:
            if name not in self.adapters:
                raise AdapterError(f"adapter {name!r} is not loaded (loaded: {', '.join(self.adapters) or 'none'})")
            kept = self.adapters[name]
            mapped, touched = self._map(read_adapter(kept.blob, self.manifest, source=kept.source))
            d = _Decoded(mapped, touched, self.patcher.switch_plan(mapped))
        self._keep_decoded(name, d)
        return d

    def _keep_decoded(self, name: str, d: _Decoded) -> None:
        self._decoded[name] = d
        self._decoded.move_to_end(name)
        while len(self._decoded) > self._plan_cache:
            self._decoded.popitem(last=False)

    def unload(self, name: str) -> None:
        with self._patch_mutex:
            self._check_open()
            if name in self.active:
                raise AdapterError(f"adapter {name!r} is active; reset() or switch away first")
            self.adapters.pop(name, None)
            self._decoded.pop(name, None)

    # ---- switching ------------------------------------------------------------------------------------------
    def switch(self, name: str) -> None:
        """Make `name` the only active adapter, at scale 1."""
        self.fuse({name: 1.0})

    def fuse(self, scales: dict[str, float], rule: str = "sum") -> None:
        """Activate several adapters at once, each with its scale. Replaces whatever was active. `rule`: how an
        entry that several adapters touch combines their scaled deltas (docs/FORMAT.md §6.1): "sum" (the
        default), "mean" (their average), "ties" (the sum's sign elected, the agreeing terms averaged) or
        "magnitude" (the largest term wins). Entries one adapter touches get its scaled delta under every rule."""
        with self._patch_mutex:
            self._check_open()
            rebuilder = self.rebuilder
            for name, scale in scales.items():
                if name not in self.adapters:
                    raise AdapterError(f"adapter {name!r} is not loaded (loaded: {', '.join(self.adapters) or 'none'})")
                if isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating, np.integer)):
                    raise AdapterError(f"adapter {name!r}: scale {scale!r} is not a number")
                if not np.isfinite(scale):
                    raise AdapterError(f"adapter {name!r}: scale {scale} is not finite")
            decoded = {name: self._decoded_for(name) for name in scales}
            (only, scale), = scales.items() if len(scales) == 1 else ((None, None),)
            ready = decoded[only].plans if scale == 1.0 else None
            terms: dict[str, list] = {}
            for name, scale in scales.items():
                for buf, (idx, delta, *qscale) in decoded[name].mapped.items():
                    if ready is None or buf not in ready:
                        terms.setdefault(buf, []).append((idx, delta, float(scale), *qscale))
            plans = self.patcher.plan(terms, ready, rule)
            with self._lock.write():
                changed = self.patcher.commit(plans)
                # e.g. ExecuTorch reloads a method whose conv weights changed; in place on ARM, the sums a packer
                # derives from quantized integers are computed again for the entries now patched
                self.engine.weights_changed(changed, self._entries_of(decoded) if self.engine.needs_entries else None)
                if rebuilder is not None and changed:
                    rebuilder.weights_changed()  # runs go to the patchable engine until a rebuild lands
                self.active = dict(scales)
                self.rule = rule
                # once per placement: in place, one placement's plan is written into each of its copies
                self.clamped = sum({self._placement_of.get(b, b): p.clamped for b, p in plans.items()}.values())
        if rebuilder is not None:
            rebuilder.kick()

    def _entries_of(self, decoded: dict[str, _Decoded]) -> dict[str, np.ndarray]:
        """Quantized placement -> the entries (sorted, unique) that the adapters in `decoded` write."""
        parts: dict[str, list] = {}
        for d in decoded.values():
            for pname, idx in d.touched.items():
                parts.setdefault(pname, []).append(idx)
        return {pname: np.unique(np.concatenate(p)) if len(p) > 1 else p[0] for pname, p in parts.items()}

    def reset(self) -> None:
        """Back to the base weights, bit-exact."""
        self.fuse({})

    # ---- inference ------------------------------------------------------------------------------------------
    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.engine.input_names if n not in inputs]
        if missing:
            unknown = sorted(set(inputs) - set(self.engine.input_names))
            raise ShiraError(f"{self.manifest.root}: no value for input {missing[0]!r}"
                             + (f" (given {', '.join(map(repr, unknown))}, which the model does not take)" if unknown
                                else "") + f"; its inputs are {', '.join(self.engine.input_names)}")
        with self._lock.read():
            if self._closed:
                self._check_open()
            return self.engine.run(inputs)

    # ---- two-phase switching --------------------------------------------------------------------------------
    def wait_full_speed(self, timeout: float | None = 10.0) -> bool:
        """Block until runs go to a prepacked engine holding the current weights. True in "patchable" mode
        when there is nothing to wait for; False on timeout or if the background build failed."""
        if self.rebuilder is None:
            return True
        return self.rebuilder.wait(timeout)

    @property
    def full_speed(self) -> bool:
        return self.rebuilder is None or self.rebuilder.ready

    def stop_two_phase(self) -> None:
        """Stop the background rebuilder and free the prepacked engine; runs continue on the patchable one
        (least memory). The session stays open."""
        self._check_open()
        self._stop_two_phase()

    def _stop_two_phase(self) -> None:
        if self.rebuilder is not None:
            self.rebuilder.close()
            self.rebuilder = self._res.rebuilder = None
            with self._lock.write():
                self.engine.drop_prepacked()
        self.mode = "patchable"

    # ---- inspection -----------------------------------------------------------------------------------------
    def weight(self, torch_name: str) -> np.ndarray:
        """A copy of the live weight in torch layout (from its first placement). For a folded weight this is
        the stored, folded weight (the torch weight times its channel_scale); for a quantized one the float32
        weight its integers and scales hold."""
        self._check_open()
        info = self.manifest.tensors[torch_name]
        return self.engine.live_weight(info.placements[self.engine.name][0], info.shape)

    def live_buffers(self) -> dict[str, np.ndarray]:
        """A copy of every buffer the session patches, by name (in place: each live copy in ORT's mappings):
        what tests and benches compare to see that a reset is bit-exact or a refusal wrote nothing."""
        self._check_open()
        with self._lock.read():
            return {name: np.array(buf) for name, buf in self.engine.buffers.items()}

    @property
    def input_names(self) -> list[str]:
        return self.engine.input_names

    @property
    def output_names(self) -> list[str]:
        return self.engine.output_names


def open_base(base_dir, backend: str = "onnxruntime", threads: int | None = None, verify: str = "fast",
              mode: str = "auto", cache_dir=None) -> ShiraSession:
    return ShiraSession(Path(base_dir), backend, threads, verify, mode, cache_dir)
