"""The tasks a Hugging Face model directory can be exported for (`shira-export model DIR --hf-task`).

Torch-free, so the CLI can list them in --help without importing torch. Each task names the transformers
auto-mapping whose classes it covers, the class that loads it, what it takes and what it returns.
  inputs  "causal": input_ids; "text": input_ids + attention_mask; "image": pixel_values;
          "unet": sample, timestep, encoder_hidden_states
  outputs the ModelOutput fields users read: logits for heads, last_hidden_state for encoders (what
          sentence-transformers pools), sample for a diffusion UNet
"""
from __future__ import annotations

from typing import NamedTuple


class Task(NamedTuple):
    mapping: str | None  # transformers.models.auto.modeling_auto.<mapping>: the classes saved for this task
    loader: str  # the class that loads it: a transformers Auto class, or a diffusers class
    inputs: str
    outputs: tuple[str, ...]


# Order matters when a directory names its class: the first task whose mapping lists it wins (BertModel is
# in MODEL_MAPPING and in the text-encoding mapping; it is feature extraction).
TASKS: dict[str, Task] = {
    "causal-lm": Task("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "AutoModelForCausalLM", "causal", ("logits",)),
    "masked-lm": Task("MODEL_FOR_MASKED_LM_MAPPING_NAMES", "AutoModelForMaskedLM", "text", ("logits",)),
    "sequence-classification": Task("MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
                                    "AutoModelForSequenceClassification", "text", ("logits",)),
    "image-classification": Task("MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES", "AutoModelForImageClassification",
                                 "image", ("logits",)),
    "feature-extraction": Task("MODEL_MAPPING_NAMES", "AutoModel", "text", ("last_hidden_state",)),
    "image-feature-extraction": Task("MODEL_MAPPING_NAMES", "AutoModel", "image", ("last_hidden_state",)),
    "text-encoder": Task("MODEL_FOR_TEXT_ENCODING_MAPPING_NAMES", "AutoModelForTextEncoding", "text",
                         ("last_hidden_state",)),
    "unet": Task(None, "UNet2DConditionModel", "unet", ("sample",)),
}
