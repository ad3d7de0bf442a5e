"""`shira-pack`: turn PEFT SHiRA / LoRA checkpoints and full fine-tunes into blobs bound to one exported base.

  packer.py           pack_adapter: detect the source, take its deltas, check them against the base, write the blob
  peft_source.py      PEFT SHiRA (and our trainer's seed-coded masks) and PEFT LoRA checkpoints
  finetune_source.py  full fine-tunes: the diff against the base, BatchNorm folded, unpatchable changes found
  binding.py          what binds a delta to the base: target names, base weights, sparsify, PackError, PackReport
  quantized_fit.py    what a quantized base's scales let through of a delta
  inspect.py          `shira-pack inspect`
"""
from .binding import PackError, PackReport
from .inspect import inspect_blob
from .packer import pack_adapter, pack_peft_shira
from .peft_source import TRAIN_SIDE_FILE

__all__ = ["TRAIN_SIDE_FILE", "PackError", "PackReport", "inspect_blob", "pack_adapter", "pack_peft_shira"]
