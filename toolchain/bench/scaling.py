"""Scaling: SHiRA switch vs PEFT LoRA switch on Llama-shaped models from ~10M to ~1B parameters.

Random weights (nothing to download), fp32 and fp16 storage. Every Linear in the decoder blocks is targeted.
  shira_switch   the runtime's WeightPatcher (the code that ShiraSession.switch runs under its lock) going
                 from adapter A to adapter B, in place, on the model's own weight memory: restore A's saved
                 base values, then save and write B's. 1% of each weight, random positions.
  lora_switch    PEFT: unmerge_adapter, set_adapter, merge_adapter, at the same trainable-parameter count
                 (rank r with r*(m+n) summed over the targets = SHiRA's nonzeros).
  bound          the memory-bandwidth floor of the SHiRA switch: every 64-byte cache line holding an entry of
                 A or B is read and written once, plus the index/value arrays streamed once, at the copy
                 bandwidth measured in the same run (numpy copy of 256 MiB).
  dense_copy     one read+write of all the targeted weights at that bandwidth: what any dense fuse must pay.
Sessions are not built at these sizes (exports of ~1B models take minutes); that the session adds nothing
to the patcher's time is measured on the built-in models (`patch_kernel` rows of the switch table).
"""
from __future__ import annotations

import time

import numpy as np
import torch
from shira_runtime.patcher import WeightPatcher

from .measure import peft_switcher, sample, stats

