"""Where baked bases live on a device.

A bake is valid for one base, one CPU and one ONNX Runtime version, so its directory is named by a key over
all three: <cache root>/<base dir name>-<key>/. The cache root is `cache_dir=`, else $SHIRA_CACHE_DIR, else
$XDG_CACHE_HOME/shira (~/.cache/shira). A bake is made in a temporary directory beside it and renamed into
place, so a reader sees a whole bake or none. Sessions never write it (they patch ORT's private mappings of
it), so any number of sessions share one. A base that cannot be baked leaves <key dir>.unbakeable (the
reason), so it is not retried at every load.
"""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

from shira_format.atomic import write_text
from shira_format.errors import ManifestError

from .layout import (BAKED_DATA, BAKED_MODEL, EXIT_CANNOT, EXIT_DAMAGED, EXIT_NO_ROOM, FORMAT, MAP_FILE,
                           BakeError)


def cache_root(cache_dir=None) -> Path:
    if cache_dir:
        return Path(cache_dir)
    if os.environ.get("SHIRA_CACHE_DIR"):
        return Path(os.environ["SHIRA_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "shira"


def hwcaps() -> tuple[int, int]:
    """AT_HWCAP and AT_HWCAP2 from the auxiliary vector: the features MLAS tests on ARM (dot product, i8mm,
    SVE), also where /proc/cpuinfo says less (emulators, some Android kernels). (0, 0) where there is none."""
    try:
        with open("/proc/self/auxv", "rb") as f:
            raw = f.read()
    except OSError:
        return 0, 0
    pairs = dict(struct.iter_unpack("<QQ", raw[: len(raw) // 16 * 16])) if sys.byteorder == "little" else {}
    return pairs.get(16, 0), pairs.get(26, 0)


def cpu_identity() -> str:
    """What MLAS chooses its kernels (hence its packing) by: the architecture and the CPU's feature flags."""
    text = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features", "model name", "CPU part")):
                    text += line
                    if line.startswith(("flags", "Features")):
                        break
    except OSError:
        text = platform.processor()
    cap, cap2 = hwcaps()
    return f"{platform.machine()}|{text.strip()}|hwcap {cap:x} {cap2:x}"


def bake_key(manifest) -> str:
    import onnxruntime as ort

    h = hashlib.sha256(f"shira-bake {FORMAT}|ort {ort.__version__}|{cpu_identity()}".encode())
    h.update(manifest.path.read_bytes())
    files = manifest.files_of("onnxruntime")
    for name in (files.prepacked, files.weights, "model.onnx.data", "model_prepacked.onnx.data"):
        path = manifest.file(name) if name else None
        if path is not None and path.exists():
            st = path.stat()
            h.update(f"|{name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def discard(bake_dir: Path) -> None:
    """Remove a damaged bake (the next acquire() bakes it again)."""
    stale = bake_dir.with_name(f".stale-{os.getpid()}-{bake_dir.name}")
    try:
        bake_dir.rename(stale)
    except OSError:
        return
    shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, someone else's
        return True
    return True


def sweep(root: Path) -> None:
    """Remove what killed bakes left: `.bake-<pid>-*` directories whose process is gone. A phone kills apps at
    will; a half bake must neither grow the cache nor be taken for a bake (it never is: only a whole one is
    renamed into place)."""
    for d in root.glob(".bake-*"):
        parts = d.name.split("-")
        if len(parts) >= 3 and parts[1].isdigit() and not _alive(int(parts[1])):
            shutil.rmtree(d, ignore_errors=True)


def _bake_into(base_dir: Path, root: Path, key_dir: Path, threads, log) -> Path:
    """Bake in a child process into a fresh temporary directory under root; returns it."""
    sweep(root)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".bake-{os.getpid()}-", dir=root))
    except OSError as e:
        raise BakeError(f"{root}: cannot write the bake cache: {e.strerror}") from None
    cmd = [sys.executable, "-m", "shira_runtime.inplace.bake", str(base_dir), str(tmp), str(threads or 0)]
    log(f"{base_dir}: baking ONNX Runtime's packed weights for this CPU (first load)")
    lines = []
    with subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as proc:
        for line in proc.stderr:  # progress as the child makes it (a bake takes seconds to minutes)
            line = line.rstrip("\n")
            if line.strip():
                lines.append(line)
            if not line.startswith("bake: "):
                log(f"  {line}")
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        reason = next((ln[6:] for ln in lines if ln.startswith("bake: ")), lines[-1] if lines else "")
        if proc.returncode < 0:  # killed: the last line it printed is progress, not the reason
            reason = (f"{base_dir}: the bake process was killed by signal {-proc.returncode}"
                      + (" (out of memory?)" if proc.returncode == -9 else ""))
        if proc.returncode == EXIT_DAMAGED:
            raise ManifestError(reason)
        if proc.returncode == EXIT_NO_ROOM:  # a full or unwritable disk: not a property of the base, not cached
            raise BakeError(reason)
        if proc.returncode == EXIT_CANNOT:  # a definite "cannot": remember it (where the cache can be written)
            try:
                write_text(_unbakeable(key_dir), reason + "\n")
            except OSError:
                pass
        raise BakeError(reason or f"the bake process exited with {proc.returncode}")
    return tmp


def _unbakeable(key_dir: Path) -> Path:
    return key_dir.with_name(key_dir.name + ".unbakeable")


def acquire(manifest, cache_dir=None, threads=None, log=lambda msg: None) -> Path:
    """The directory holding this base baked for this CPU and ORT; bakes it if there is none yet."""
    root = cache_root(cache_dir)
    key_dir = root / f"{manifest.root.name}-{bake_key(manifest)}"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BakeError(f"{root}: cannot create the bake cache: {e.strerror}") from None
    if _unbakeable(key_dir).exists():
        raise BakeError(_unbakeable(key_dir).read_text().strip())
    if all((key_dir / f).exists() for f in (BAKED_MODEL, BAKED_DATA, MAP_FILE)):
        return key_dir
    if key_dir.exists():  # not made by the rename below (by hand, or an older layout): start afresh
        discard(key_dir)
    tmp = _bake_into(manifest.root, root, key_dir, threads, log)
    try:
        tmp.rename(key_dir)
    except OSError:  # another process finished the same bake first: use theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return key_dir
