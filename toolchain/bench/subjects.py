"""What several benches build alike: the model shapes they measure at real size, random sparse adapters for
an export, and ONNX Runtime's own adapter files (`.onnx_adapter`), the LoRA baseline's way to switch."""
from __future__ import annotations

from pathlib import Path

import numpy as np

# name -> (family, config kwargs): random weights in transformers' own classes, the size the claims are about
MODELS = {
    "llama-168M": ("llama", dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
                                 num_attention_heads=16, num_key_value_heads=16, vocab_size=32000)),
    "llama-0.55B": ("llama", dict(hidden_size=1536, intermediate_size=4096, num_hidden_layers=16,
                                  num_attention_heads=16, num_key_value_heads=16, vocab_size=32000)),
    "vit-b16": ("vit", dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                            image_size=224, patch_size=16, num_labels=1000)),
}
DENSITY = 0.01  # a SHiRA adapter's share of each weight


def write_random_adapters(manifest, out: dict[str, Path], density: float = DENSITY, seed: int = 0) -> None:
    """One random sparse adapter per (name, path) of `out`, `density` of every patchable weight, for the base
    `manifest` describes (its fingerprint): what a switch writes, with values a real adapter's size."""
    from shira_format.adapter import SparseTensor, write_adapter

    rng = np.random.default_rng(seed)
    for name, path in out.items():
        tensors = []
        for tname, info in manifest.tensors.items():
            n = info.numel
            idx = np.sort(rng.choice(n, size=max(1, int(n * density)), replace=False)).astype(np.int64)
            tensors.append(SparseTensor(tname, tuple(info.shape), idx, rng.normal(0, 0.01, idx.size).astype(np.float32)))
        write_adapter(path, name, manifest.base_fingerprint, tensors)


def write_onnx_adapter(path: Path, values: dict[str, np.ndarray]) -> None:
    """An ONNX Runtime adapter file: initializer name -> float32 array, read back by `ort.LoraAdapter.Load`."""
    import onnxruntime as ort

    fmt = ort.AdapterFormat()
    fmt.set_adapter_version(1)
    fmt.set_model_version(1)
    fmt.set_parameters({k: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v)) for k, v in values.items()})
    fmt.export_adapter(str(path))
