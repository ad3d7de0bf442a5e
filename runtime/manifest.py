"""The manifest: the contract between export, pack and runtime (spec: docs/MANIFEST.md).

For every patchable torch weight it says where the weight lives in each exported artifact ("placements")
and in which layout, so that an adapter written in torch coordinates lands on the right bytes.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ManifestError

FORMAT = "shira-manifest"
FORMAT_VERSION = 1
LAYOUTS = ("identity", "transpose2d", "channels_last")


@dataclass(frozen=True)
class Placement:
    """One copy of a torch weight inside an artifact (an ONNX graph input, an ExecuTorch buffer...)."""

    name: str
    shape: tuple[int, ...]
    # "identity": same row-major order as torch; "transpose2d": stored as W.T;
    # "channels_last": dim 1 moved last, e.g. a conv kernel [O, I, H, W] stored as [O, H, W, I] (XNNPACK)
    layout: str
    offset: int | None = None  # byte offset inside the artifact file (ExecuTorch .pte), if addressed that way
    reload: bool = False  # True: the engine packs this weight at load, a change needs a method reload

    def map_indices(self, flat: np.ndarray, torch_shape: tuple[int, ...]) -> np.ndarray:
        """Torch row-major flat indices -> flat indices into this placement's buffer."""
        if self.layout == "identity":
            return flat
        if self.layout == "transpose2d":
            rows = torch_shape[0]
            cols = int(np.prod(torch_shape[1:]))
            return (flat % cols) * rows + flat // cols
        c = torch_shape[1]  # channels_last
        rest = int(np.prod(torch_shape[2:]))
        outer, inner = flat // (c * rest), flat % (c * rest)
        return outer * (c * rest) + (inner % rest) * c + inner // rest


    def to_torch_layout(self, buf: np.ndarray, torch_shape: tuple[int, ...]) -> np.ndarray:
        """A view (or transposed view) of this placement's buffer in torch layout."""
        arr = buf.reshape(self.shape)
        if self.layout == "transpose2d":
            return arr.T
        if self.layout == "channels_last":
            return np.moveaxis(arr, -1, 1)
        return arr.reshape(torch_shape)


@dataclass(frozen=True)
class TensorInfo:
    name: str  # torch parameter name, e.g. model.layers.0.self_attn.q_proj.weight
    module: str
    kind: str  # linear | conv1d | conv2d
    shape: tuple[int, ...]
    dtype: str
    sha256: str  # of the torch-layout little-endian bytes
    placements: dict[str, tuple[Placement, ...]]  # backend -> placements

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape))


@dataclass
class Manifest:
    path: Path
    raw: dict
    base_fingerprint: str
    tensors: dict[str, TensorInfo]
    inputs: list[dict]
    outputs: list[dict]

    @property
    def root(self) -> Path:
        return self.path.parent

    def sample_inputs(self) -> dict[str, np.ndarray]:
        """The export's sample inputs (sample.npz, `input:<name>` entries)."""
        with np.load(self.root / self.raw.get("sample", "sample.npz")) as z:
            return {k.removeprefix("input:"): z[k] for k in z.files if k.startswith("input:")}

    def artifact(self, backend: str) -> dict:
        arts = self.raw.get("artifacts", {})
        if backend not in arts:
            raise ManifestError(f"{self.path}: no {backend!r} artifact was exported (have: {', '.join(arts)})")
        return arts[backend]


def load(base_dir) -> Manifest:
    path = Path(base_dir) / "manifest.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ManifestError(f"{path}: not found; is {base_dir} a directory written by shira-export?") from None
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path}: not valid JSON: {e}") from None
    if raw.get("format") != FORMAT:
        raise ManifestError(f"{path}: not a SHiRA manifest (format={raw.get('format')!r})")
    if raw.get("format_version") != FORMAT_VERSION:
        raise ManifestError(f"{path}: unsupported manifest version {raw.get('format_version')!r}; "
                            f"this runtime reads version {FORMAT_VERSION}")
    tensors = {}
    try:
        for name, t in raw["tensors"].items():
            placements = {}
            for backend, plist in t["placements"].items():
                ps = []
                for p in plist:
                    if p["layout"] not in LAYOUTS:
                        raise ManifestError(f"{path}: tensor {name}: unknown layout {p['layout']!r}")
                    ps.append(Placement(p["name"], tuple(p["shape"]), p["layout"], p.get("offset"),
                                        bool(p.get("reload", False))))
                placements[backend] = tuple(ps)
            tensors[name] = TensorInfo(name, t["module"], t["kind"], tuple(t["shape"]), t["dtype"], t["sha256"],
                                       placements)
        return Manifest(path, raw, raw["base_fingerprint"], tensors, raw["inputs"], raw["outputs"])
    except KeyError as e:
        raise ManifestError(f"{path}: missing field {e}") from None
