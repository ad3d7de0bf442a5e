"""`shira-pack adapter` and `shira-pack inspect`: turn adapters into blobs bound to one exported base.

Sources (detected from SRC):
  * a PEFT SHiRA checkpoint directory (peft_type SHIRA): adapter_config.json + adapter_model.safetensors with,
    per adapted module, `base_model.model.<module>.shira_indices` (int32 [2, nnz]: rows, cols of the weight
    viewed as [out, in]; PEFT on Windows stores them as float32) and `.shira_weight` (fp32 [nnz]). Our own
    trainer writes this layout too, plus `shira_train.json` beside it with `mask_seeds` (module -> seed) for
    seed-coded masks (older checkpoints carried `shira_mask_seeds` inside adapter_config.json; still read).
  * a PEFT LoRA checkpoint directory (peft_type LORA): delta = B @ A * scaling, sparsified to SHiRA by keeping
    the `--density` largest |delta| of each weight; the relative error of that sparsification is reported.
  * a full fine-tune: a .safetensors state dict, or a directory of them: delta = fine-tuned - base; with
    `--density` the largest |delta| of each weight, without it the exact nonzero difference.

`fan_in_fan_out: true` (PEFT) means the module stores its weight as [in, out] (GPT-2 Conv1D) while the
SHiRA rows/cols (or LoRA's B @ A) address the logical [out, in] delta: the packer transposes to the stored
tensor. Every check happens here AND again in the runtime; this side names the module.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from shira_format import manifest as manifest_mod
from shira_format.adapter import (
    DEFAULT_VALUES,
    SparseTensor,
    encode_adapter,
    read_adapter,
)
from shira_format.adapter import VERSION as ADAPTER_VERSION
from shira_format.atomic import write_bytes
from shira_format.codings import value_error
from shira_format.errors import ManifestError
from shira_format.weights import stored_weights, torch_layout

PEFT_PREFIX = "base_model.model."
TRAIN_SIDE_FILE = "shira_train.json"  # shira-train's facts beside a PEFT checkpoint (mask seeds), kept out of
# PEFT's adapter_config.json so PEFT loads the checkpoint without warnings
PEFT_BYTES_PER_NNZ = 12  # int32 [2, nnz] indices + fp32 [nnz] values


class PackError(ValueError):
    pass


@dataclass
class PackReport:
    name: str
    out: Path
    source_kind: str
    tensors: int
    nnz: int
    patchable_weights: int
    blob_bytes: int
    source_bytes: int
    value_coding: str
    index_codings: dict = field(default_factory=dict)  # coding -> number of tensors
    value_max_abs_error: float = 0.0  # introduced by the value coding
    sparsify_rel_error: float | None = None  # ||delta - kept|| / ||delta|| for LoRA / full fine-tune sources
    ignored: list = field(default_factory=list)  # full fine-tune weights that changed but the base cannot patch
    ignored_checked: bool = True  # False: no ONNX artifact to compare with, `ignored` lists every unpatchable one
    # a quantized base: {"entries", "clamped", "kept"}: what the base's scales let through (quantized_fit)
    quantized: dict | None = None

    @property
    def density(self) -> float:
        return self.nnz / max(self.patchable_weights, 1)


# ---- reading sources ----------------------------------------------------------------------------------------
def _load_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001 - safetensors raises several types
        raise PackError(f"{path}: cannot read: {e}") from None


def _peft_dir(src: Path) -> tuple[dict, dict[str, np.ndarray], Path]:
    cfg_path, st_path = src / "adapter_config.json", src / "adapter_model.safetensors"
    for p in (cfg_path, st_path):
        if not p.exists():
            raise PackError(f"{p}: not found; a PEFT checkpoint directory holds adapter_config.json and "
                            "adapter_model.safetensors")
    cfg = _read_json(cfg_path)
    if not isinstance(cfg, dict):
        raise PackError(f"{cfg_path}: not a JSON object")
    side = src / TRAIN_SIDE_FILE
    if side.exists():
        extra = _read_json(side)
        seeds = extra.get("mask_seeds") if isinstance(extra, dict) else None
        ok = lambda v: (type(v) is int or (isinstance(v, str) and v.isdigit() and len(v) <= 20)) and 0 <= int(v) < 2**64  # noqa: E731
        if not isinstance(seeds, dict) or not all(ok(v) for v in seeds.values()):
            raise PackError(f"{side}: mask_seeds must map module names to seeds (decimal strings or integers "
                            "below 2^64)")
        cfg = {**cfg, "shira_mask_seeds": {k: int(v) for k, v in seeds.items()}}
    return cfg, _load_safetensors(st_path), st_path


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise PackError(f"{path}: not valid JSON: {str(e)[:120]}") from None
    except OSError as e:
        raise PackError(f"{path}: cannot read: {e.strerror}") from None


def read_peft_shira(src) -> tuple[dict, dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """-> (adapter_config, {module: (rows, cols, values)})."""
    cfg, state, st_path = _peft_dir(Path(src))
    if cfg.get("peft_type") != "SHIRA":
        raise PackError(f"{Path(src) / 'adapter_config.json'}: peft_type is {cfg.get('peft_type')!r}, not 'SHIRA'")
    modules: dict[str, dict[str, np.ndarray]] = {}
    for key, arr in state.items():
        if key.endswith(".base_layer.weight"):
            continue  # PEFT saves targeted output/embedding layers' base weights too: a copy of the base, no delta
        stem, _, kind = key.rpartition(".")
        if kind not in ("shira_indices", "shira_weight"):
            raise PackError(f"{st_path}: unexpected key {key!r} (only shira_indices / shira_weight are packable)")
        modules.setdefault(stem.removeprefix(PEFT_PREFIX), {})[kind] = arr
    out = {}
    for module, parts in modules.items():
        if set(parts) != {"shira_indices", "shira_weight"}:
            raise PackError(f"{st_path}: module {module}: needs both shira_indices and shira_weight")
        ind, val = parts["shira_indices"], parts["shira_weight"]
        if ind.ndim != 2 or ind.shape[0] != 2 or val.shape != (ind.shape[1],):
            raise PackError(f"{st_path}: module {module}: shira_indices {list(ind.shape)} and shira_weight "
                            f"{list(val.shape)} are not [2, nnz] and [nnz]")
        if ind.dtype.kind == "f" and not np.all(ind == np.round(ind)):  # PEFT saves float32 indices on Windows
            raise PackError(f"{st_path}: module {module}: float indices that are not integers")
        out[module] = (ind[0].astype(np.int64), ind[1].astype(np.int64), val.astype(np.float32))
    return cfg, out


def _target(manifest, module_or_param: str, where: str):
    target = module_or_param if module_or_param.endswith(".weight") else f"{module_or_param}.weight"
    info = manifest.tensors.get(target)
    if info is None:
        why = manifest.excluded.get(target)
        if why:
            raise PackError(f"{where}: not patchable in base {manifest.root} ({why})")
        if target in manifest.untargeted:
            raise PackError(f"{where}: not patchable in base {manifest.root}: the export's --targets left it out; "
                            "export again with --targets matching it")
        raise PackError(f"{where}: base {manifest.root} ({_model_name(manifest)}) has no such weight")
    return target, info


def _model_name(manifest) -> str:
    m = manifest.model
    return f"{m.get('class')} from {m.get('source')}" if m else "its model"


def check_belongs(manifest, names: list[str], source: str) -> None:
    """Refuse, in words that help, a checkpoint none of whose weights exists in the base: it was made for
    another model (re-exporting with other --targets cannot fix that)."""
    known = set(manifest.tensors) | set(manifest.excluded) | set(manifest.untargeted)
    targets = [n if n.endswith(".weight") else f"{n}.weight" for n in names]
    if targets and not any(t in known for t in targets):
        raise PackError(f"{source}: made for another model: none of its {len(targets)} weights (e.g. {targets[0]}) "
                        f"exists in base {manifest.root} ({_model_name(manifest)})")


def shira_deltas(cfg: dict, modules, manifest, source: str) -> list[SparseTensor]:
    """Check every module against the base's manifest and convert (row, col) pairs to flat torch indices."""
    fan_in_fan_out = bool(cfg.get("fan_in_fan_out", False))
    seeds = cfg.get("shira_mask_seeds") or {}  # checkpoints written before the side file
    check_belongs(manifest, list(modules), source)
    deltas = []
    for module, (rows, cols, vals) in sorted(modules.items()):
        where = f"{source}: module {module}"
        target, info = _target(manifest, module, where)
        out_f, in_f = info.shape[0], int(np.prod(info.shape[1:]))
        if fan_in_fan_out:  # stored [in, out]; SHiRA rows/cols address [out, in]
            if len(info.shape) != 2:
                raise PackError(f"{where}: fan_in_fan_out needs a 2-D weight, base has {list(info.shape)}")
            rows, cols = cols, rows
        bad = (rows < 0) | (rows >= out_f) | (cols < 0) | (cols >= in_f)
        if bad.any():
            i = int(np.argmax(bad))
            raise PackError(f"{where}: index ({rows[i]}, {cols[i]}) out of range for weight {list(info.shape)}")
        if not np.all(np.isfinite(vals)):
            raise PackError(f"{where}: {int(np.count_nonzero(~np.isfinite(vals)))} non-finite values (NaN/inf)")
        flat = rows * in_f + cols
        order = np.argsort(flat, kind="stable")
        flat, vals = flat[order], vals[order]
        if flat.size > 1 and np.any(flat[1:] == flat[:-1]):
            raise PackError(f"{where}: the same weight entry is listed twice")
        seed = seeds.get(module)
        deltas.append(SparseTensor(target, info.shape, flat, vals, seed=None if seed is None else int(seed)))
    if not deltas:
        raise PackError(f"{source}: the checkpoint adapts no module")
    return deltas


