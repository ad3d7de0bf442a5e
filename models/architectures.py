"""Small random-init models of real Hugging Face architectures, built from their config classes (no downloads).

`save(name, dir)` writes a model directory exactly as `save_pretrained` does, which is what users hand to
`shira-export model DIR`; `build(name)` returns the module. The test suite's architecture matrix and
docs/MODELS.md are driven by this table. Sizes are tiny on purpose (hidden 64, 2 layers); `scale=` widens
the transformers ones for speed and memory measurements.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch


@dataclass(frozen=True)
class Architecture:
    name: str
    task: str  # the export task it is saved for (model_source.TASKS)
    make: Callable[[], torch.nn.Module]
    peft_targets: tuple[str, ...]  # module-name suffixes of its Linear/Conv1D/Conv2d layers


def _llama_like(config_cls, model_cls, **extra):
    def make():
        import transformers

        cfg = getattr(transformers, config_cls)(vocab_size=512, hidden_size=64, intermediate_size=128,
                                                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                                max_position_embeddings=256, **extra)
        return getattr(transformers, model_cls)(cfg)
    return make


def _hf(config_cls, model_cls, **kw):
    def make():
        import transformers

        return getattr(transformers, model_cls)(getattr(transformers, config_cls)(**kw))
    return make


def _unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 64), norm_num_groups=8, cross_attention_dim=32,
                                attention_head_dim=8,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))


_LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_TEXT = dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
             max_position_embeddings=256)

ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in [
    Architecture("llama", "causal-lm", _llama_like("LlamaConfig", "LlamaForCausalLM"), _LLAMA_TARGETS),
    Architecture("qwen2", "causal-lm", _llama_like("Qwen2Config", "Qwen2ForCausalLM"), _LLAMA_TARGETS),
    Architecture("mistral", "causal-lm", _llama_like("MistralConfig", "MistralForCausalLM"), _LLAMA_TARGETS),
    Architecture("gemma", "causal-lm", _llama_like("GemmaConfig", "GemmaForCausalLM", head_dim=16), _LLAMA_TARGETS),
    Architecture("phi3", "causal-lm", _llama_like("Phi3Config", "Phi3ForCausalLM", pad_token_id=0, bos_token_id=1,
                                                     eos_token_id=2),
                 ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")),
    Architecture("gpt2", "causal-lm", _hf("GPT2Config", "GPT2LMHeadModel", vocab_size=512, n_embd=64, n_layer=2,
                                          n_head=4, n_positions=256, bos_token_id=0,
                                          eos_token_id=0), ("c_attn", "c_proj", "c_fc")),
    Architecture("bert", "feature-extraction", _hf("BertConfig", "BertModel", **_TEXT),
                 ("query", "key", "value", "dense")),
    Architecture("bert-mlm", "masked-lm", _hf("BertConfig", "BertForMaskedLM", **_TEXT),
                 ("query", "key", "value", "dense")),
    Architecture("distilbert", "sequence-classification",
                 _hf("DistilBertConfig", "DistilBertForSequenceClassification", vocab_size=512, dim=64, n_layers=2,
                     n_heads=4, hidden_dim=128, max_position_embeddings=256),
                 ("q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2")),
    Architecture("t5-encoder", "text-encoder",
                 _hf("T5Config", "T5EncoderModel", vocab_size=512, d_model=64, d_kv=16, d_ff=128, num_layers=2,
                     num_heads=4), ("q", "k", "v", "o", "wi", "wo")),
    Architecture("vit", "image-classification",
                 _hf("ViTConfig", "ViTForImageClassification", image_size=32, patch_size=8, hidden_size=64,
                     num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, num_labels=10),
                 ("query", "key", "value", "dense", "projection")),
    Architecture("convnext", "image-feature-extraction",
                 _hf("ConvNextConfig", "ConvNextModel", num_channels=3, num_stages=2, hidden_sizes=[16, 32],
                     depths=[1, 1], image_size=64), ("dwconv", "pwconv1", "pwconv2", "patch_embeddings", "downsampling_layer.1")),
    Architecture("resnet", "image-classification",
                 _hf("ResNetConfig", "ResNetForImageClassification", embedding_size=16, hidden_sizes=[16, 32],
                     depths=[1, 1], layer_type="bottleneck", num_labels=10), ("convolution",)),
    Architecture("mobilenetv2", "image-classification",
                 _hf("MobileNetV2Config", "MobileNetV2ForImageClassification", depth_multiplier=0.35, image_size=64,
                     num_labels=10), ("convolution",)),
    Architecture("efficientnet", "image-classification",
                 _hf("EfficientNetConfig", "EfficientNetForImageClassification", width_coefficient=0.25,
                     depth_coefficient=0.25, image_size=64, hidden_dim=320, num_labels=10),
                 ("convolution", "depthwise_conv", "reduce", "expand", "project_conv", "expand_conv", "top_conv")),
    Architecture("unet", "unet", _unet, ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "conv1",
                                         "conv2", "ff.net.0.proj", "ff.net.2")),
]}


def build(name: str, seed: int = 0) -> torch.nn.Module:
    """The architecture's model with deterministic random weights, in eval mode. BatchNorm layers get the
    statistics of random inputs (as training leaves them) and random affine parameters: fresh ones (mean 0,
    var 1, gamma 1) would hide a wrong fold, and arbitrary ones saturate every ReLU6 of a deep net, so that no
    weight reaches the output."""
    if name not in ARCHITECTURES:
        raise KeyError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
    torch.manual_seed(seed)
    m = ARCHITECTURES[name].make().eval()
    bns = [mod for mod in m.modules() if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm)]
    if bns:
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for bn in bns:
                bn.reset_running_stats()
                bn.momentum = None  # cumulative average over the calibration batches
                if bn.affine:
                    bn.weight.copy_(torch.rand(bn.weight.shape, generator=g) + 0.5)
                    bn.bias.copy_(torch.randn(bn.bias.shape, generator=g) * 0.1)
            m.train()
            size = getattr(m.config, "image_size", 64)
            for _ in range(2):
                m(pixel_values=torch.rand(8, getattr(m.config, "num_channels", 3), size, size, generator=g))
            m.eval()
            for bn in bns:
                bn.momentum = 0.1
    return m


def save(name: str, out_dir, seed: int = 0) -> Path:
    """Write the architecture as a model directory (config.json + model.safetensors), as save_pretrained does."""
    out = Path(out_dir)
    build(name, seed).save_pretrained(out)
    return out
