"""`shira-train`: fine-tune a base model with a SHiRA adapter (or the LoRA baseline) and write a PEFT checkpoint.

Linear layers go through `peft.ShiraConfig` with a custom `mask_fn` (one of the paper's five masks, masks.py);
conv layers, which PEFT's SHiRA does not cover, through `ShiraConv` (shira_conv.py), saved in the same layout:
`base_model.model.<module>.shira_indices` int32 [2, nnz] (rows, cols of the weight viewed as [out, in*kh*kw])
and `.shira_weight` fp32 [nnz]. adapter_config.json is PEFT's own, untouched (PEFT warns about keys it does not
know); what only this project needs goes beside it in `shira_train.json` (TRAIN_SIDE_FILE):
  mask_type     the mask kind
  mask_seeds    module -> PRNG seed, for `rand` masks (their blobs then store no indices)
  conv_modules  modules adapted by ShiraConv (PEFT cannot load these; `shira-pack` can)
Each layer gets r * (R + C) trainable values, PEFT's count, so `--lora` at the same r trains as many.
"""
from __future__ import annotations

import copy
import json
import re
import resource
import shutil
import statistics
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..export import patchable_weights
from ..model_source import ExportSubject
from ..pack import TRAIN_SIDE_FILE
from . import tasks
from .config import TrainConfig
from .shira_conv import ShiraConv
from .loop import fit
from .masks import MASKS, NEEDS_GRADIENTS, mask_indices


def task_family(subject: ExportSubject) -> str:
    return "causal-lm" if subject.family == "causal-lm" else "image"


def _tasks(subject) -> list[str]:
    names = list(tasks.tasks_for(task_family(subject)))
    return names + ["text"] if task_family(subject) == "causal-lm" else names


_TEXT_CACHE: dict = {}


def text_file_ids(subject, path: str) -> torch.Tensor:
    """Token ids of a text file: the model directory's own tokenizer if it has one, else bytes (byte-level LMs)."""
    key = (subject.source, path)
    if key not in _TEXT_CACHE:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 text (byte {e.start}); --data takes a text file") from None
        src = Path(subject.source)
        if src.is_dir() and any((src / f).exists() for f in ("tokenizer.json", "tokenizer_config.json")):
            from transformers import AutoTokenizer

            ids = AutoTokenizer.from_pretrained(src, local_files_only=True)(text)["input_ids"]
        else:
            vocab = subject.model.get_input_embeddings().num_embeddings
            if vocab < 256:
                raise ValueError(f"{path}: the model has no tokenizer and {vocab} < 256 tokens: cannot read bytes")
            ids = list(text.encode("utf-8"))
        if len(ids) < 80:
            raise ValueError(f"{path}: {len(ids)} tokens, too short to train on (need at least 80)")
        _TEXT_CACHE[key] = torch.tensor(ids, dtype=torch.int64)
    return _TEXT_CACHE[key]


def _batch(subject, task, g, batch, data=None):
    if task == "text":
        ids = text_file_ids(subject, data)
        window = min(64, ids.numel() - 1)
        starts = torch.randint(0, ids.numel() - window, (batch,), generator=g)
        rows = torch.stack([ids[s : s + window] for s in starts])
        return {"input_ids": rows, "labels": rows}
    return tasks.batch(task, g, batch)


def _loss(subject, model, b):
    return tasks.loss(task_family(subject), model, b)


