"""SHiRA device runtime: numpy + the inference engine only (never torch, never the host toolchain).

Only the ExecuTorch backend imports torch, lazily, because ExecuTorch's Python bindings need it.
"""
from shira_format.adapter import Adapter, read_adapter
from shira_format.errors import AdapterError, ManifestError, ShiraError

from .session import ShiraSession, open_base

__all__ = ["Adapter", "AdapterError", "ManifestError", "ShiraError", "ShiraSession", "open_base", "read_adapter"]
__version__ = "0.2.0"
