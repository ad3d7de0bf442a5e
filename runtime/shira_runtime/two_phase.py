"""Two-phase switching: correct at once on the patchable engine, prepacked speed shortly after on a prepacked one.

Why: the engines pack constant weights into private layouts at load (ORT's MLAS prepacking, XNNPACK's packed
weights). The weights we patch in place cannot be packed, so the patchable engine runs 1.2-1.9x slower than the
base (reports/bench). A switch therefore has two phases:

  1. patch the patchable buffers under the session's write lock and drop the prepacked engine: the very next
     run is correct, on the patchable engine;
  2. in a background thread, snapshot the patched weights (under the read lock) and build a fully prepacked
     engine from that snapshot (ORT: `model_prepacked.onnx` + `add_initializer`; ExecuTorch: a copy of
     `model_prepacked.pte` with the weights written in, then loaded). Install it under the write lock only if no
     switch happened meanwhile; otherwise build again from the newer weights.

Runs always see one consistent state: before install, the patchable engine with the current weights; after, a
prepacked engine built from exactly those weights. Memory: at most one prepacked engine at a time, plus its
snapshot (reported as `extra_bytes`).
"""
from __future__ import annotations

import threading
import time


class PrepackedRebuilder:
    """Owns the background thread that keeps the engine's prepacked twin in step with the live weights."""

    def __init__(self, engine, lock):
        self.engine = engine
        self.lock = lock  # the session's RWLock
        self._cond = threading.Condition()
        self._generation = 0  # bumped by every commit
        self._installed = -1  # generation of the installed prepacked engine (-1: none)
        self._closed = False
        self.last_error: str | None = None
        self.history: list[dict] = []  # per install: generation, seconds from the commit to prepacked speed, bytes
        self._commit_time = {}
        self._retired: list = []  # stale engines, dropped by the builder thread
        self._thread = threading.Thread(target=self._loop, name="shira-two-phase", daemon=True)

    def weights_changed(self) -> None:
        """Called under the session's write lock, after a commit: the prepacked engine is stale."""
        # the stale engine is freed by the builder thread, not here: destroying an ORT session (its thread
        # pool, its packed weights) would otherwise add ~0.2 ms to the caller's switch
        self._retired.append(self.engine.install_prepacked(None))
        with self._cond:
            self._generation += 1
            self._commit_time[self._generation] = time.perf_counter()

    def kick(self) -> None:
        """Wake the builder; called after the session released its locks, so that the builder thread does
        not compete with the caller (for the GIL and the locks) before the switch has returned."""
        with self._cond:
            self._cond.notify_all()

    def start(self) -> None:
        """Build and install an engine for the current weights (at load: the base), then keep it in step."""
        with self.lock.read():
            gen = self._generation
            snap = self.engine.snapshot()
        self._install(gen, self.engine.build_prepacked(snap))
        self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a prepacked engine for the current weights is installed (or the rebuilder failed)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._installed != self._generation and not self.last_error and not self._closed:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
            return self._installed == self._generation

    @property
    def ready(self) -> bool:
        return self._installed == self._generation

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._retired.clear()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _install(self, gen: int, twin) -> bool:
        with self.lock.write():
            with self._cond:
                if gen != self._generation or self._closed:  # stale (a switch happened meanwhile) or closing
                    return False
                self.engine.install_prepacked(twin)
                self._installed = gen
                t0 = self._commit_time.get(gen)
                self._commit_time = {g: t for g, t in self._commit_time.items() if g > gen}
                self.history.append({"generation": gen, "extra_bytes": twin.nbytes,
                                     "to_full_speed_s": None if t0 is None else time.perf_counter() - t0})
                del self.history[:-100]
                self._cond.notify_all()
        return True

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and self._installed == self._generation:
                    self._cond.wait()
                if self._closed:
                    return
            try:
                self._retired.clear()  # free stale engines here, off the caller's path (no run uses them)
                with self.lock.read():  # weights cannot change while we copy them
                    gen = self._generation
                    snap = self.engine.snapshot()
                twin = self.engine.build_prepacked(snap)
                self._install(gen, twin)
            except Exception as e:  # noqa: BLE001 - keep serving on the patchable engine, and say why
                with self._cond:
                    self.last_error = f"{type(e).__name__}: {e}"
                    self._cond.notify_all()
                return