def base_weights(manifest, targets) -> dict[str, np.ndarray]:
    """The base's weights in torch layout, read back from the exported files the way the runtime reads them (no
    torch model needed) and checked against the export's checksums: a diff against damaged weights would pack a
    wrong adapter."""
    from shira_runtime.integrity import check_placements

    runtime = "onnxruntime" if "onnxruntime" in manifest.runtimes else "executorch"
    try:
        buffers, path = stored_weights(manifest, runtime)
    except ManifestError as e:
        raise PackError(str(e)) from None
    check_placements(manifest, runtime, buffers, path)
    return {t: np.ascontiguousarray(torch_layout(manifest, runtime, buffers, t)) for t in targets}


def _channel_scale(manifest, target: str) -> np.ndarray | None:
    p = next(iter(manifest.tensors[target].placements.values()))[0]
    return p.scale_array()


def folded_delta(ft: np.ndarray, stored: np.ndarray, g: np.ndarray) -> np.ndarray:
    """A fine-tuned weight against a folded base (stored = fl32(W * g), MANIFEST.md "Folded weights"): fold the
    fine-tune the same way, subtract, unfold. An entry the fine-tune left alone folds to the very same float32,
    so its delta is exactly 0 and stays out of the adapter."""
    gb = g.reshape(-1, *([1] * (ft.ndim - 1)))
    d = (ft.astype(np.float32) * gb).astype(np.float32) - stored
    return (d.astype(np.float64) / gb).astype(np.float32)


