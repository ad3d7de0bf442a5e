"""The manifest: the contract between export, pack and runtime (spec: docs/MANIFEST.md).

For every patchable torch weight it says where the weight lives in each exported artifact ("placements")
and in which layout, so that an adapter written in torch coordinates lands on the right bytes. Every field is
type- and range-checked here: a damaged or hand-edited manifest is refused with one ManifestError line that
names the file, never a raw TypeError deep inside a backend.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import layouts
from .errors import ManifestError, printable
from .layouts import LAYOUTS
from .quant import BITS, BLOCKS, SCALE_DTYPES, Quant, matrix_shape

FORMAT = "shira-manifest"
FORMAT_VERSION = 3  # what export writes. 3 added folded placements (channel_scale), which a version-2 reader
READS = (2, 3, 4)  # would patch wrongly; 1: shira-ondevice 0.1 (artifacts keyed model/program/...), refused
QUANTIZED_VERSION = 4  # written only by a quantized export (placements with `quant`): older readers refuse it
RUNTIMES = ("onnxruntime", "executorch")
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
    layout: str  # one of layouts.LAYOUTS
    offset: int | None = None  # byte offset inside the artifact file (ExecuTorch .pte), if addressed that way
    reload: bool = False  # True: the engine packs this weight at load, a change needs a method reload
    crc32: int | None = None  # checksum.placement_crc32 at export: record + stored bytes
    # A folded weight (BatchNorm folded at export): stored = torch weight * channel_scale[c] per output channel
    # c (torch dim 0); a delta is scaled the same way when patched. None: stored as it is.
    channel_scale: tuple[float, ...] | None = None
    folded_sha256: str | None = None  # of the stored (folded) weight in torch layout: what verify="full" checks
    quant: Quant | None = None  # a quantized placement (manifest version 4): integers and scales, quant.py

    def scale_array(self) -> np.ndarray | None:
        """channel_scale as float32 (every value was written from a float32), or None."""
        return None if self.channel_scale is None else np.asarray(self.channel_scale, dtype=np.float32)

    def stored_deltas(self, flat: np.ndarray, values: np.ndarray, torch_shape: tuple[int, ...]) -> np.ndarray:
        """Adapter values for entries `flat` of the torch weight -> what to add to this placement's stored
        values: as they are, or for a folded weight times the scale of each entry's output channel (in binary64,
        rounded once to float32; docs/MANIFEST.md, "Folded weights")."""
        if self.channel_scale is None:
            return values
        per_channel = int(np.prod(torch_shape[1:]))
        g = self.scale_array().astype(np.float64)[flat // per_channel]
        return (values.astype(np.float64) * g).astype(np.float32)

    def patch_terms(self, flat: np.ndarray, values: np.ndarray, torch_shape: tuple[int, ...]
                    ) -> tuple[np.ndarray, np.ndarray]:
        """An adapter tensor in torch coordinates -> (stored indices ascending, stored deltas in that order): what
        a patcher scatters into this placement."""
        return layouts.sorted_for(self.layout, flat, self.stored_deltas(flat, values, torch_shape), torch_shape)

    def map_indices(self, flat: np.ndarray, torch_shape: tuple[int, ...]) -> np.ndarray:
        """Torch row-major flat indices -> flat indices into this placement's buffer."""
        return layouts.to_stored_indices(self.layout, flat, torch_shape)

    def to_torch_layout(self, buf: np.ndarray, torch_shape: tuple[int, ...]) -> np.ndarray:
        """A view (or transposed view) of this placement's buffer in torch layout."""
        return layouts.to_torch(self.layout, buf, self.shape, torch_shape)


@dataclass(frozen=True)
class TensorInfo:
    name: str  # torch parameter name, e.g. model.layers.0.self_attn.q_proj.weight
    module: str
    kind: str  # linear | conv1d | conv2d
    shape: tuple[int, ...]
    dtype: str
    sha256: str  # of the torch-layout little-endian bytes
    placements: dict[str, tuple[Placement, ...]]  # runtime -> its copies in the patchable engine's file
    # runtime -> its copies in the prepacked engine's file, where the runtime writes weights by offset (executorch)
    prepacked_placements: dict[str, tuple[Placement, ...]] = field(default_factory=dict)
    # informative, for shira-pack: the BatchNorm folded into this weight at export ({"module", "eps"})
    folded_batchnorm: dict | None = None

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape))


