"""A phone kills apps at will and fills its disk: the bake cache must survive both (docs/INPLACE.md, "The cache").

A bake killed midway leaves nothing that grows the cache or is taken for a bake (the next open bakes again); a
read-only or full cache makes the session fall back with the reason and caches no verdict, so a later open with
room bakes. The filesystems are real: tmpfs mounts (read-only, and 300 kB), so these tests need root (CI is root).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    from shira_toolchain.export import export_model
    from shira_toolchain.model_source import resolve

    out = tmp_path_factory.mktemp("faults") / "style-net"
    export_model(resolve("style-net"), out, formats=("onnx",), log=lambda *a: None)
    return out


def _mounted(where: Path, options: str):
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()}")
    return where


def _in_place(base: Path, cache: Path):
    from shira_runtime import ShiraSession

    with ShiraSession(base, cache_dir=cache, bake="always") as s:
        x = s.manifest.sample_inputs()
        return s.mode, s.mode_reason, s.run(x)


def test_a_bake_killed_midway_is_swept_and_made_again(base, tmp_path):
    cache = tmp_path / "cache"
    code = ("import sys; from shira_format import manifest as m; from shira_runtime.inplace.cache import acquire; "
            f"acquire(m.load({str(base)!r}), {str(cache)!r})")
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    deadline = time.time() + 120
    while not list(cache.glob(".bake-*/baked.bin")) and time.time() < deadline:  # killed mid-bake
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the app and its bake process, as Android kills an app
    proc.wait()
    left = list(cache.glob(".bake-*"))
    assert left and not [d for d in cache.iterdir() if not d.name.startswith(".")], "killed before the bake began?"
    mode, why, _ = _in_place(base, cache)
    assert (mode, why) == ("in-place", None)
    assert not list(cache.glob(".bake-*")), "the killed bake's directory is still there"
    assert len([d for d in cache.iterdir()]) == 1  # one whole bake, nothing else


def test_a_read_only_cache_falls_back_with_the_reason(base, tmp_path):
    cache = _mounted(tmp_path / "ro", "ro,size=1m")
    try:
        mode, why, out = _in_place(base, cache)
    finally:
        subprocess.run(["umount", str(cache)], check=True)
    assert mode != "in-place" and "cannot write the bake cache" in why and "Read-only" in why, why
    assert np.isfinite(next(iter(out.values()))).all()


def test_a_full_disk_falls_back_and_a_later_open_bakes(base, tmp_path):
    cache = _mounted(tmp_path / "tiny", "size=300k")
    try:
        mode, why, _ = _in_place(base, cache)
        assert mode != "in-place" and "No space left on device" in why, why
        assert not list(cache.iterdir()), f"the failed bake left {list(cache.iterdir())}"  # no verdict, no half bake
    finally:
        subprocess.run(["umount", str(cache)], check=True)
    mode, why, _ = _in_place(base, cache)  # the same directory, now on the roomy disk beneath
    assert (mode, why) == ("in-place", None)