def changed_batchnorm(manifest, state: dict[str, np.ndarray], targets, seen: set[bytes] | None
                      ) -> tuple[list[str], set[str]]:
    """The fine-tune's BatchNorms that were folded into base weights: -> (those whose folded scale or bias
    differs from the base's: the adapter cannot carry that change, names of every such BatchNorm parameter).
    The folded bias is a plain initializer of model.onnx, looked up by value in `seen` (_initializer_digests;
    None without an ONNX artifact: then only the scale is compared)."""
    from ..export.fold import folded

    changed, names = [], set()
    for t in targets:
        fbn = manifest.tensors[t].folded_batchnorm
        if not fbn:
            continue
        m = fbn["module"]
        keys = {k: f"{m}.{k}" for k in ("weight", "bias", "running_mean", "running_var")}
        names |= set(keys.values()) | {f"{m}.num_batches_tracked"}
        if not all(k in state for k in keys.values()):
            continue  # the fine-tune does not carry this BatchNorm: nothing changed it
        conv_bias = state.get(t.removesuffix(".weight") + ".bias")
        g, bias = folded(*(np.asarray(state[keys[k]], np.float32) for k in ("weight", "bias", "running_mean",
                                                                                  "running_var")), fbn["eps"], conv_bias)
        if not np.array_equal(g, _channel_scale(manifest, t)) or (seen is not None and _digest(bias) not in seen):
            changed.append(m)
    return changed, names


