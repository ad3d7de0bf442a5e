"""Mute native libraries' start-up chatter on stderr, keeping every line that is not known noise.

ExecuTorch's cpuinfo prints five `[cpuinfo_utils.cpp:NN] ...` lines on x86 hosts at start-up and torchao two
`Failed to load ..._C_*.so` lines (its CUDA-only kernels) on import; they go to the process's file
descriptor 2 from C++, or through Python's sys.stderr (ExecuTorch's pybindings log there), so Python's
warnings and logging cannot filter them. Both are pointed at temporary buffers for the duration, and whatever
was written there that is not such a line is written back afterwards, so a real error is never swallowed.
"""
from __future__ import annotations

import io
import os
import re
import sys
import tempfile
from contextlib import contextmanager

NOISE = re.compile(
    rb"^\[cpuinfo_utils\.cpp:\d+\] "  # ExecuTorch's cpuinfo probing on x86
    rb"|^\[threadpool\.cpp:\d+\] Resetting threadpool"  # ExecuTorch, when a thread count is set
    rb"|^Failed to load \S*torchao/_C\S*\.so: Could not load this library"  # torchao's CUDA-only kernels
    rb"|^W\d{4} [\d:.]+ \d+ torch/utils/_pytree\.py:\d+\] <enum 'KernelPreference'>"  # torchao on torch 2.13
)


@contextmanager
def native_stderr_muted():
    """Both routes are filtered: file descriptor 2 (C/C++ writes) and Python's sys.stderr (ExecuTorch's
    pybindings log through it)."""
    py_saved, py_buf = sys.stderr, io.StringIO()
    sys.stderr = py_buf
    try:
        with _fd2_filtered():
            yield
    finally:
        sys.stderr = py_saved
        kept = [ln for ln in py_buf.getvalue().splitlines(keepends=True) if not NOISE.match(ln.encode())]
        if kept and py_saved is not None:
            py_saved.write("".join(kept))


@contextmanager
def _fd2_filtered():
    try:
        if sys.__stderr__ is not None:
            sys.__stderr__.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real fd 2 (embedded interpreters, some test runners)
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [line for line in tmp.read().splitlines(keepends=True) if not NOISE.match(line)]
            if kept:
                os.write(2, b"".join(kept))
