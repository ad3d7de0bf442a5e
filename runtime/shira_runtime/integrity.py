"""Base integrity: every patchable placement is checked at load against a CRC-32 recorded at export.

Why: patches are written at the places and in the layouts the manifest gives. A weights file or program that
changed after export, an ExecuTorch offset moved by a few bytes, or a layout edited from `transpose2d` to
`identity` would make patches land on the wrong floats, silently. The checksum therefore covers the
placement's record (tensor, name, layout, shapes, offset) as well as its stored bytes (docs/MANIFEST.md,
"Integrity"). CRC-32 runs at ~2.6 GB/s per core here and zlib releases the GIL, so the placements are
checked on a few threads; `verify="full"` adds the SHA-256 of every weight in torch layout.
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from shira_format.checksum import placement_crc32
from shira_format.errors import ManifestError

VERIFY_MODES = ("fast", "full", "off")


def _placements(info, runtime: str, prepacked: bool, only=None):
    places = (info.prepacked_placements if prepacked else info.placements).get(runtime, ())
    return places if only is None else [p for p in places if p.name in only]


def check_placements(manifest, backend: str, buffers: dict[str, np.ndarray], artifact_file, threads=None,
                     prepacked: bool = False, only=None, scales=None) -> None:
    """Refuse the base if any placement of `backend` (of its prepacked engine's file with `prepacked`) differs
    from its export-time checksum.

    `buffers`: placement name -> the stored bytes the engine reads (any shape; C-contiguous); `scales`: quantized
    placement name -> its scales."""
    jobs = [(info, p) for info in manifest.tensors.values() for p in _placements(info, backend, prepacked, only)]
    missing = [p.name for _, p in jobs if p.crc32 is None]
    if missing:
        raise ManifestError(f"{manifest.path}: placement {missing[0]} ({backend}) has no crc32: written by an older "
                            "shira-export; export the model again, or open it with verify='off'")

    def ok(job) -> bool:
        info, p = job
        return placement_crc32(info.name, info.shape, p, buffers[p.name],
                               None if p.quant is None else scales[p.name]) == p.crc32

    workers = max(1, min(len(jobs), threads or os.cpu_count() or 1))
    if workers > 1 and sum(buffers[p.name].nbytes for _, p in jobs) > 4 << 20:
        with ThreadPoolExecutor(workers, thread_name_prefix="shira-verify") as pool:
            results = list(pool.map(ok, jobs))
    else:
        results = [ok(j) for j in jobs]
    for (info, p), good in zip(jobs, results):
        if not good:
            raise ManifestError(f"{artifact_file}: weight {info.name} ({p.name}, {p.layout}) does not match the "
                                "checksum recorded at export: the file or its manifest entry was changed; export "
                                "the model again")


def verify_placements(mode: str, manifest, backend: str, buffers: dict[str, np.ndarray], artifact_file,
                      threads=None, prepacked: bool = False, only=None, scales=None) -> None:
    """What `ShiraSession(verify=mode)` checks: "fast" the CRC-32s, "full" those and the SHA-256s, "off" nothing.
    `only`: check just these placement names (`buffers` need hold no others). A quantized placement's SHA-256
    names the float weight it was quantized from, which the base no longer holds: its CRC-32 covers it."""
    if mode != "off":
        check_placements(manifest, backend, buffers, artifact_file, threads, prepacked, only, scales)
    if mode == "full":
        check_sha256(manifest, backend, buffers, artifact_file, prepacked, only)


def check_sha256(manifest, backend: str, buffers: dict[str, np.ndarray], artifact_file, prepacked: bool = False,
                 only=None) -> None:
    """The slow, thorough check: SHA-256 of every weight in torch layout against the manifest."""
    for info in manifest.tensors.values():
        for p in _placements(info, backend, prepacked, only):
            if p.quant is not None:
                continue
            torch_layout = p.to_torch_layout(buffers[p.name].reshape(-1).view(np.float32), info.shape)
            digest = hashlib.sha256(np.ascontiguousarray(torch_layout).tobytes()).hexdigest()
            if digest != (p.folded_sha256 or info.sha256):
                raise ManifestError(f"{artifact_file}: weight {info.name} ({p.name}) differs from the manifest's "
                                    "sha256: the file was modified")