def changed_unpatchable(state: dict[str, np.ndarray], names: list[str], seen: set[bytes] | None) -> list[str] | None:
    """Which of `names` (fine-tune weights the base cannot patch) differ from the base. The base keeps them as
    ONNX initializers, possibly transposed (MatMul weights) and renamed, so each is looked up by value in `seen`
    (_initializer_digests). None when the base has no ONNX artifact to compare with."""
    if seen is None:
        return None
    changed = []
    for n in names:
        a = np.asarray(state[n], dtype=np.float32)
        if _digest(a) not in seen and (a.ndim != 2 or _digest(a.T) not in seen):
            changed.append(n)
    return changed


def _digest(a: np.ndarray) -> bytes:
    import hashlib

    return hashlib.sha1(np.ascontiguousarray(a, dtype=np.float32).tobytes()).digest()


def _initializer_digests(manifest) -> set[bytes] | None:
    """SHA-1s of every float initializer of the base's model.onnx (None without an ONNX artifact)."""
    if "onnxruntime" not in manifest.runtimes:
        return None
    import onnx
    from onnx import numpy_helper

    path = manifest.file(manifest.files_of("onnxruntime").patchable)
    try:
        proto = onnx.load(str(path))
    except Exception as e:  # noqa: BLE001 - protobuf and onnx raise many types
        raise PackError(f"{path}: cannot read the base model: {str(e)[:200]}") from None
    return {_digest(numpy_helper.to_array(t)) for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}


def sparsify(target: str, shape, delta: np.ndarray, density: float | None) -> tuple[SparseTensor, float, float]:
    """Keep the largest nonzero |delta| (k = round(density * numel), at least 1), or every nonzero without density.
    -> (sparse delta, squared norm kept out, squared norm of delta)."""
    flat = delta.reshape(-1).astype(np.float32)
    idx = np.flatnonzero(flat)  # only changed entries are candidates
    if density is not None:
        k = min(idx.size, max(1, int(round(density * flat.size))))
        idx = np.sort(idx[np.argpartition(np.abs(flat[idx]), idx.size - k)[idx.size - k:]]) if k else idx[:0]
    dropped = flat.astype(np.float64)
    dropped[idx] = 0.0
    return (SparseTensor(target, tuple(shape), idx.astype(np.int64), flat[idx]), float(np.sum(dropped ** 2)),
            float(np.sum(flat.astype(np.float64) ** 2)))


