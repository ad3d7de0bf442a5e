"""What the load-time integrity check costs at real size: `python -m shira_toolchain.bench.load_checks`.

A TinyLlama-shaped 1.1B model's block Linear weights (every weight the exporter makes patchable by default:
0.97B parameters, 3.9 GB of float32) are written as the `weights.safetensors` an ONNX Runtime export holds,
with a manifest entry and CRC-32 per placement, as `shira-export` writes them. Then, each in the same process:
  read     `read_file(..., writable=True)`: the one read of the weights a session load cannot avoid (the
           file is in the page cache after it was written, so this is the fastest a load can read it)
  fast     `check_placements` (verify="fast", the default), on the session's threads
  full     `check_sha256` (verify="full"): SHA-256 of every weight in torch layout
Random weights (numpy), so no model is built; nothing but the file format is involved.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from shira_format.manifest import Manifest, Placement, TensorInfo
from shira_format.safetensors_file import read_file
from shira_format.checksum import placement_crc32
from shira_runtime.integrity import check_placements, check_sha256

# TinyLlama-1.1B: hidden 2048, intermediate 5632, 22 layers, 4 KV heads of 64 -> k/v [256, 2048]
LAYERS, HIDDEN, INTER, KV = 22, 2048, 5632, 256
SHAPES = {"q_proj": (HIDDEN, HIDDEN), "k_proj": (KV, HIDDEN), "v_proj": (KV, HIDDEN), "o_proj": (HIDDEN, HIDDEN),
          "gate_proj": (INTER, HIDDEN), "up_proj": (INTER, HIDDEN), "down_proj": (HIDDEN, INTER)}


def build(d: Path, layers: int) -> Manifest:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    tensors, arrays = {}, {}
    for layer in range(layers):
        for proj, shape in SHAPES.items():
            name = f"model.layers.{layer}.{'self_attn' if proj.endswith(('q_proj', 'k_proj', 'v_proj', 'o_proj')) else 'mlp'}.{proj}.weight"
            w = rng.standard_normal(shape, dtype=np.float32) * 0.02
            p = Placement(f"val_{len(arrays)}", (shape[1], shape[0]), "transpose2d")  # as torch.onnx stores MatMul B
            arrays[p.name] = np.ascontiguousarray(w.T)
            p = Placement(p.name, p.shape, p.layout, crc32=placement_crc32(name, shape, p, arrays[p.name]))
            tensors[name] = TensorInfo(name, name.rsplit(".", 1)[0], "linear", shape, "float32",
                                       hashlib.sha256(w.tobytes()).hexdigest(), {"onnxruntime": (p,)})
    save_file(arrays, str(d / "weights.safetensors"))
    return Manifest(d / "manifest.json", {"artifacts": {}}, "sha256:" + "0" * 64, tensors, [], [])


def measure(layers: int = LAYERS, threads: int = 2, workdir: str | None = None) -> dict:
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        d = Path(tmp)
        manifest = build(d, layers)
        path = d / "weights.safetensors"
        t0 = time.perf_counter()
        st = read_file(path, writable=True)
        t_read = time.perf_counter() - t0
        buffers = {p.name: st.array(p.name).reshape(-1) for t in manifest.tensors.values()
                   for p in t.placements["onnxruntime"]}
        t0 = time.perf_counter()
        check_placements(manifest, "onnxruntime", buffers, path, threads)
        t_fast = time.perf_counter() - t0
        t0 = time.perf_counter()
        check_sha256(manifest, "onnxruntime", buffers, path)
        t_full = time.perf_counter() - t0
        nbytes = sum(b.nbytes for b in buffers.values())
    return {"parameters": nbytes // 4, "bytes": nbytes, "threads": threads, "read_s": t_read, "fast_s": t_fast,
            "full_s": t_full, "fast_vs_read": t_fast / t_read, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "command": f"python -m shira_toolchain.bench.load_checks --layers {layers} --threads {threads}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=LAYERS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="write the result as JSON here")
    args = ap.parse_args()
    r = measure(args.layers, args.threads)
    print(f"{r['parameters'] / 1e9:.2f}B patchable parameters ({r['bytes'] / 1e9:.2f} GB), {r['threads']} threads: "
          f"read {r['read_s']:.2f} s, fast check (CRC-32) {r['fast_s']:.2f} s = {r['fast_vs_read']:.2f}x the read, "
          f"full check (SHA-256, torch layout) {r['full_s']:.2f} s")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
