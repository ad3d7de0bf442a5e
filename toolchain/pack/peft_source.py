"""PEFT checkpoints as sources: SHiRA (indices and values, our trainer's seed-coded masks too) and LoRA
(B @ A * scaling, sparsified)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from shira_format.adapter import SparseTensor

from .binding import PackError, check_belongs, sparsify, target_name


PEFT_PREFIX = "base_model.model."
TRAIN_SIDE_FILE = "shira_train.json"  # shira-train's facts beside a PEFT checkpoint (mask seeds), kept out of
# PEFT's adapter_config.json so PEFT loads the checkpoint without warnings
PEFT_BYTES_PER_NNZ = 12  # int32 [2, nnz] indices + fp32 [nnz] values


def load_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001 - safetensors raises several types
        raise PackError(f"{path}: cannot read: {e}") from None


def peft_dir(src: Path) -> tuple[dict, dict[str, np.ndarray], Path]:
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
    return cfg, load_safetensors(st_path), st_path


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise PackError(f"{path}: not valid JSON: {str(e)[:120]}") from None
    except OSError as e:
        raise PackError(f"{path}: cannot read: {e.strerror}") from None


def read_peft_shira(src) -> tuple[dict, dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """-> (adapter_config, {module: (rows, cols, values)})."""
    cfg, state, st_path = peft_dir(Path(src))
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


def shira_deltas(cfg: dict, modules, manifest, source: str) -> list[SparseTensor]:
    """Check every module against the base's manifest and convert (row, col) pairs to flat torch indices."""
    fan_in_fan_out = bool(cfg.get("fan_in_fan_out", False))
    seeds = cfg.get("shira_mask_seeds") or {}  # checkpoints written before the side file
    check_belongs(manifest, list(modules), source)
    deltas = []
    for module, (rows, cols, vals) in sorted(modules.items()):
        where = f"{source}: module {module}"
        target, info = target_name(manifest, module, where)
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
        target, info = target_name(manifest, module, where)
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
