"""Errors the runtime raises. Every message is one line that names the file (or adapter) and the problem."""


class ShiraError(Exception):
    """Base class of everything the runtime refuses."""


class ManifestError(ShiraError):
    """The exported base directory is missing, inconsistent, or of an unknown format version."""


class AdapterError(ShiraError, ValueError):
    """An adapter blob was refused. Raised before anything is patched: the session's weights are untouched."""