@dataclass(frozen=True)
class RuntimeFiles:
    """One runtime's files. Each runtime has two engines (docs/MANIFEST.md, "Engines"): the patchable engine,
    whose weight buffers adapters are written into, and optionally the prepacked engine, which holds every
    weight as a constant the runtime packs at load (fastest inference; rebuilt after a switch)."""

    patchable: str  # onnxruntime: model.onnx; executorch: model.pte
    prepacked: str | None = None  # onnxruntime: model_prepacked.onnx; executorch: model_prepacked.pte
    weights: str | None = None  # onnxruntime: weights.safetensors, the patchable weights
    method: str = "forward"  # executorch: the method to run
    dynamic_shapes: bool = True  # executorch: false when the .pte was lowered at the sample's static shapes
    lowering: dict = field(default_factory=dict)  # executorch: delegate counts (informative)


@dataclass
class Manifest:
    path: Path
    base_fingerprint: str
    runtimes: dict[str, RuntimeFiles]  # "onnxruntime" / "executorch" -> its files
    tensors: dict[str, TensorInfo]
    inputs: list[dict]
    outputs: list[dict]
    sample: str = "sample.npz"
    model: dict = field(default_factory=dict)  # source, class, parameters (informative)
    excluded: dict[str, str] = field(default_factory=dict)  # targeted weight -> why it is not patchable
    untargeted: tuple[str, ...] = ()  # Linear/Conv weights left out by --targets
    generation: dict | None = None  # a causal LM exported with its KV cache as inputs/outputs (MANIFEST.md)

    @property
    def root(self) -> Path:
        return self.path.parent

    def file(self, name: str) -> Path:
        return self.root / name

    def placements(self, runtime: str):
        """(tensor info, placement) for every placement of every patchable weight in `runtime`'s patchable
        engine, in manifest order: the loop nearly every reader of a manifest needs."""
        for info in self.tensors.values():
            for p in info.placements.get(runtime, ()):
                yield info, p

    def sample_entries(self, prefix: str) -> dict[str, np.ndarray]:
        """sample.npz's entries named `prefix` + name, by name (`input:`, `output:`, `proof:`)."""
        path = self.file(self.sample)
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k.removeprefix(prefix): z[k] for k in z.files if k.startswith(prefix)}
        except FileNotFoundError:
            raise ManifestError(f"{path}: not found (the export's sample input)") from None
        except Exception as e:  # noqa: BLE001 - numpy/zipfile raise many types for a damaged archive
            raise ManifestError(f"{path}: cannot read the sample input: {type(e).__name__}: {e}") from None

    def sample_inputs(self) -> dict[str, np.ndarray]:
        """The export's sample inputs (sample.npz, `input:<name>` entries)."""
        path = self.file(self.sample)
        out = self.sample_entries("input:")
        missing = [i["name"] for i in self.inputs if i["name"] not in out]
        if missing:
            raise ManifestError(f"{path}: no sample for model input(s) {missing}")
        return out

    def files_of(self, runtime: str) -> RuntimeFiles:
        if runtime not in self.runtimes:
            raise ManifestError(f"{self.path}: the base was not exported for {runtime} "
                                f"(exported for: {', '.join(self.runtimes) or 'none'})")
        return self.runtimes[runtime]


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


def _placement(p, tname: str, backend: str, torch_shape) -> Placement:
    where = f"tensor {tname}: {backend} placement"
    p = _dict(p, where)
    name = _str(p.get("name"), f"{where} name")
    shape = _shape(p.get("shape"), where)
    layout = p.get("layout")
    if layout not in LAYOUTS:
        raise _Bad(f"{where} {name}: unknown layout {str(layout)[:40]!r} (known: {', '.join(LAYOUTS)})")
    if not layouts.fits(layout, shape, torch_shape):
        raise _Bad(f"{where} {name}: stored shape {list(shape)} does not fit layout {layout} of torch shape "
                   f"{list(torch_shape)}")
    offset = p.get("offset")
    if backend == "executorch":
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
    scale, folded_sha = p.get("channel_scale"), p.get("folded_sha256")
    if scale is not None:
        if not isinstance(scale, list) or len(scale) != torch_shape[0] or not all(
                type(v) in (int, float) and np.isfinite(v) and v != 0 and np.isfinite(np.float32(v)) for v in scale):
            raise _Bad(f"{where} {name}: channel_scale must list {torch_shape[0]} finite non-zero numbers (one per "
                       "output channel)")
        if not isinstance(folded_sha256 := folded_sha, str) or not _HEX64.fullmatch(folded_sha256):
            raise _Bad(f"{where} {name}: a folded placement needs folded_sha256 (64 lowercase hex digits)")
        scale = tuple(float(v) for v in scale)
    elif folded_sha is not None:
        raise _Bad(f"{where} {name}: folded_sha256 without channel_scale")
    quant = None if p.get("quant") is None else _quant(p["quant"], f"{where} {name}", shape, layout, torch_shape,
                                                       backend)
    if quant is not None and scale is not None:
        raise _Bad(f"{where} {name}: quant is for unfolded placements only")
    return Placement(name, shape, layout, offset, reload, crc, scale, folded_sha, quant)


