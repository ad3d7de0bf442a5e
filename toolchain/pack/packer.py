"""`shira-pack adapter`: turn adapters into blobs bound to one exported base.

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

from pathlib import Path

from shira_format import manifest as manifest_mod
from shira_format.adapter import DEFAULT_VALUES, encode_adapter, read_adapter
from shira_format.atomic import write_bytes
from shira_format.codings import value_error

from .binding import PackError, PackReport
from .finetune_source import finetune_deltas
from .peft_source import lora_deltas, peft_dir, read_peft_shira, shira_deltas
from .quantized_fit import quantized_fit


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
        cfg, state, st_path = peft_dir(src)
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
