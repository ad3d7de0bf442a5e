"""Text <-> token ids for `shira generate`: the base's tokenizer.json (Hugging Face `tokenizers`, no torch), or
bytes for a byte-level model (vocab 256, like the built-in tiny-llama)."""
from __future__ import annotations

from pathlib import Path


class TokenizerError(ValueError):
    pass


class ByteTokenizer:
    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")


class FileTokenizer:
    def __init__(self, path: Path):
        from tokenizers import Tokenizer

        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception
            raise TokenizerError(f"{path}: not a tokenizers file: {e}") from None

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids)


def load_tokenizer(base: Path, manifest):
    path = base / "tokenizer.json"
    if path.exists():
        return FileTokenizer(path)
    vocab = next((o["shape"][-1] for o in manifest.outputs if o["name"] == "logits"), None)
    if vocab == 256:
        return ByteTokenizer()
    raise TokenizerError(f"{base}: no tokenizer.json and the vocabulary ({vocab}) is not bytes; give --prompt-ids")
