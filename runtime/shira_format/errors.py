"""Errors the runtime raises. Every message is one line that names the file (or adapter) and the problem."""


def first_line(e: BaseException, limit: int = 300) -> str:
    """An engine's exception as one line: ORT and ExecuTorch raise their own types with multi-line text."""
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:limit]


def printable(text: str) -> str:
    """Control characters (a hostile file's field may hold newlines) shown as `?`, so a message stays one line."""
    return "".join("?" if ord(ch) < 0x20 or ord(ch) == 0x7F else ch for ch in text)


class ShiraError(Exception):
    """Base class of everything the runtime refuses."""


class ManifestError(ShiraError):
    """The exported base directory is missing, inconsistent, or of an unknown format version."""


class AdapterError(ShiraError, ValueError):
    """An adapter blob was refused. Raised before anything is patched: the session's weights are untouched."""
