"""`shira-pack adapter`: turn a PEFT SHiRA checkpoint into a blob bound to one exported base.

PEFT layout (peft.ShiraConfig, save_pretrained): adapter_config.json + adapter_model.safetensors with, per
adapted module, `base_model.model.<module>.shira_indices` (int32 [2, nnz]: rows, cols of the [out, in]
weight; PEFT on Windows stores them as float32) and `base_model.model.<module>.shira_weight` (fp32 [nnz]).

`fan_in_fan_out: true` means the module stores its weight as [in, out] (GPT-2 Conv1D) while the SHiRA rows
and cols still address the logical [out, in] delta, as in PEFT's other tuners: the packer then swaps them to
address the stored tensor. Every check happens here AND again in the runtime; this side names the module.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shira_runtime import manifest as manifest_mod
from shira_runtime.adapter_file import read_adapter

from .blob_writer import SparseDelta, encode_blob
from .atomic import write_bytes

PEFT_PREFIX = "base_model.model."


class PackError(ValueError):
    pass


@dataclass
class PackReport:
    name: str
    out: Path
    tensors: int
    nnz: int
    patchable_weights: int
    blob_bytes: int
    source_bytes: int

    @property
    def density(self) -> float:
        return self.nnz / max(self.patchable_weights, 1)


def read_peft_shira(src) -> tuple[dict, dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """-> (adapter_config, {module: (rows, cols, values)})."""
    from safetensors.numpy import load_file

    src = Path(src)
    cfg_path, st_path = src / "adapter_config.json", src / "adapter_model.safetensors"
    for p in (cfg_path, st_path):
        if not p.exists():
            raise PackError(f"{p}: not found; a PEFT SHiRA checkpoint directory holds adapter_config.json and "
                            "adapter_model.safetensors")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise PackError(f"{cfg_path}: not valid JSON: {e}") from None
    if cfg.get("peft_type") != "SHIRA":
        raise PackError(f"{cfg_path}: peft_type is {cfg.get('peft_type')!r}, not 'SHIRA'")
    try:
        state = load_file(str(st_path))
    except Exception as e:  # noqa: BLE001 - safetensors raises several types
        raise PackError(f"{st_path}: cannot read: {e}") from None
    modules: dict[str, dict[str, np.ndarray]] = {}
    for key, arr in state.items():
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
        if ind.dtype.kind == "f":  # PEFT saves indices as float32 on Windows
            if not np.all(ind == np.round(ind)):
                raise PackError(f"{st_path}: module {module}: float indices that are not integers")
        out[module] = (ind[0].astype(np.int64), ind[1].astype(np.int64), val.astype(np.float32))
    return cfg, out


def to_sparse_deltas(cfg: dict, modules, manifest, source: str) -> list[SparseDelta]:
    """Check every module against the base's manifest and convert (row, col) pairs to flat torch indices."""
    fan_in_fan_out = bool(cfg.get("fan_in_fan_out", False))
    deltas = []
    for module, (rows, cols, vals) in sorted(modules.items()):
        target = f"{module}.weight"
        where = f"{source}: module {module}"
        info = manifest.tensors.get(target)
        if info is None:
            why = manifest.raw.get("excluded", {}).get(target)
            raise PackError(f"{where}: not patchable in base {manifest.root}" + (f" ({why})" if why else
                            " (not in its manifest: re-export with --targets matching it)"))
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
        deltas.append(SparseDelta(target, info.shape, flat, vals))
    if not deltas:
        raise PackError(f"{source}: the checkpoint adapts no module")
    return deltas


def pack_peft_shira(src, base_dir, out, name: str | None = None, value_dtype: str = "f32") -> PackReport:
    manifest = manifest_mod.load(base_dir)
    src = Path(src)
    cfg, modules = read_peft_shira(src)
    deltas = to_sparse_deltas(cfg, modules, manifest, str(src / "adapter_model.safetensors"))
    name = name or src.name
    blob = encode_blob(name, manifest.base_fingerprint, deltas, value_dtype)
    read_adapter(blob, manifest, source=str(out))  # the runtime's own reader must accept it before we write it
    write_bytes(out, blob)
    return PackReport(name, Path(out), len(deltas), sum(d.indices.size for d in deltas),
                      sum(manifest.tensors[d.target].numel for d in deltas), len(blob),
                      sum(p.stat().st_size for p in src.iterdir() if p.is_file()))
