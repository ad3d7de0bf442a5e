"""Mute native libraries' start-up chatter on stderr, keeping every line that is not known noise.

ExecuTorch's cpuinfo prints five `[cpuinfo_utils.cpp:NN] ...` lines on x86 hosts at start-up and torchao two
`Failed to load ..._C_*.so` lines (its CUDA-only kernels) on import; they go to the process's file
descriptor 2, some from C++, so Python's warnings and logging cannot filter them. The descriptor is
pointed at a temporary file for the duration, and whatever was written there that is not such a line is
written back to stderr afterwards, so a real error message is never swallowed.
"""
from __future__ import annotations

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
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real fd 2 (embedded interpreters, some test runners)
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            try:
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [line for line in tmp.read().splitlines(keepends=True) if not NOISE.match(line)]
            if kept:
                os.write(2, b"".join(kept))