def lora_deltas(cfg: dict, state: dict, manifest, density: float, source: str) -> tuple[list[SparseTensor], float]:
    if cfg.get("use_dora"):
        raise PackError(f"{source}: DoRA adapters rescale whole columns; they are not sparse-convertible")
    r = int(cfg["r"])
    scaling = float(cfg.get("lora_alpha", r)) / (np.sqrt(r) if cfg.get("use_rslora") else r)
    modules = sorted({k.removeprefix(PEFT_PREFIX).rsplit(".lora_", 1)[0] for k in state if ".lora_" in k})
    check_belongs(manifest, modules, source)
    deltas, lost, total = [], 0.0, 0.0
    for module in modules:
        where = f"{source}: module {module}"
        a, b = state.get(f"{PEFT_PREFIX}{module}.lora_A.weight"), state.get(f"{PEFT_PREFIX}{module}.lora_B.weight")
        if a is None or b is None:
            raise PackError(f"{where}: needs lora_A.weight and lora_B.weight")
        target, info = _target(manifest, module, where)
        d = (b.reshape(b.shape[0], -1).astype(np.float64) @ a.reshape(a.shape[0], -1).astype(np.float64)) * scaling
        if cfg.get("fan_in_fan_out"):
            d = d.T
        if d.size != info.numel:
            raise PackError(f"{where}: B @ A has {d.size} entries, the base weight {list(info.shape)} has {info.numel}")
        sd, l, t = sparsify(target, info.shape, d.reshape(info.shape), density)
        if not np.all(np.isfinite(sd.values)):
            raise PackError(f"{where}: non-finite values in B @ A")
        deltas.append(sd)
        lost, total = lost + l, total + t
    if not deltas:
        raise PackError(f"{source}: the checkpoint adapts no module")
    return deltas, float(np.sqrt(lost / total)) if total else 0.0


def finetune_deltas(src: Path, manifest, density: float | None) -> tuple[list[SparseTensor], float, list[str], bool]:
    files = sorted(src.glob("*.safetensors")) if src.is_dir() else [src]
    if not files:
        raise PackError(f"{src}: no .safetensors files")
    state = {}
    for f in files:
        state.update({k.removeprefix(PEFT_PREFIX): v for k, v in _load_safetensors(f).items()})
    present = [t for t in manifest.tensors if t in state]
    if not present:
        check_belongs(manifest, [k for k in state if k.endswith(".weight")], str(src))
        raise PackError(f"{src}: none of its tensors is a patchable weight of base {manifest.root}")
    if any(p.quant is not None for t in present for ps in manifest.tensors[t].placements.values() for p in ps):
        raise PackError(f"{src}: a full fine-tune is diffed against the float32 weights it was tuned from, which "
                        f"the quantized base {manifest.root} no longer holds: pack it against the float32 export of "
                        "the same model (the blob then loads on the quantized base too: one fingerprint)")
    base = base_weights(manifest, present)
    deltas, lost, total = [], 0.0, 0.0
    for t in present:
        ft = state[t]
        if tuple(ft.shape) != manifest.tensors[t].shape:
            raise PackError(f"{src}: tensor {t}: shape {list(ft.shape)} does not match the base's "
                            f"{list(manifest.tensors[t].shape)}")
        g = _channel_scale(manifest, t)
        d = ft.astype(np.float32) - base[t] if g is None else folded_delta(ft, base[t], g)
        if not np.all(np.isfinite(d)):
            raise PackError(f"{src}: tensor {t}: non-finite values")
        sd, l, tt = sparsify(t, ft.shape, d, density)
        if sd.indices.size:
            deltas.append(sd)
        lost, total = lost + l, total + tt
    if not deltas:
        raise PackError(f"{src}: identical to the base: nothing to pack")
    seen = _initializer_digests(manifest)  # model.onnx read once, for both checks
    bn_changed, bn_names = changed_batchnorm(manifest, state, present, seen)
    others = sorted(k for k in state if k not in manifest.tensors and k.endswith(".weight") and k not in bn_names)
    changed = changed_unpatchable(state, others, seen)
    ignored = (others if changed is None else changed) + [f"{m} (BatchNorm folded into the base)" for m in bn_changed]
    return deltas, float(np.sqrt(lost / total)) if total else 0.0, ignored, changed is not None