def calibration_scores(subject, model, targets, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """sum over calibration batches of |dW| (grad) or |W * dW| (snip), per targeted weight."""
    m = copy.deepcopy(model).train()
    params = dict(m.named_parameters())
    for p in m.parameters():
        p.requires_grad_(False)
    for t in targets:
        params[t].requires_grad_(True)
    scores = {t: torch.zeros_like(params[t]) for t in targets}
    g = torch.Generator().manual_seed(cfg.seed + 1)
    for _ in range(cfg.calib_batches):
        m.zero_grad()
        _loss(subject, m, _batch(subject, cfg.task, g, cfg.batch, cfg.data)).backward()
        for t in targets:
            gw = params[t].grad
            scores[t] += (gw * params[t]).abs() if cfg.mask == "snip" else gw.abs()
    return {t: s.detach() for t, s in scores.items()}


def avoided_entries(blobs, model) -> dict[str, np.ndarray]:
    """Adapter blobs -> torch weight name -> the flat indices they touch (their union): entries a disjoint mask
    leaves alone. A blob made for another model (its base fingerprint) is refused."""
    from shira_format.adapter import read_adapter

    from ..export.model import base_fingerprint

    if not blobs:
        return {}
    params, mine = dict(model.named_parameters()), base_fingerprint(model)
    out: dict[str, list] = {}
    for path in blobs:
        adapter = read_adapter(path)
        if adapter.base_fingerprint != mine:
            raise ValueError(f"{path}: made for another model (base fingerprint {adapter.base_fingerprint[:19]}..., "
                             f"this model's {mine[:19]}...); --avoid takes adapters of the model being trained")
        for t in adapter.tensors.values():
            if t.target not in params or tuple(params[t.target].shape) != tuple(t.shape):
                raise ValueError(f"{path}: tensor {t.target} {list(t.shape)} is not a weight of this model")
            out.setdefault(t.target, []).append(t.indices)
    return {k: np.unique(np.concatenate(v)) for k, v in out.items()}


def _module_regex(names) -> str:
    return "^(" + "|".join(re.escape(n) for n in sorted(names)) + ")$"


def build_adapted(subject: ExportSubject, cfg: TrainConfig, avoid: dict[str, np.ndarray] | None = None,
                  chosen: dict[str, np.ndarray] | None = None):
    """-> (trainable model, info about the adapter) for SHiRA or, with cfg.lora, the LoRA baseline. `avoid`:
    avoided_entries(cfg.avoid, ...) made earlier (of the float model, where `subject` is a quantized twin).
    `chosen`: torch weight name -> sorted flat indices, masks picked by the caller (joint.py's disjoint masks)."""
    from peft import LoraConfig, ShiraConfig, get_peft_model

    if cfg.mask not in MASKS:
        raise ValueError(f"unknown mask {cfg.mask!r}; choose from {', '.join(MASKS)}")
    if cfg.data and task_family(subject) != "causal-lm":
        raise ValueError("--data (a text file) is for language models; image nets train on the built-in styles")
    if cfg.data:
        cfg.task = "text"
        text_file_ids(subject, cfg.data)  # a file that is not text fails here, before any progress bar
    if cfg.task not in _tasks(subject) or (cfg.task == "text" and not cfg.data):
        raise ValueError(f"unknown task {cfg.task!r} for this model; choose from {', '.join(_tasks(subject))} "
                         "(or give --data FILE)")
    torch.manual_seed(cfg.seed)
    base = copy.deepcopy(subject.model)
    wanted = patchable_weights(base, cfg.targets)
    if not wanted:
        raise ValueError(f"--targets {cfg.targets!r} matches no Linear/Conv weight")
    linear = {w.removesuffix(".weight") for w, (_, kind) in wanted.items() if kind == "linear"}
    conv = {w.removesuffix(".weight") for w, (_, kind) in wanted.items() if kind.startswith("conv")}
    if cfg.lora:
        if cfg.avoid:
            raise ValueError("--avoid picks SHiRA entries; LoRA has no mask to keep apart")
        model = get_peft_model(base, LoraConfig(r=cfg.r, lora_alpha=cfg.r, target_modules=_module_regex(linear | conv)))
        return model, {"kind": "lora", "modules": sorted(linear | conv)}

    params = dict(base.named_parameters())
    seeds = {}
    if chosen is not None:
        chosen = {w.removesuffix(".weight"): idx for w, idx in chosen.items()}
    else:
        if avoid is None:
            avoid = avoided_entries(cfg.avoid, base)
        scores = calibration_scores(subject, base, list(wanted), cfg) if cfg.mask in NEEDS_GRADIENTS else {}
        chosen = {}
        for w in wanted:
            p = params[w]
            count = cfg.r * (p.shape[0] + int(np.prod(p.shape[1:])))
            idx, seed = mask_indices(cfg.mask, p, count, w.removesuffix(".weight"), cfg.seed, scores.get(w),
                                     avoid.get(w))
            chosen[w.removesuffix(".weight")] = idx
            if seed is not None:
                seeds[w.removesuffix(".weight")] = str(seed)
    by_layer = {id(dict(base.named_modules())[m]): m for m in linear}

    def mask_fn(base_layer, r, **kwargs):
        mask = torch.zeros(base_layer.weight.numel(), dtype=base_layer.weight.dtype)
        mask[torch.from_numpy(chosen[by_layer[id(base_layer)]])] = 1
        return mask.view_as(base_layer.weight)

    model = base
    if linear:
        config = ShiraConfig(r=cfg.r, target_modules=_module_regex(linear))
        config.mask_fn = mask_fn
        model = get_peft_model(base, config)
    for name in sorted(conv):
        root = model.base_model.model if linear else model
        parent_name, _, child = name.rpartition(".")
        parent = root.get_submodule(parent_name) if parent_name else root
        setattr(parent, child, ShiraConv(getattr(parent, child), chosen[name]))
    if not linear:
        for n, p in model.named_parameters():
            p.requires_grad_(n.endswith("shira_weight"))
    return model, {"kind": "shira", "mask": cfg.mask, "seeds": seeds, "linear": sorted(linear), "conv": sorted(conv)}


def train(subject: ExportSubject, cfg: TrainConfig, out_dir, log=print, progress: bool = True):
    """Train, save the checkpoint to out_dir, and return (trained model, report). With cfg.quantized_base the
    frozen weights are that export's integers and every trainable value stays within its scale (quantized.py)."""
    project = None
    avoid = avoided_entries(cfg.avoid, subject.model)  # of the float model: what the blobs were packed against
    if cfg.quantized_base:
        if cfg.lora:
            raise ValueError("--quantized-base trains SHiRA adapters (patched into the integers); not --lora")
        from .quantized import QuantizedBase

        qbase = QuantizedBase(cfg.quantized_base, subject.model)
        subject = qbase.frozen(subject)
    model, info = build_adapted(subject, cfg, avoid)
    if cfg.quantized_base:
        project = qbase.projector(model)
        if info["conv"]:
            raise ValueError(f"--quantized-base: conv layers {info['conv'][:3]} are not quantized; --targets Linear")
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(cfg.seed)
    run = fit(trainable, lambda: _batch(subject, cfg.task, g, cfg.batch, cfg.data), lambda b: _loss(subject, model, b),
              cfg.steps, cfg.lr, desc=f"{info['kind']} {cfg.task}", progress=progress, after_step=project)
    losses, step_s, state_bytes = run.losses, run.step_s, run.optimizer_state_bytes
    report = {"config": asdict(cfg), "adapter": info, "trainable_values": sum(p.numel() for p in trainable),
              "optimizer_state_bytes": state_bytes, "loss_first": losses[0], "loss_last": losses[-1],
              "loss_curve": losses, "step_ms_median": statistics.median(step_s) * 1e3,
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    save_checkpoint(model, info, cfg, report, Path(out_dir))
    log(f"{info['kind']} {cfg.task} ({info.get('mask', 'lora')}, r={cfg.r}): {report['trainable_values']:,} trainable "
        f"values, loss {losses[0]:.4f} -> {losses[-1]:.4f}, {report['step_ms_median']:.1f} ms/step, optimizer state "
        f"{state_bytes:,} B -> {out_dir}")
    return model.eval(), report


def save_checkpoint(model, info: dict, cfg: TrainConfig, report: dict, out_dir: Path) -> None:
    """PEFT's save_pretrained for what PEFT knows, plus the conv adapters in the same layout; atomic."""
    from safetensors.numpy import load_file, save_file

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        if info["kind"] == "lora" or info["linear"]:
            model.save_pretrained(str(tmp), save_embedding_layers=False)  # adapters only, no base copies
        if info["kind"] == "shira":
            st_path, cfg_path = tmp / "adapter_model.safetensors", tmp / "adapter_config.json"
            state = load_file(str(st_path)) if st_path.exists() else {}
            config = json.loads(cfg_path.read_text()) if cfg_path.exists() else {
                "peft_type": "SHIRA", "r": cfg.r, "mask_type": "random", "fan_in_fan_out": False,
                "target_modules": [], "task_type": None}
            for name, mod in model.named_modules():
                if isinstance(mod, ShiraConv):
                    module = name.removeprefix("base_model.model.")
                    state[f"base_model.model.{module}.shira_indices"] = mod.rows_cols()
                    state[f"base_model.model.{module}.shira_weight"] = mod.shira_weight.detach().numpy().copy()
            save_file(state, str(st_path))
            cfg_path.write_text(json.dumps(config, indent=2, sort_keys=True))
            (tmp / TRAIN_SIDE_FILE).write_text(json.dumps(
                {"mask_type": info["mask"], "mask_seeds": info["seeds"], "conv_modules": info["conv"]},
                indent=2, sort_keys=True))
        (tmp / "train_report.json").write_text(json.dumps(report, indent=1))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
