"""`shira-pack`: turn PEFT SHiRA / LoRA checkpoints and full fine-tunes into blobs bound to one exported base."""
from .adapter import (
    TRAIN_SIDE_FILE,
    PackError,
    PackReport,
    inspect_blob,
    pack_adapter,
    pack_peft_shira,
)

__all__ = ["TRAIN_SIDE_FILE", "PackError", "PackReport", "inspect_blob", "pack_adapter", "pack_peft_shira"]