def quantized_fit(manifest, deltas: list[SparseTensor], float_base=None) -> dict | None:
    """For a quantized base: how many of the adapter's entries the base's scales clamp, and how much of its delta
    the integers hold after re-quantization (1 - |held - delta| / |delta|; docs/QUANTIZATION.md). With
    `float_base` (the float32 export of the same model) also the error against merging in float32: of the patched
    base, and of the merged model quantized whole with the same settings. None for a float base."""
    import dataclasses

    from shira_format.quant import dequantize, entries, pack_entries, quantize, requantize
    from shira_format.weights import quantized_placements

    if not any(p.quant is not None for d in deltas for ps in manifest.tensors[d.target].placements.values()
               for p in ps):
        return None
    stores = quantized_placements(manifest)
    floats, headroom = None, 1.0
    if float_base is not None:
        fman = manifest_mod.load(float_base)
        if fman.base_fingerprint != manifest.base_fingerprint:
            raise PackError(f"{fman.path}: --float-base is another model's export (base fingerprint differs)")
        if any(p.quant is not None for t in fman.tensors.values() for ps in t.placements.values() for p in ps):
            raise PackError(f"{fman.path}: --float-base must be a float32 export (this one is quantized)")
        missing = [d.target for d in deltas if d.target not in fman.tensors]
        if missing:
            raise PackError(f"{fman.path}: {missing[0]} is not patchable in --float-base: export it with the same "
                            "--targets")
        floats = base_weights(fman, [d.target for d in deltas])
        headroom = float(json.loads(manifest.path.read_text()).get("quantization", {}).get("headroom") or 1.0)
    n = clamped = 0
    err = ref = 0.0
    ours = whole = merged_norm = 0.0
    for d in deltas:
        if d.target not in stores:
            continue
        p, stored, scales = stores[d.target]  # one placement tells: every copy holds the same integers
        rows, cols = manifest.tensors[d.target].shape
        s = p.quant.scale_of(scales, d.indices, cols)
        ent = entries(stored, p.quant)
        u = ent[d.indices]
        new, c = requantize(u, d.values, s, p.quant)
        held = (new.astype(np.float64) - u.astype(np.float64)) * s.astype(np.float64)
        n, clamped = n + d.indices.size, clamped + c
        err += float(np.sum((held - d.values.astype(np.float64)) ** 2))
        ref += float(np.sum(d.values.astype(np.float64) ** 2))
        if floats is not None:
            merged = floats[d.target].reshape(-1).copy()
            merged[d.indices] += d.values
            patched = ent[np.arange(rows * cols, dtype=np.int64)]
            patched[d.indices] = new
            mine = dequantize(pack_entries(patched, p.quant), scales, p.quant, rows, cols).reshape(-1)
            # the whole merged weight quantized by the export's rule (shira_format.quant.quantize: unsigned
            # entries, float32 scales), whatever form this runtime stores them in
            plain = dataclasses.replace(p.quant, signed=False)
            q_bytes, q_scales = quantize(merged.reshape(rows, cols), p.quant.bits, p.quant.block,
                                         p.quant.per_channel, headroom)
            theirs = dequantize(q_bytes, q_scales, plain, rows, cols).reshape(-1)
            ours += float(np.sum((mine.astype(np.float64) - merged) ** 2))
            whole += float(np.sum((theirs.astype(np.float64) - merged) ** 2))
            merged_norm += float(np.sum(merged.astype(np.float64) ** 2))
    out = {"entries": n, "clamped": clamped, "kept": 1.0 - float(np.sqrt(err / ref)) if ref else 1.0}
    if floats is not None and merged_norm:
        out["error_patched"] = float(np.sqrt(ours / merged_norm))  # |patched base - merged float| / |merged|
        out["error_merged_then_quantized"] = float(np.sqrt(whole / merged_norm))
    return out


