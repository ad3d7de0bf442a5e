"""The built-in models' names, importable without torch: a misspelled name is refused before any heavy import."""
BUILTIN_NAMES = ("tiny-llama", "style-net")
