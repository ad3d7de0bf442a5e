"""Where baked bases live on a device, and who may write into them.

A bake is valid for one base, one CPU and one ONNX Runtime version, so its directory is named by a key over
all three: <cache root>/<base dir name>-<key>/slot-<i>/. The cache root is `cache_dir=`, else
$SHIRA_CACHE_DIR, else $XDG_CACHE_HOME/shira (~/.cache/shira).

A session patches its slot's data file in place, so a slot has one owner at a time: an exclusive `flock` on
slot/lock, held for the session's life (a second session of the same base, in this process or another, takes
or bakes the next slot). While owned, slot/dirty exists; a clean close restores the base values, flushes and
removes it. A slot found dirty and unlocked belonged to a process that died mid-session: it is baked again.
A base that cannot be baked leaves <key dir>/unbakeable (the reason), so it is not retried at every load.
"""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from shira_format.errors import ManifestError

from .bake import BAKED_DATA, BAKED_MODEL, EXIT_CANNOT, EXIT_DAMAGED, FORMAT, MAP_FILE, BakeError

try:
    import fcntl
except ImportError:  # Windows: no flock, no in-place route (the session falls back and says why)
    fcntl = None


def cache_root(cache_dir=None) -> Path:
    if cache_dir:
        return Path(cache_dir)
    if os.environ.get("SHIRA_CACHE_DIR"):
        return Path(os.environ["SHIRA_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "shira"


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
    return f"{platform.machine()}|{text.strip()}"


def bake_key(manifest) -> str:
    import onnxruntime as ort

    h = hashlib.sha256(f"shira-bake {FORMAT}|ort {ort.__version__}|{cpu_identity()}".encode())
    h.update(manifest.path.read_bytes())
    files = manifest.files_of("onnxruntime")
    for name in (files.prepacked, files.weights, "model_prepacked.onnx.data"):
        path = manifest.file(name) if name else None
        if path is not None and path.exists():
            st = path.stat()
            h.update(f"|{name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


class Slot:
    """One baked copy of a base, locked for one session. `release()` unlocks it (clean: removes the marker)."""

    def __init__(self, path: Path, lock_fd):
        self.path = path
        self._fd = lock_fd
        (path / "dirty").touch()

    def discard(self) -> None:
        """Give the slot up as damaged: left dirty, the next acquire() bakes it again."""
        self.release(clean=False)

    def release(self, clean: bool) -> None:
        if self._fd is None:
            return
        if clean:
            (self.path / "dirty").unlink(missing_ok=True)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


def _try_lock(slot: Path):
    fd = os.open(slot / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _bake_into(base_dir: Path, key_dir: Path, threads, log) -> Path:
    """Bake in a child process into a fresh temporary directory under key_dir; returns it."""
    tmp = Path(tempfile.mkdtemp(prefix=".bake-", dir=key_dir))
    cmd = [sys.executable, "-m", "shira_runtime.bake", str(base_dir), str(tmp), str(threads or 0)]
    log(f"{base_dir}: baking ONNX Runtime's packed weights for this CPU (first load)")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in proc.stderr.splitlines():
        if not line.startswith("bake: "):
            log(f"  {line}")
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        reason = next((ln[6:] for ln in lines if ln.startswith("bake: ")), lines[-1] if lines else "")
        if proc.returncode == EXIT_DAMAGED:
            raise ManifestError(reason)
        if proc.returncode == EXIT_CANNOT:  # a definite "cannot": remember it
            (key_dir / "unbakeable").write_text(reason + "\n")
        raise BakeError(reason or f"the bake process exited with {proc.returncode}")
    return tmp


def acquire(manifest, cache_dir=None, threads=None, log=lambda msg: None) -> Slot:
    """A locked, clean slot holding this base baked for this CPU and ORT; bakes one if none is free."""
    if fcntl is None:
        raise BakeError("this platform has no flock; in-place patching needs it")
    key_dir = cache_root(cache_dir) / f"{manifest.root.name}-{bake_key(manifest)}"
    try:
        key_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BakeError(f"{key_dir}: cannot create the bake cache: {e.strerror}") from None
    if (key_dir / "unbakeable").exists():
        raise BakeError((key_dir / "unbakeable").read_text().strip())
    i = 0
    while True:
        slot = key_dir / f"slot-{i}"
        if slot.is_dir():
            fd = _try_lock(slot)
            if fd is None:  # another session owns it
                i += 1
                continue
            if not (slot / "dirty").exists() and all((slot / f).exists() for f in (BAKED_MODEL, BAKED_DATA, MAP_FILE)):
                return Slot(slot, fd)
            # left dirty by a process that died while patching it: bake it again
            log(f"{slot}: left patched by a session that did not close; baking it again")
            stale = slot.with_name(f".stale-{os.getpid()}-{i}")
            slot.rename(stale)
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            shutil.rmtree(stale, ignore_errors=True)
            continue
        tmp = _bake_into(manifest.root, key_dir, threads, log)
        try:
            tmp.rename(slot)
        except OSError:  # another process finished slot-i first: try again from it
            shutil.rmtree(tmp, ignore_errors=True)
            continue
        fd = _try_lock(slot)
        if fd is None:
            i += 1
            continue
        return Slot(slot, fd)