def _quant(q, where: str, shape, layout, torch_shape, backend: str) -> Quant:
    q = _dict(q, f"{where} quant")
    bits, block, per_channel = q.get("bits"), q.get("block"), q.get("per_channel", False)
    signed, s_off, s_dtype = q.get("signed", False), q.get("scales_offset"), q.get("scales_dtype", "float32")
    if bits not in BITS or not is_int(bits):
        raise _Bad(f"{where}: quant bits must be one of {BITS}, got {str(bits)[:20]}")
    if block not in BLOCKS or not is_int(block):
        raise _Bad(f"{where}: quant block must be one of {BLOCKS}, got {str(block)[:20]}")
    if type(per_channel) is not bool:
        raise _Bad(f"{where}: quant per_channel must be true or false")
    if (layout != "identity" or len(torch_shape) < 2 or tuple(shape) != matrix_shape(torch_shape)
            or matrix_shape(torch_shape)[1] % block):
        raise _Bad(f"{where}: a quantized placement stores its weight as the matrix [N, K] of its entries in torch "
                   f"order (identity layout; a conv's [N, C*kh*kw]), K a multiple of the block {block}; got "
                   f"{list(shape)}, {layout} for torch {list(torch_shape)}")
    if type(signed) is not bool or (signed and bits != 8):
        raise _Bad(f"{where}: quant signed must be true or false, and true only for 8 bits")
    if backend == "executorch":  # scales inside the program, addressed by offset (docs/QUANTIZATION.md)
        if q.get("scales") is not None or not is_int(s_off) or s_off < 0 or s_dtype not in SCALE_DTYPES:
            raise _Bad(f"{where}: an executorch quant needs scales_offset (a non-negative integer) and scales_dtype "
                       f"({' or '.join(SCALE_DTYPES)}), and no scales name")
        return Quant(bits, block, None, per_channel, signed, s_off, s_dtype)
    if signed or s_off is not None or "scales_dtype" in q:
        raise _Bad(f"{where}: signed, scales_offset and scales_dtype are for executorch placements only")
    return Quant(bits, block, _str(q.get("scales"), f"{where} quant scales"), per_channel)


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
    found = []
    for key in ("placements", "prepacked_placements"):
        by_runtime = {}
        for rt, plist in _dict(t.get(key, {}), f"{where} {key}").items():
            if rt not in RUNTIMES:
                raise _Bad(f"{where}: {key} for unknown runtime {str(rt)[:40]!r}")
            if not isinstance(plist, list) or not plist:
                raise _Bad(f"{where}: {key} of {rt} must be a non-empty list")
            by_runtime[rt] = tuple(_placement(p, name, rt, shape) for p in plist)
        found.append(by_runtime)
    fbn = t.get("folded_batchnorm")
    if fbn is not None and not (isinstance(fbn, dict) and isinstance(fbn.get("module"), str)
                                and type(fbn.get("eps")) in (int, float)):
        raise _Bad(f"{where}: folded_batchnorm must be {{\"module\": name, \"eps\": number}}")
    return TensorInfo(name, _str(t.get("module"), f"{where} module"), _str(t.get("kind"), f"{where} kind"), shape,
                      dtype, sha, found[0], found[1], fbn)


def _io(x, where: str) -> list[dict]:
    if not isinstance(x, list):
        raise _Bad(f"{where}: must be a list")
    for i in x:
        i = _dict(i, where)
        _str(i.get("name"), f"{where} name")
        if not isinstance(i.get("shape"), list) or not all(is_int(d) or isinstance(d, str) for d in i["shape"]):
            raise _Bad(f"{where} {i['name']}: shape must list integers or axis names")
    return x


def _runtime_files(x) -> dict[str, RuntimeFiles]:
    out = {}
    for rt, f in _dict(x, "artifacts").items():
        if rt not in RUNTIMES:
            raise _Bad(f"artifacts: unknown runtime {str(rt)[:40]!r} (known: {', '.join(RUNTIMES)})")
        f = _dict(f, f"artifacts.{rt}")
        prepacked = _file_name(f["prepacked"], f"artifacts.{rt}.prepacked") if f.get("prepacked") is not None else None
        if rt == "onnxruntime":
            out[rt] = RuntimeFiles(_file_name(f.get("patchable"), f"artifacts.{rt}.patchable"), prepacked,
                                   weights=_file_name(f.get("weights"), f"artifacts.{rt}.weights"))
        else:
            method, dyn = f.get("method", "forward"), f.get("dynamic_shapes", True)
            if type(dyn) is not bool:
                raise _Bad(f"artifacts.{rt}.dynamic_shapes: must be true or false")
            out[rt] = RuntimeFiles(_file_name(f.get("patchable"), f"artifacts.{rt}.patchable"), prepacked,
                                   method=_str(method, f"artifacts.{rt}.method"), dynamic_shapes=dyn,
                                   lowering=_dict(f.get("lowering", {}), f"artifacts.{rt}.lowering"))
    return out


