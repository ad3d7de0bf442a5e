"""Built-in model definitions. Nothing here downloads anything: every model is defined in code.

A built-in model is a `ModelSpec`: how to build the torch module, what sample input drives its export and
tests, and which of its weights adapters target by default.
"""
from .registry import BUILTIN, ModelSpec, get_spec

__all__ = ["BUILTIN", "ModelSpec", "get_spec"]
