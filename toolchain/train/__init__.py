"""`shira-train`: SHiRA adapters (and the LoRA baseline) on the built-in tasks or a user's text.

  config.py      TrainConfig
  shira_conv.py  ShiraConv (PEFT's SHiRA covers Linear only)
  masks.py       the paper's five masks
  loop.py        the one training loop
  tasks.py       the one task registry (`--task`: what the adapter learns)
  trainer.py     build the adapted model, train, save a PEFT checkpoint
  peft_shira.py  adapters made by PEFT itself, and PEFT's merged model as a reference
  joint.py       several tasks' adapters trained together (`--joint`)
  quantized.py   training against a quantized base (`--quantized-base`)
  peft_masks.py  the masks as PEFT `mask_fn`s
  lm_text.py, photos.py, styles.py  the text, photos and style targets the tasks use
"""
from .config import TrainConfig
from .trainer import build_adapted, calibration_scores, train

__all__ = ["TrainConfig", "build_adapted", "calibration_scores", "train"]