# ---- packing ------------------------------------------------------------------------------------------------
def pack_adapter(src, base_dir, out, name: str | None = None, value_coding: str = DEFAULT_VALUES,
                 index_coding: str = "auto", density: float | None = None, float_base=None) -> PackReport:
    """`float_base`: for a quantized base, the float32 export of the same model, to report the error against
    merging in float32 and then quantizing (quantized_fit)."""
    if density is not None and not 0 < density <= 1:
        raise PackError(f"--density {density}: must be in (0, 1]")
    manifest = manifest_mod.load(base_dir)
    src = Path(src)
    rel_err, ignored, checked = None, [], True
    if src.is_dir() and (src / "adapter_config.json").exists():
        cfg, state, st_path = _peft_dir(src)
        kind = cfg.get("peft_type")
        if kind == "SHIRA":
            _, modules = read_peft_shira(src)
            deltas = shira_deltas(cfg, modules, manifest, str(st_path))
        elif kind == "LORA":
            if density is None:
                raise PackError(f"{src}: a LoRA checkpoint needs --density (the share of each weight to keep)")
            deltas, rel_err = lora_deltas(cfg, state, manifest, density, str(st_path))
        else:
            raise PackError(f"{src / 'adapter_config.json'}: peft_type {kind!r} is not SHIRA or LORA")
        source_kind = kind.lower()
    elif src.suffix == ".safetensors" or src.is_dir():
        deltas, rel_err, ignored, checked = finetune_deltas(src, manifest, density)
        source_kind = "full-finetune"
    else:
        raise PackError(f"{src}: not a PEFT checkpoint directory or a .safetensors fine-tune")
    name = name or (src.stem if src.is_file() else src.name)
    try:
        blob = encode_adapter(name, manifest.base_fingerprint, deltas, value_coding, index_coding)
    except ValueError as e:
        raise PackError(f"{src}: {e}") from None
    adapter = read_adapter(blob, manifest, source=str(out))  # the runtime's reader must accept it before we write
    fit = quantized_fit(manifest, list(adapter.tensors.values()), float_base)  # before writing: it may refuse
    if fit is None and float_base is not None:
        raise PackError(f"--float-base applies to a quantized base; {manifest.root} is float32")
    write_bytes(out, blob)
    codings: dict[str, int] = {}
    for t in adapter.tensors.values():
        codings[t.index_coding] = codings.get(t.index_coding, 0) + 1
    src_bytes = sum(p.stat().st_size for p in src.iterdir() if p.is_file()) if src.is_dir() else src.stat().st_size
    return PackReport(name, Path(out), source_kind, len(deltas), adapter.nnz,
                      sum(manifest.tensors[d.target].numel for d in deltas), len(blob), src_bytes, value_coding,
                      codings, max(value_error(value_coding, d) for d in deltas), rel_err, ignored, checked,
                      fit)


def pack_peft_shira(src, base_dir, out, name: str | None = None, value_coding: str = "f32",
                    index_coding: str = "auto") -> PackReport:
    """PEFT SHiRA checkpoint -> blob; f32 values by default here so outputs match PEFT to fp32 precision."""
    return pack_adapter(src, base_dir, out, name, value_coding, index_coding)


# ---- inspection ---------------------------------------------------------------------------------------------
def inspect_blob(path) -> str:
    a = read_adapter(path)
    lines = [f"{path}: adapter {a.name!r}, format v{ADAPTER_VERSION}, {a.file_bytes:,} bytes, base {a.base_fingerprint}, "
             f"data crc32 {a.data_crc32:#010x}",
             f"{'tensor':<48}{'shape':>14}{'nnz':>10}{'density':>9}{'indices':>12}{'values':>9}{'B/nnz':>7}  crc32"]
    for t in a.tensors.values():
        numel = int(np.prod(t.shape))
        lines.append(f"{t.target:<48}{'x'.join(map(str, t.shape)):>14}{t.indices.size:>10,}"
                     f"{t.indices.size / numel:>9.2%}{t.index_coding:>12}{t.value_coding:>9}"
                     f"{t.stored_bytes / max(t.indices.size, 1):>7.2f}  {t.crc32:#010x}")
    data = sum(t.stored_bytes for t in a.tensors.values())
    peft = PEFT_BYTES_PER_NNZ * a.nnz
    lines.append(f"total: {len(a.tensors)} tensors, {a.nnz:,} nonzeros, {data:,} data bytes "
                 f"({data / max(a.nnz, 1):.2f} B/nonzero), {a.file_bytes:,} file bytes; the PEFT SHiRA layout "
                 f"holds the same in {peft:,} bytes of tensors ({peft / max(a.file_bytes, 1):.1f}x this file)")
    return "\n".join(lines)