# name -> Llama config (hidden, intermediate, layers, heads, kv heads, vocab)
SIZES = {
    "llama-10M": (256, 688, 8, 8, 8, 8192),
    "llama-60M": (512, 1408, 8, 8, 8, 32000),
    "llama-220M": (1024, 2816, 12, 16, 16, 32000),
    "llama-1.1B": (2048, 5632, 22, 32, 4, 32000),  # TinyLlama's shape
}
QUICK_SIZES = ("llama-10M",)
DENSITY = 0.01
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def copy_bandwidth(nbytes: int = 256 << 20, repeats: int = 5) -> float:
    """Bytes per second moved by a large numpy copy (read + write both counted)."""
    src = np.ones(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    best = min(sample(lambda: np.copyto(dst, src), repeats, warmup=1))
    return 2 * nbytes / best


def llama(size: str, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    h, i, n, heads, kv, vocab = SIZES[size]
    cfg = LlamaConfig(hidden_size=h, intermediate_size=i, num_hidden_layers=n, num_attention_heads=heads,
                      num_key_value_heads=kv, vocab_size=vocab, max_position_embeddings=2048)
    torch.manual_seed(0)
    with torch.no_grad():
        model = LlamaForCausalLM(cfg).to(dtype).eval()
    return model


def _targets(model) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if n.endswith(".weight") and n.split(".")[-2] in TARGETS}


def _adapter(weights: dict[str, torch.Tensor], seed: int) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    rng = np.random.default_rng(seed)
    out = {}
    for name, w in weights.items():
        idx = np.sort(rng.choice(w.numel(), max(1, int(DENSITY * w.numel())), replace=False)).astype(np.int64)
        out[name] = [(idx, (rng.standard_normal(idx.size) * 1e-2).astype(np.float32), 1.0)]
    return out


def _bound_bytes(weights, a, b) -> int:
    lines = 0
    streamed = 0
    for name, w in weights.items():
        per_line = 64 // w.element_size()
        ia, ib = a[name][0][0], b[name][0][0]
        lines += np.union1d(ia // per_line, ib // per_line).size
        streamed += ia.size * (8 + 4) + ib.size * (8 + 4 + 4 + 4)  # idx+saved | idx+delta, then base and value
    return 2 * 64 * lines + streamed


def bench_size(size: str, dtype: torch.dtype, repeats: int, bandwidth: float, threads: int, log=print) -> dict:
    from peft import LoraConfig, get_peft_model

    t0 = time.perf_counter()
    model = llama(size, dtype)
    weights = _targets(model)
    n_params = sum(p.numel() for p in model.parameters())
    n_target = sum(w.numel() for w in weights.values())
    a, b = _adapter(weights, 1), _adapter(weights, 2)
    nnz = sum(t[0][0].size for t in a.values())
    # the patcher writes straight into the torch tensors' memory: these numpy arrays are views of it
    np_dtype = np.float32 if dtype == torch.float32 else np.float16
    buffers = {n: w.detach().view(-1).numpy().view(np_dtype) for n, w in weights.items()}
    patcher = WeightPatcher(buffers, threads)
    flip = iter([a, b] * (repeats + 10))
    shira = stats(sample(lambda: patcher.commit(patcher.plan(next(flip))), repeats, warmup=2))
    patcher.commit(patcher.plan({}))  # back to base before LoRA touches the same tensors

    r = max(1, round(nnz / sum(sum(w.shape) for w in weights.values())))
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=r, target_modules=TARGETS,
                                                  init_lora_weights=False), adapter_name="a")
    peft_model.add_adapter("b", LoraConfig(r=r, lora_alpha=r, target_modules=TARGETS, init_lora_weights=False))
    peft_model.to(dtype)
    lora = stats(sample(peft_switcher(peft_model), max(2, repeats // 2), warmup=1))
    target_bytes = n_target * (4 if dtype == torch.float32 else 2)
    res = {"size": size, "dtype": str(dtype).removeprefix("torch."), "parameters": n_params,
           "targeted_parameters": n_target, "shira_nonzeros": nnz, "lora_rank": r,
           "shira_switch": shira, "lora_switch": lora,
           "bound_ms": _bound_bytes(weights, a, b) / bandwidth * 1e3,
           "dense_copy_ms": 2 * target_bytes / bandwidth * 1e3, "seconds": time.perf_counter() - t0}
    log(f"  {size} {res['dtype']}: {n_params / 1e6:.0f}M params, SHiRA switch {shira['median_ms']:.2f} ms, "
        f"LoRA switch {lora['median_ms']:.1f} ms ({lora['median_ms'] / shira['median_ms']:.1f}x), "
        f"bandwidth floor {res['bound_ms']:.2f} ms")
    return res


def run_scaling(quick: bool, repeats: int, threads: int, log=print) -> dict:
    torch.set_grad_enabled(False)
    bw = copy_bandwidth()
    log(f"scaling sweep: copy bandwidth {bw / 1e9:.1f} GB/s")
    rows = []
    for size in (QUICK_SIZES if quick else SIZES):
        for dtype in (torch.float32, torch.float16):
            rows.append(bench_size(size, dtype, repeats, bw, threads, log))
    torch.set_grad_enabled(True)
    return {"copy_bandwidth_gbps": bw / 1e9, "density": DENSITY, "targets": TARGETS, "rows": rows}


def plot_scaling(scaling: dict, ax) -> None:
    for dtype, style in (("float32", "-"), ("float16", "--")):
        rows = [r for r in scaling["rows"] if r["dtype"] == dtype]
        if not rows:
            continue
        x = [r["parameters"] for r in rows]
        ax.plot(x, [r["shira_switch"]["median_ms"] for r in rows], "o" + style, color="tab:green",
                label=f"SHiRA switch ({dtype})")
        ax.plot(x, [r["lora_switch"]["median_ms"] for r in rows], "s" + style, color="tab:gray",
                label=f"PEFT LoRA switch ({dtype})")
        ax.plot(x, [r["bound_ms"] for r in rows], ":", color="tab:green", alpha=0.6,
                label=f"SHiRA bandwidth floor ({dtype})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("switch latency, ms")
    ax.set_title(f"Scaling (1% of every block Linear, {scaling['copy_bandwidth_gbps']:.0f} GB/s copy)")
    ax.legend(fontsize=7)
