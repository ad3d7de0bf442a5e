"""ExecuTorch backend (XNNPACK): patches the .pte bytes that the loaded program itself reads.

How a weight stays patchable (measured in ../shared/DESIGN.md, checked again at every export):
  * Linear weights are lowered with XNNPACK's `force_non_static_weights_for_f32_linear`, so XNNPACK does not
    pack them at load: every execute() reads them from the program's constant data. A write into those bytes
    reaches the very next execute().
  * Conv weights cannot take that flag (the method then fails to load), so XNNPACK packs them at method load,
    stored channels-last (OHWI) inside the delegate payload. A change to one is written into the same bytes and
    the method is reloaded (`reload: true` in the manifest); the switch time includes that reload.

The program is read into a private `bytes` object that is handed to ExecuTorch, which keeps a pointer to it,
not a copy (a bytearray would be copied and the patches lost). The runtime writes through a numpy view of
that same memory and keeps the object alive as long as the program. ExecuTorch does not synchronise writes
with running kernels, so execute() and patching never overlap: the session's write lock plus this backend's
execute lock see to that.
"""
from __future__ import annotations

import ctypes
import threading

import numpy as np

from ..errors import ManifestError, ShiraError

NAME = "executorch"
METHOD = "forward"


class PatchableProgram:
    """A .pte held in memory this process owns and ExecuTorch reads in place."""

    def __init__(self, pte: bytes, source: str = "<pte>", threads: int | None = None):
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Method, Runtime

        if threads:
            portable_lib._unsafe_reset_threadpool(threads)
        if type(pte) is not bytes:
            raise TypeError("PatchableProgram needs a bytes object it alone holds")
        self._Method = Method
        self._pte = pte
        self._program = Runtime.get().load_program(pte)
        if getattr(self._program, "_data", None) is not pte:
            raise ShiraError(f"{source}: this ExecuTorch build copies the program; in-place patching is impossible")
        addr = ctypes.cast(ctypes.c_char_p(pte), ctypes.c_void_p).value
        self.memory = np.ctypeslib.as_array((ctypes.c_uint8 * len(pte)).from_address(addr))
        self._method = self._program.load_method(METHOD)
        self.reloads = 0

    def floats(self, offset: int, count: int) -> np.ndarray:
        """A writable float32 view of `count` values at byte `offset` of the program."""
        if offset < 0 or offset + 4 * count > self.memory.size:
            raise ManifestError(f"buffer at byte {offset} (+{4 * count}) lies outside the {self.memory.size}-byte program")
        return self.memory[offset : offset + 4 * count].view(np.float32)

    def execute(self, inputs: list):
        return self._method.execute(inputs)

    def drop_method(self) -> None:
        """Release the loaded method (and XNNPACK's packed weights) before its bytes are rewritten."""
        self._method = None

    def reload(self) -> None:
        """Load the method again from the (patched) bytes: XNNPACK repacks the static weights."""
        self._method = self._Method(self._program._program.load_method(METHOD))
        self.reloads += 1


class ExecuTorchBackend:
    name = NAME

    def __init__(self, manifest, threads: int | None = None):
        import torch  # noqa: F401 - ExecuTorch's Python bindings need torch loaded first

        self._torch = torch
        art = manifest.artifact(NAME)
        path = manifest.root / art["program"]
        try:
            pte = path.read_bytes()
        except OSError as e:
            raise ManifestError(f"{path}: cannot read: {e.strerror}") from None
        self.program = PatchableProgram(pte, str(path), threads)
        self.buffers: dict[str, np.ndarray] = {}
        self._reload_on: set[str] = set()
        for info in manifest.tensors.values():
            for p in info.placements.get(NAME, ()):
                self.buffers[p.name] = self.program.floats(p.offset, int(np.prod(p.shape)))
                if p.reload:
                    self._reload_on.add(p.name)
        self.input_names = [i["name"] for i in manifest.inputs]
        self.output_names = [o["name"] for o in manifest.outputs]
        self._exec_lock = threading.Lock()  # an ExecuTorch method is not re-entrant
        self._threads = threads
        self.prepacked = None  # a PatchableProgram loaded from model_static.pte with the current weights
        self._static_path = manifest.root / art["static_program"] if art.get("static_program") else None
        self._static: PatchableProgram | None = None
        # per patchable tensor: (its live placement, its placement in model_static.pte, torch shape)
        self._static_pairs = [(info.placements[NAME][0], sp, info.shape) for info in manifest.tensors.values()
                              for sp in info.placements.get(f"{NAME}-static", ())]

    def weights_changed(self, names: set[str]) -> None:
        if names & self._reload_on:
            with self._exec_lock:
                self.program.reload()

    # ---- two-phase switching (runtime/prepack.py) -------------------------------------------------------------
    @property
    def prepacked_available(self) -> bool:
        return self._static_path is not None and self._static_path.exists() and bool(self._static_pairs)

    def drop_prepacked(self) -> None:
        """Free the static program too (the "auto" mode calls this when two-phase buys nothing)."""
        self.prepacked = None
        self._static = None

    def snapshot(self) -> list[np.ndarray]:
        """Copies of the live patchable weights in torch layout (taken under the session's read lock)."""
        return [live.to_torch_layout(self.buffers[live.name], shape).copy() for live, _, shape in self._static_pairs]

    def build_prepacked(self, snapshot: list[np.ndarray]) -> PatchableProgram:
        """Write the weights into model_static.pte's bytes and (re)load its method: XNNPACK packs them all.

        One static program serves every rebuild: the rebuilder only builds while no prepacked engine is
        installed (a commit uninstalls it under the write lock), so no execute() reads it meanwhile. The first
        build loads the program (ExecuTorch's program load is the slow part: ~160 ms for style-net); later
        builds only reload the method."""
        if self._static is None:
            self._static = PatchableProgram(self._static_path.read_bytes(), str(self._static_path))
            self._static.nbytes = self._static.memory.size
        else:
            self._static.drop_method()
        for (_, static, shape), arr in zip(self._static_pairs, snapshot):
            static.to_torch_layout(self._static.floats(static.offset, int(np.prod(static.shape))), shape)[...] = arr
        self._static.reload()
        return self._static

    def run(self, inputs: dict[str, np.ndarray], aliased: bool = False) -> dict[str, np.ndarray]:
        args = []
        for name in self.input_names:
            if name not in inputs:
                raise KeyError(f"missing model input {name!r} (inputs: {self.input_names})")
            args.append(self._torch.from_numpy(np.ascontiguousarray(inputs[name])))
        with self._exec_lock:
            prog = self.program if aliased or self.prepacked is None else self.prepacked
            outs = prog.execute(args)
            return {n: o.numpy().copy() for n, o in zip(self.output_names, outs)}
