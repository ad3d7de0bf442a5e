"""Built-in model definitions. Nothing here downloads anything: every model is defined in code.

A built-in model is a `ModelSpec`: how to build the torch module, what sample input drives its export and
tests, and which of its weights adapters target by default.
"""
from .names import BUILTIN_NAMES

__all__ = ["BUILTIN", "BUILTIN_NAMES", "ModelSpec", "get_spec"]


def __getattr__(name: str):
    """The specs import torch: only when asked for (the CLI checks a name against BUILTIN_NAMES first)."""
    if name in ("BUILTIN", "ModelSpec", "get_spec"):
        from . import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'shira_models' has no attribute {name!r}")
