"""The manifest: the contract between export, pack and runtime (spec: docs/MANIFEST.md).

For every patchable torch weight it says where the weight lives in each exported artifact ("placements")
and in which layout, so that an adapter written in torch coordinates lands on the right bytes. Every field is
type- and range-checked here: a damaged or hand-edited manifest is refused with one ManifestError line that
names the file, never a raw TypeError deep inside a backend.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ManifestError

FORMAT = "shira-manifest"
FORMAT_VERSION = 1
LAYOUTS = ("identity", "transpose2d", "channels_last")
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
MAX_DIM = 2**31 - 1
MAX_RANK = 8
FINGERPRINT = re.compile(r"sha256:[0-9a-f]{64}")  # base_fingerprint, as manifests and adapter blobs carry it
_HEX64 = re.compile(r"[0-9a-f]{64}")


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
    crc32: int | None = None  # integrity.placement_crc32 at export: record + stored bytes

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

    def file(self, name: str) -> Path:
        return self.root / name

    def sample_inputs(self) -> dict[str, np.ndarray]:
        """The export's sample inputs (sample.npz, `input:<name>` entries)."""
        path = self.file(self.raw.get("sample", "sample.npz"))
        try:
            with np.load(path, allow_pickle=False) as z:
                out = {k.removeprefix("input:"): z[k] for k in z.files if k.startswith("input:")}
        except FileNotFoundError:
            raise ManifestError(f"{path}: not found (the export's sample input)") from None
        except Exception as e:  # noqa: BLE001 - numpy/zipfile raise many types for a damaged archive
            raise ManifestError(f"{path}: cannot read the sample input: {type(e).__name__}: {e}") from None
        missing = [i["name"] for i in self.inputs if i["name"] not in out]
        if missing:
            raise ManifestError(f"{path}: no sample for model input(s) {missing}")
        return out

    def artifact(self, backend: str) -> dict:
        arts = self.raw["artifacts"]
        if backend not in arts:
            raise ManifestError(f"{self.path}: no {backend!r} artifact was exported (have: {', '.join(arts) or 'none'})")
        return arts[backend]


# ---- strict parsing -----------------------------------------------------------------------------------------
class _Bad(Exception):
    """A field failed its check; load() turns it into one ManifestError line."""


def is_int(x) -> bool:
    """A JSON integer literal: not a float, not a bool."""
    return type(x) is int


def valid_shape(x) -> bool:
    """A torch shape as manifests and adapter blobs store it: 1 to MAX_RANK integers in [1, MAX_DIM]."""
    return isinstance(x, list) and 1 <= len(x) <= MAX_RANK and all(is_int(d) and 1 <= d <= MAX_DIM for d in x)


def _shape(x, where: str) -> tuple[int, ...]:
    if not valid_shape(x):
        raise _Bad(f"{where}: shape must be a list of 1 to {MAX_RANK} integers in [1, 2^31), got {str(x)[:60]}")
    return tuple(x)


def _str(x, where: str) -> str:
    if not isinstance(x, str) or not x:
        raise _Bad(f"{where}: must be a non-empty string, got {str(x)[:60]}")
    return x


def _file_name(x, where: str) -> str:
    """An artifact file name: a plain name inside the base directory, never a path that leaves it."""
    name = _str(x, where)
    if "/" in name or "\\" in name or name in (".", "..") or "\x00" in name:
        raise _Bad(f"{where}: {name!r} is not a plain file name inside the base directory")
    return name


def _dict(x, where: str) -> dict:
    if not isinstance(x, dict):
        raise _Bad(f"{where}: must be a JSON object, got {type(x).__name__}")
    return x


def _layout_fits(layout: str, stored: tuple[int, ...], torch_shape: tuple[int, ...]) -> bool:
    if int(np.prod(stored, dtype=object)) != int(np.prod(torch_shape, dtype=object)):
        return False
    if layout == "transpose2d":
        return stored == (int(np.prod(torch_shape[1:], dtype=object)), torch_shape[0])
    if layout == "channels_last":
        return len(torch_shape) >= 3 and stored == (torch_shape[0], *torch_shape[2:], torch_shape[1])
    return True


def _placement(p, tname: str, backend: str, torch_shape) -> Placement:
    where = f"tensor {tname}: {backend} placement"
    p = _dict(p, where)
    name = _str(p.get("name"), f"{where} name")
    shape = _shape(p.get("shape"), where)
    layout = p.get("layout")
    if layout not in LAYOUTS:
        raise _Bad(f"{where} {name}: unknown layout {str(layout)[:40]!r} (known: {', '.join(LAYOUTS)})")
    if not _layout_fits(layout, shape, torch_shape):
        raise _Bad(f"{where} {name}: stored shape {list(shape)} does not fit layout {layout} of torch shape "
                   f"{list(torch_shape)}")
    offset = p.get("offset")
    if backend.startswith("executorch"):
        if not is_int(offset) or offset < 0:
            raise _Bad(f"{where} {name}: offset must be a non-negative integer, got {str(offset)[:40]}")
    elif offset is not None:
        raise _Bad(f"{where} {name}: an offset is only meaningful for executorch")
    reload = p.get("reload", False)
    if type(reload) is not bool:
        raise _Bad(f"{where} {name}: reload must be true or false")
    crc = p.get("crc32")
    if crc is not None and not (is_int(crc) and 0 <= crc < 2**32):
        raise _Bad(f"{where} {name}: crc32 must be an integer in [0, 2^32)")
    return Placement(name, shape, layout, offset, reload, crc)


