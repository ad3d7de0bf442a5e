"""ONNX Runtime backend: patchable weights are graph inputs fed from buffers this process owns.

Why graph inputs (docs/MANIFEST.md, "Why graph inputs"): ORT copies and prepacks constant initializers at session load,
so a later write into the original array is invisible. A graph input is read from the bound buffer on every
run, so an in-place write reaches the very next run. Only the patchable weights take this route; all other
weights stay initializers inside model.onnx and keep ORT's prepacked fast path. Constant folding and layout
passes cannot make stale private copies of a graph input, which closes the stale-copy pitfalls docs/MANIFEST.md lists.
"""
from __future__ import annotations

import threading

import numpy as np
import onnxruntime as ort
from shira_format.errors import ManifestError, first_line
from shira_format.manifest import Manifest
from shira_format.weights import open_weights, quant_scales, safetensors_views

from ..engine import Engine

NAME = "onnxruntime"


def session_options(threads: int | None, optimize: bool = True, config: dict | None = None) -> ort.SessionOptions:
    """ONNX Runtime's options as every session in this project sets them: `threads` intra-op threads (None: ORT's
    default), one inter-op thread (these graphs run one node at a time), load-time warnings off (errors still
    raise; "initializer appears in graph inputs" is by design for overridable weights). `optimize=False` for a
    model optimized already (the bake's): optimizing again could only make private copies of its weights.
    `config`: session config entries (the bake's, so that ORT packs as it did when baking)."""
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    opts.log_severity_level = 3
    for k, v in (config or {}).items():
        opts.add_session_config_entry(str(k), str(v))
    return opts


# ORT sessions are created one at a time in this process: the in-place engines tell their own packed copies or
# mappings by what their session's creation added (a two-phase rebuild creating beside them would add its own)
CREATING = threading.RLock()


def create_session(path, opts: ort.SessionOptions) -> ort.InferenceSession:
    try:
        with CREATING:
            return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - ORT raises its own types (InvalidProtobuf, NoSuchFile, Fail...)
        raise ManifestError(f"{path}: ONNX Runtime cannot load it: {first_line(e)}") from None


class OrtEngine(Engine):
    """The patchable ONNX Runtime engine (engine.py's contract), with an optional prepacked twin."""
    name = NAME

    def __init__(self, manifest: Manifest, threads: int | None = None, verify: str = "fast"):
        from ..integrity import verify_placements

        files = manifest.files_of(NAME)
        root = manifest.root
        weights_path = root / files.weights
        # One owned, writable copy of every patchable weight: these bytes ARE the model's weights.
        self._weights_file = open_weights(weights_path, writable=True)
        self.buffers: dict[str, np.ndarray] = safetensors_views(manifest, self._weights_file, weights_path)
        # quantized placements (quant.py): their scales, graph inputs too, never patched
        self.scales: dict[str, np.ndarray] = quant_scales(manifest, self._weights_file, weights_path)
        self._ort_values: dict[str, ort.OrtValue] = {}  # kept alive for the session's life (dropping one crashed ORT)
        verify_placements(verify, manifest, NAME, self.buffers, weights_path, threads,  # before any engine sees them
                          scales=self.scales)
        places = {p.name: p for _, p in manifest.placements(NAME)}
        self.buffer_quant = {n: p.quant for n, p in places.items() if p.quant is not None}
        for name, buf in self.buffers.items():
            q = places[name].quant
            shape = places[name].shape if q is None else q.storage_shape(*places[name].shape)
            self._ort_values[name] = ort.OrtValue.ortvalue_from_numpy(buf.reshape(shape))
            if q is not None:
                self._ort_values[q.scales] = ort.OrtValue.ortvalue_from_numpy(self.scales[name])
        self._threads = threads
        self._prepacked_path = root / files.prepacked if files.prepacked else None
        self.prepacked = None  # a _PrepackedSession for the current weights, installed by the session's rebuilder
        self.session = create_session(root / files.patchable, self._options())
        self.input_names = [i.name for i in self.session.get_inputs() if i.name not in self._ort_values]
        self.output_names = [o.name for o in self.session.get_outputs()]
        missing = set(self._ort_values) - {i.name for i in self.session.get_inputs()}
        if missing:
            raise ManifestError(f"{root / files.patchable}: graph has no input for patchable buffer(s) {sorted(missing)}")

    def close(self) -> None:
        """Free both engines and the bound weights; the session object calls this once, from close()."""
        self.prepacked = None
        self.session = None
        self._ort_values.clear()

    def _options(self) -> ort.SessionOptions:
        return session_options(self._threads)

    def entry_scales(self, pname: str, flat: np.ndarray, cols: int) -> np.ndarray:
        """The quantization scale of each torch flat index of a quantized placement."""
        return self.buffer_quant[pname].scale_of(self.scales[pname], flat, cols)

    def weights_changed(self, names: set[str], entries: dict | None = None) -> None:
        """Nothing to do: every run of the patchable engine reads the bound buffers."""

    # ---- two-phase switching (two_phase.py) -------------------------------------------------------------
    @property
    def prepacked_available(self) -> bool:
        return self._prepacked_path is not None and self._prepacked_path.exists()

    @property
    def prepacked_nbytes(self) -> int:
        return self.prepacked.nbytes if self.prepacked is not None else 0

    def snapshot(self) -> bytes:
        """The live weights.safetensors bytes: model_prepacked.onnx reads its patchable weights from there."""
        return bytes(self._weights_file.buffer)

    def build_prepacked(self, snapshot: bytes) -> "_PrepackedSession":
        opts = self._options()
        # ORT copies what it needs from this in-memory "file" while the session is created, then packs it
        opts.add_external_initializers_from_files_in_memory(["weights.safetensors"], [snapshot], [len(snapshot)])
        sess = create_session(self._prepacked_path, opts)
        return _PrepackedSession(sess, len(self._weights_file.data))

    def run(self, inputs: dict[str, np.ndarray], patchable: bool = False) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise KeyError(f"missing model input(s) {missing} (inputs: {self.input_names})")
        fast = None if patchable else self.prepacked
        if fast is not None:  # plain run(): the lightest path through ORT's Python API
            outs = fast.session.run(self.output_names, {n: inputs[n] for n in self.input_names})
            return dict(zip(self.output_names, outs))
        feeds = dict(self._ort_values)
        for name in self.input_names:
            feeds[name] = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(inputs[name]))
        outs = self.session.run_with_ort_values(self.output_names, feeds)
        return {n: o.numpy() for n, o in zip(self.output_names, outs)}


class _PrepackedSession:
    """An ORT session with every weight prepacked, built from a snapshot of the live weights."""

    def __init__(self, session: ort.InferenceSession, weight_bytes: int):
        self.session = session
        self.nbytes = weight_bytes  # ORT's own (packed) copy of the patchable weights, about this size