def parse(raw, path: Path) -> Manifest:
    """Check every field of a decoded manifest; `path` names the file in errors."""
    try:
        if not isinstance(raw, dict):
            raise _Bad(f"not a JSON object but {type(raw).__name__}")
        if raw.get("format") != FORMAT:
            raise _Bad(f"not a SHiRA manifest (format={str(raw.get('format'))[:40]!r})")
        version = raw.get("format_version")
        if is_int(version) and version < min(READS):
            raise _Bad(f"manifest version {version} was written by an older shira-export; this runtime reads "
                       f"versions {', '.join(map(str, READS))}: export the base again")
        if version not in READS or not is_int(version):
            raise _Bad(f"unsupported manifest version {str(version)[:20]!r}; this runtime reads versions "
                       f"{', '.join(map(str, READS))}")
        fp = raw.get("base_fingerprint")
        if not isinstance(fp, str) or not FINGERPRINT.fullmatch(fp):
            raise _Bad("base_fingerprint must be 'sha256:' and 64 lowercase hex digits")
        runtimes = _runtime_files(raw.get("artifacts"))
        sample = _file_name(raw["sample"], "sample") if raw.get("sample") is not None else "sample.npz"
        tensors = {name: _tensor(name, t) for name, t in _dict(raw.get("tensors"), "tensors").items()}
        if not tensors:
            raise _Bad("lists no patchable tensor")
        if version < QUANTIZED_VERSION and any(p.quant is not None for t in tensors.values()
                                               for ps in t.placements.values() for p in ps):
            raise _Bad(f"quant (a quantized placement) needs manifest version {QUANTIZED_VERSION}")
        if version < 3 and any(p.channel_scale is not None for t in tensors.values()
                               for ps in (*t.placements.values(), *t.prepacked_placements.values()) for p in ps):
            raise _Bad("channel_scale (a folded weight) needs manifest version 3")
        seen: dict[tuple[str, str], str] = {}
        for info in tensors.values():
            for engine, ps in [*info.placements.items(), *((f"{rt} prepacked", v) for rt, v in info.prepacked_placements.items())]:
                for p in ps:
                    other = seen.setdefault((engine, p.name), info.name)
                    if other != info.name:
                        raise _Bad(f"placement {p.name} ({engine}) is claimed by {other} and {info.name}")
        excluded = _dict(raw.get("excluded", {}), "excluded")
        untargeted = raw.get("untargeted", [])
        if not isinstance(untargeted, list) or not all(isinstance(u, str) for u in untargeted):
            raise _Bad("untargeted: must be a list of weight names")
        for info in tensors.values():
            missing = [rt for rt in runtimes if rt not in info.placements]
            if missing:
                raise _Bad(f"tensor {info.name}: no placement for {', '.join(missing)}")
        gen = raw.get("generation")
        if gen is not None:
            gen = _dict(gen, "generation")
            if gen.get("cache") != "inputs-outputs" or not all(is_int(gen.get(k)) and gen[k] > 0 for k in
                                                                 ("layers", "kv_heads", "head_dim", "max_positions")):
                raise _Bad("generation: needs cache 'inputs-outputs' and positive integers layers, kv_heads, "
                           "head_dim, max_positions")
            for key in ("past", "present"):
                if not isinstance(gen.get(key), str) or "{layer}" not in gen[key] or "{kv}" not in gen[key]:
                    raise _Bad(f"generation.{key}: a name pattern with {{layer}} and {{kv}}")
        return Manifest(path, fp, runtimes, tensors, _io(raw.get("inputs"), "inputs"), _io(raw.get("outputs"), "outputs"),
                        sample, _dict(raw.get("model", {}), "model"), {str(k): str(v) for k, v in excluded.items()},
                        tuple(untargeted), gen)
    except _Bad as e:
        raise ManifestError(f"{path}: {printable(str(e))}") from None


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


def dump(raw: dict, path) -> str:
    """A manifest as JSON text, after checking it as a reader will: a writer never emits what readers refuse."""
    parse(raw, Path(path))
    return json.dumps(raw, indent=1)


def write(raw: dict, path) -> None:
    """Check and write manifest.json atomically."""
    from .atomic import write_text

    write_text(path, dump(raw, path))