def _tensor(name: str, t) -> TensorInfo:
    where = f"tensor {name}"
    t = _dict(t, where)
    shape = _shape(t.get("shape"), where)
    sha = t.get("sha256")
    if not isinstance(sha, str) or not _HEX64.fullmatch(sha):
        raise _Bad(f"{where}: sha256 must be 64 lowercase hex digits")
    dtype = t.get("dtype")
    if dtype != "float32":
        raise _Bad(f"{where}: dtype {str(dtype)[:20]!r} is not supported (float32 only)")
    placements = {}
    for backend, plist in _dict(t.get("placements"), f"{where} placements").items():
        if not isinstance(plist, list) or not plist:
            raise _Bad(f"{where}: placements of {backend} must be a non-empty list")
        placements[backend] = tuple(_placement(p, name, backend, shape) for p in plist)
    return TensorInfo(name, _str(t.get("module"), f"{where} module"), _str(t.get("kind"), f"{where} kind"), shape,
                      dtype, sha, placements)


def _io(x, where: str) -> list[dict]:
    if not isinstance(x, list):
        raise _Bad(f"{where}: must be a list")
    for i in x:
        i = _dict(i, where)
        _str(i.get("name"), f"{where} name")
        if not isinstance(i.get("shape"), list) or not all(is_int(d) or isinstance(d, str) for d in i["shape"]):
            raise _Bad(f"{where} {i['name']}: shape must list integers or axis names")
    return x


def _artifacts(x) -> dict:
    arts = _dict(x, "artifacts")
    for backend, files in ((b, _dict(f, f"artifacts.{b}")) for b, f in arts.items()):
        keys = {"onnxruntime": ("model", "weights"), "executorch": ("program",)}.get(backend, ())
        for k in keys:
            _file_name(files.get(k), f"artifacts.{backend}.{k}")
        for k in ("prepacked_model", "static_program"):
            if files.get(k) is not None:
                _file_name(files[k], f"artifacts.{backend}.{k}")
    return arts


def parse(raw, path: Path) -> Manifest:
    """Check every field of a decoded manifest; `path` names the file in errors."""
    try:
        if not isinstance(raw, dict):
            raise _Bad(f"not a JSON object but {type(raw).__name__}")
        if raw.get("format") != FORMAT:
            raise _Bad(f"not a SHiRA manifest (format={str(raw.get('format'))[:40]!r})")
        if raw.get("format_version") != FORMAT_VERSION or not is_int(raw.get("format_version")):
            raise _Bad(f"unsupported manifest version {str(raw.get('format_version'))[:20]!r}; this runtime reads "
                       f"version {FORMAT_VERSION}")
        fp = raw.get("base_fingerprint")
        if not isinstance(fp, str) or not FINGERPRINT.fullmatch(fp):
            raise _Bad("base_fingerprint must be 'sha256:' and 64 lowercase hex digits")
        _artifacts(raw.get("artifacts"))
        if raw.get("sample") is not None:
            _file_name(raw["sample"], "sample")
        tensors = {name: _tensor(name, t) for name, t in _dict(raw.get("tensors"), "tensors").items()}
        if not tensors:
            raise _Bad("lists no patchable tensor")
        seen: dict[tuple[str, str], str] = {}
        for info in tensors.values():
            for backend, ps in info.placements.items():
                for p in ps:
                    other = seen.setdefault((backend, p.name), info.name)
                    if other != info.name:
                        raise _Bad(f"placement {p.name} ({backend}) is claimed by {other} and {info.name}")
        if not isinstance(raw.get("excluded", {}), dict):
            raise _Bad("excluded: must be a JSON object")
        return Manifest(path, raw, fp, tensors, _io(raw.get("inputs"), "inputs"), _io(raw.get("outputs"), "outputs"))
    except _Bad as e:
        raise ManifestError(f"{path}: {e}") from None


def load(base_dir) -> Manifest:
    base = Path(base_dir)
    path = base / "manifest.json"
    if not base.is_dir():
        what = "not found" if not base.exists() else "not a directory"
        raise ManifestError(f"{base}: {what}; give the directory written by shira-export")
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise ManifestError(f"{path}: larger than {MAX_MANIFEST_BYTES} bytes; not a manifest")
        text = path.read_bytes().decode("utf-8")
        raw = json.loads(text)
    except FileNotFoundError:
        raise ManifestError(f"{path}: not found; is {base} a directory written by shira-export?") from None
    except OSError as e:
        raise ManifestError(f"{path}: cannot read: {e.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ManifestError(f"{path}: not valid JSON: {type(e).__name__}: {str(e)[:120]}") from None
    except ValueError as e:  # e.g. an integer beyond Python's digit limit
        raise ManifestError(f"{path}: not valid JSON: {str(e)[:120]}") from None
    return parse(raw, path)
