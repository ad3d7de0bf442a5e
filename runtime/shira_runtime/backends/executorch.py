"""ExecuTorch backend (XNNPACK): patches the .pte bytes that the loaded program itself reads.

How a weight stays patchable (docs/MANIFEST.md; measured again at every export):
  * Linear weights are lowered with XNNPACK's `force_non_static_weights_for_f32_linear`, so XNNPACK does not
    pack them at load: every execute() reads them from the program's constant data. A write into those bytes
    reaches the very next execute().
  * Quantized Linear weights (`shira-export --quantize`: XNNPACK's 4-bit blockwise or 8-bit per-channel
    integers with dynamically quantized activations) are always packed at method load, so they are patched
    like conv weights: written, then the method reloaded (docs/QUANTIZATION.md).
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
from shira_format.errors import ManifestError, ShiraError, first_line
from shira_format.weights import program_scales, program_views

from ..engine import Engine

NAME = "executorch"
METHOD = "forward"


class PatchableProgram:
    """A .pte held in memory this process owns and ExecuTorch reads in place."""

    def __init__(self, pte: bytes, source: str = "<pte>", threads: int | None = None, check=None):
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Method, Runtime

        if threads and threads != portable_lib._threadpool_get_thread_count():
            from ..quiet import native_stderr_muted

            with native_stderr_muted():
                portable_lib._unsafe_reset_threadpool(threads)
        if type(pte) is not bytes:
            raise TypeError("PatchableProgram needs a bytes object it alone holds")
        self._Method = Method
        self._pte = pte
        self.source = source
        self.reloads = 0
        addr = ctypes.cast(ctypes.c_char_p(pte), ctypes.c_void_p).value
        self.memory = np.ctypeslib.as_array((ctypes.c_uint8 * len(pte)).from_address(addr))
        self._program = None
        self._method = None
        if check is not None:  # before ExecuTorch parses a byte of it
            check(self)
        try:
            self._program = Runtime.get().load_program(pte)
            self._method = self._program.load_method(METHOD)
        except Exception as e:  # noqa: BLE001 - ExecuTorch raises RuntimeError/ValueError with its own text
            raise ManifestError(f"{source}: ExecuTorch cannot load it: {first_line(e)}") from None
        if getattr(self._program, "_data", None) is not pte:
            raise ShiraError(f"{source}: this ExecuTorch build copies the program; in-place patching is impossible")

    def floats(self, offset: int, count: int) -> np.ndarray:
        """A writable float32 view of `count` values at byte `offset` of the program."""
        if offset < 0 or offset + 4 * count > self.memory.size:
            raise ManifestError(f"{self.source}: a weight at byte {offset} (+{4 * count}) lies outside the "
                                f"{self.memory.size}-byte program (truncated file?)")
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

    def close(self) -> None:
        self._method = None
        self._program = None


def _read(path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ManifestError(f"{path}: cannot read: {e.strerror}") from None


def import_bindings():
    """Import torch and ExecuTorch's bindings and start ExecuTorch's thread pool (where cpuinfo speaks), with
    the known start-up lines muted (runtime/quiet.py). Raises ImportError if either package is missing."""
    import torch  # noqa: F401 - ExecuTorch's Python bindings need torch loaded first

    from ..quiet import native_stderr_muted

    with native_stderr_muted():
        from executorch.extension.pybindings import portable_lib

        portable_lib._threadpool_get_thread_count()
    return portable_lib


def _import_torch():
    """torch first (ExecuTorch's bindings need it), then ExecuTorch itself, with its start-up chatter muted."""
    try:
        import_bindings()
    except ImportError as e:
        raise ShiraError(f"the ExecuTorch backend needs torch and executorch ({e}): "
                         "pip install 'shira-runtime[executorch]'") from None
    import torch

    return torch


class ExecuTorchEngine(Engine):
    """The ExecuTorch engine (engine.py's contract): weights patched inside the loaded program's bytes."""
    name = NAME

    def __init__(self, manifest, threads: int | None = None, verify: str = "fast"):
        torch = _import_torch()
        self._torch = torch
        self._verify = verify
        self._threads = threads
        self._manifest = manifest
        files = manifest.files_of(NAME)
        path = manifest.root / files.patchable
        pte = _read(path)
        self.buffers: dict[str, np.ndarray] = {}
        self._reload_on: set[str] = set()

        self.scales: dict[str, np.ndarray] = {}  # quantized placements: their scales (never patched)
        self.buffer_quant = {p.name: p.quant for _, p in manifest.placements(NAME)
                             if p.quant is not None}

        def locate(program: PatchableProgram) -> None:  # runs before ExecuTorch parses the program
            self.buffers.update(program_views(manifest, program.memory, path))
            self.scales.update(program_scales(manifest, program.memory, path))
            self._reload_on.update(p.name for _, p in manifest.placements(NAME)
                                   if p.reload)
            self._check(self.buffers, path)

        self.program = PatchableProgram(pte, str(path), threads, check=locate)
        self.input_names = [i["name"] for i in manifest.inputs]
        self.output_names = [o["name"] for o in manifest.outputs]
        self._exec_lock = threading.Lock()  # an ExecuTorch method is not re-entrant
        self.prepacked = None  # the prepacked engine: model_prepacked.pte loaded with the current weights
        self._prepacked_path = manifest.root / files.prepacked if files.prepacked else None
        self._prepacked_program: PatchableProgram | None = None
        # per patchable tensor: (its placement in the patchable program, in the prepacked one, torch shape)
        self._pairs = [(info.placements[NAME][0], pp, info.shape) for info in manifest.tensors.values()
                       for pp in info.prepacked_placements.get(NAME, ())]

    def _check(self, buffers: dict[str, np.ndarray], path, prepacked: bool = False) -> None:
        from ..integrity import verify_placements

        verify_placements(self._verify, self._manifest, NAME, buffers, path, self._threads, prepacked,
                          scales=self.scales)

    def entry_scales(self, pname: str, flat: np.ndarray, cols: int) -> np.ndarray:
        """The quantization scale of each of a quantized placement's entries (torch flat indices)."""
        return self.buffer_quant[pname].scale_of(self.scales[pname], flat, cols)

    def close(self) -> None:
        """Free both programs; the session object calls this once, from close()."""
        with self._exec_lock:
            self.prepacked = None
            for prog in (self._prepacked_program, self.program):
                if prog is not None:
                    prog.close()
            self._prepacked_program = None
    def weights_changed(self, names: set[str], entries: dict | None = None) -> None:
        if names & self._reload_on:
            with self._exec_lock:
                self.program.reload()

    # ---- two-phase switching (two_phase.py) -------------------------------------------------------------
    @property
    def prepacked_available(self) -> bool:
        return self._prepacked_path is not None and self._prepacked_path.exists() and bool(self._pairs)

    @property
    def prepacked_nbytes(self) -> int:
        return self._prepacked_program.memory.size if self._prepacked_program is not None else 0

    def drop_prepacked(self) -> None:
        """Free the prepacked program too (the "auto" mode calls this when two-phase buys nothing)."""
        self.prepacked = None
        self._prepacked_program = None

    def snapshot(self) -> list[np.ndarray]:
        """Copies of the live patchable weights in torch layout (taken under the session's read lock)."""
        return [live.to_torch_layout(self.buffers[live.name], shape).copy() for live, _, shape in self._pairs]

    def build_prepacked(self, snapshot: list[np.ndarray]) -> PatchableProgram:
        """Write the weights into model_prepacked.pte's bytes and (re)load its method: XNNPACK packs them all.

        One prepacked program serves every rebuild: the rebuilder only builds while no prepacked engine is
        installed (a commit uninstalls it under the write lock), so no execute() reads it meanwhile. The first
        build loads the program (ExecuTorch's program load is the slow part: ~160 ms for style-net); later
        builds only reload the method."""
        if self._prepacked_program is None:
            def check(program: PatchableProgram) -> None:
                self._check(program_views(self._manifest, program.memory, self._prepacked_path, prepacked=True),
                            self._prepacked_path, prepacked=True)

            prog = PatchableProgram(_read(self._prepacked_path), str(self._prepacked_path), check=check)
            prog.nbytes = prog.memory.size
            self._prepacked_program = prog
        else:
            self._prepacked_program.drop_method()
        prog = self._prepacked_program
        for (_, pp, shape), arr in zip(self._pairs, snapshot):
            pp.to_torch_layout(prog.floats(pp.offset, int(np.prod(pp.shape))), shape)[...] = arr
        prog.reload()
        return prog

    def run(self, inputs: dict[str, np.ndarray], patchable: bool = False) -> dict[str, np.ndarray]:
        args = []
        for name in self.input_names:
            if name not in inputs:
                raise KeyError(f"missing model input {name!r} (inputs: {self.input_names})")
            args.append(self._torch.from_numpy(np.ascontiguousarray(inputs[name])))
        with self._exec_lock:
            prog = self.program if patchable or self.prepacked is None else self.prepacked
            outs = prog.execute(args)
            return {n: o.numpy().copy() for n, o in zip(self.output_names, outs)}
