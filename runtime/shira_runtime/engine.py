"""The engine contract: what `ShiraSession` asks of an inference engine, and nothing else.

An engine owns one loaded model and the weight buffers the session patches (`session.engine`). Three implement
it: `OrtEngine`, the patchable ONNX Runtime engine (backends/onnxruntime.py: weights as graph inputs),
`ExecuTorchEngine` (backends/executorch.py: weights inside the loaded program) and `InPlaceOrtEngine`
(inplace/engine.py: ORT's own packed weights, found in its mappings of a baked file). `backend=` in
`ShiraSession` names the library ("onnxruntime", "executorch"); the engine is what runs on it. The Android core has the same shape
(`StyleEngine`). docs/MANIFEST.md ("Engines: the words used everywhere") names the engines and the modes.

Every engine must
  - hold `name` (the manifest's placement key: "onnxruntime" or "executorch"), `buffers` (buffer name -> a
    writable numpy view of bytes the engine computes on), `input_names`, `output_names`;
  - `run(inputs, patchable=False)`; `weights_changed(names, entries)` after every commit; `entry_scales` for
    quantized placements; `close()`, called once.
Some engines may (the defaults here say what "not at all" means):
  - keep several copies of a placement (in place): `to_buffers`, `placement_of`, `prepare_pages`;
  - recompute values derived from quantized integers after a commit: `needs_entries`;
  - keep a second, fully prepacked engine for two-phase switching (two_phase.py drives it): the `prepacked_*`
    members, `snapshot`, `build_prepacked`, `install_prepacked`, `drop_prepacked`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from types import MappingProxyType

import numpy as np
from shira_format.quant import dequantize, matrix_shape


class Engine(ABC):
    name: str
    buffers: dict[str, np.ndarray]  # what the patcher writes: the engine computes on these bytes
    input_names: list[str]
    output_names: list[str]
    absmax: dict[str, float] | None = None  # per float buffer: the base's largest |value| (patch range check)
    buffer_quant: dict = MappingProxyType({})  # quantized buffer -> its Quant (engines with any set their own)
    scales: dict[str, np.ndarray] = MappingProxyType({})  # quantized placement -> its float32 scales (never patched)
    prepacked = None  # the installed prepacked engine (two-phase switching), or None

    # ---- must -----------------------------------------------------------------------------------------------
    @abstractmethod
    def run(self, inputs: dict[str, np.ndarray], patchable: bool = False) -> dict[str, np.ndarray]:
        """Outputs by name. `patchable`: run the patchable engine even when a prepacked one is installed."""

    @abstractmethod
    def weights_changed(self, names: set[str], entries: dict[str, np.ndarray] | None = None) -> None:
        """Called under the session's write lock after a commit wrote `names` (buffers); `entries` (only where
        `needs_entries`): quantized placement -> the entries the active adapters write."""

    @abstractmethod
    def entry_scales(self, pname: str, flat: np.ndarray, cols: int) -> np.ndarray:
        """The quantization scale of each torch flat index of quantized placement `pname`."""

    @abstractmethod
    def close(self) -> None:
        """Free the engine(s) and drop every view into their memory; called once."""

    # ---- may: several copies of a placement -------------------------------------------------------------------
    def to_buffers(self, mapped: dict[str, tuple]) -> dict[str, tuple]:
        """Placement -> (flat indices, deltas[, entry scales]) into buffer -> the same, sorted by position.
        One buffer per placement here: nothing to do."""
        return mapped

    def placement_of(self) -> dict[str, str]:
        """Buffer -> its placement, where they differ (in place: a copy of a placement)."""
        return {}

    def prepare_pages(self, mapped: dict[str, tuple]) -> None:
        """Make ready, at load, the memory a later switch writes (in place: copy-on-write pages)."""

    @property
    def needs_entries(self) -> bool:
        """Whether weights_changed needs the entries the active adapters write."""
        return False

    def live_weight(self, p, shape) -> np.ndarray:
        """A copy of placement `p`'s live weight in torch layout (a quantized one's float32 value)."""
        if p.quant is not None:
            return dequantize(self.buffers[p.name], self.scales[p.name], p.quant, *matrix_shape(shape)).reshape(shape)
        return p.to_torch_layout(self.buffers[p.name], shape).copy()

    # ---- may: two-phase switching -----------------------------------------------------------------------------
    @property
    def prepacked_available(self) -> bool:
        """Whether this engine can build a fully prepacked twin (the export ships one)."""
        return False

    @property
    def prepacked_nbytes(self) -> int:
        """Bytes a prepacked twin holds now (0: none loaded)."""
        return 0

    def snapshot(self):
        """The live weights, copied under the session's read lock, for build_prepacked."""
        raise NotImplementedError(f"the {type(self).__name__} engine has no prepacked twin")

    def build_prepacked(self, snapshot):
        """A prepacked engine holding `snapshot` (off the caller's thread)."""
        raise NotImplementedError(f"the {type(self).__name__} engine has no prepacked twin")

    def install_prepacked(self, engine) -> object:
        """Route plain runs to `engine` (None: to the patchable one); returns the engine it replaces."""
        old, self.prepacked = self.prepacked, engine
        return old

    def drop_prepacked(self) -> None:
        """Free the prepacked twin and everything it holds; runs go to the patchable engine."""
        self.prepacked = None
