"""Text for the language tasks: docstrings that ship with Python, and tasks named by a prefix in the prompt.

Corpus: the docstrings of a fixed list of standard-library modules (and of their public functions and
classes), so nothing is downloaded. Modules are split by name into training and held-out sets.

Tasks: a prompt `<P>:<snippet>|` asks for a transformed copy of the snippet after the bar:
  upper    `U:` the snippet in capitals
  reverse  `R:` the snippet backwards
  vowels   `V:` the snippet without vowels
and 13 more of the same kind (PROMPTS below), so that fusing 10-20 adapters can be measured on one model.
Because each task has its own prefix, one model can serve all of them: fusing task adapters is judged per
task, by the character accuracy of the answer (teacher forced) on held-out snippets.
"""
from __future__ import annotations

import importlib
import inspect
import re
import zlib
from functools import lru_cache

import torch

MODULES = ("abc argparse ast base64 bisect calendar codecs collections contextlib copy csv dataclasses datetime "
           "decimal difflib dis email enum fnmatch fractions functools gettext glob hashlib heapq hmac html "
           "http.client inspect io itertools json locale logging math operator pathlib pickle pprint queue random "
           "re shutil socket sqlite3 statistics string struct subprocess tarfile tempfile textwrap threading time "
           "timeit traceback typing unittest urllib.parse uuid warnings zipfile").split()
def _shift(s: str, k: int) -> str:
    return "".join(chr((ord(c) - 97 + k) % 26 + 97) if "a" <= c <= "z" else c for c in s)


PROMPTS = {  # task -> (prefix, answer of a lowercase snippet); the first three are the shipped demo's
    "upper": ("U", str.upper), "reverse": ("R", lambda s: s[::-1]),
    "vowels": ("V", lambda s: re.sub(r"[aeiouAEIOU]", "", s)),
    "double": ("D", lambda s: "".join(c + c for c in s)), "rot13": ("O", lambda s: _shift(s, 13)),
    "shift": ("S", lambda s: _shift(s, 1)), "sort": ("T", lambda s: "".join(sorted(s))),
    "nospace": ("N", lambda s: s.replace(" ", "")), "dash": ("H", lambda s: s.replace(" ", "-")),
    "title": ("I", str.title), "initials": ("F", lambda s: "".join(w[0] for w in s.split())),
    "lasts": ("L", lambda s: "".join(w[-1] for w in s.split())),
    "pairs": ("P", lambda s: "".join(s[i + 1 : i + 2] + s[i] for i in range(0, len(s), 2))),
    "dedup": ("E", lambda s: "".join(dict.fromkeys(s))), "atbash": ("A", lambda s: "".join(
        chr(219 - ord(c)) if "a" <= c <= "z" else c for c in s)),
    "stars": ("X", lambda s: re.sub(r"[aeiou]", "*", s)),
}
SNIPPET = 16


def _held_out(module: str) -> bool:
    return zlib.crc32(module.encode()) % 5 == 0


@lru_cache(maxsize=2)
def corpus(held_out: bool = False) -> str:
    parts = []
    for name in MODULES:
        if _held_out(name) != held_out:
            continue
        mod = importlib.import_module(name)
        parts.append(inspect.getdoc(mod) or "")
        for attr in sorted(dir(mod)):
            if not attr.startswith("_"):
                doc = inspect.getdoc(getattr(mod, attr, None))
                if doc and getattr(getattr(mod, attr), "__module__", None) == name:
                    parts.append(doc)
    text = "\n\n".join(p for p in parts if p)
    return text.encode("ascii", "ignore").decode("ascii")


@lru_cache(maxsize=2)
def corpus_ids(held_out: bool = False) -> torch.Tensor:
    return torch.frombuffer(bytearray(corpus(held_out).encode("ascii")), dtype=torch.uint8).long()


@lru_cache(maxsize=2)
def _lower_text(held_out: bool) -> str:
    return " ".join(w.lower() for w in re.findall(r"[A-Za-z]+(?: [A-Za-z]+)*", corpus(held_out)))


def text_batch(g: torch.Generator, batch: int = 16, window: int = 96, held_out: bool = False) -> dict:
    data = corpus_ids(held_out)
    starts = torch.randint(0, data.numel() - window - 1, (batch,), generator=g)
    ids = torch.stack([data[s : s + window] for s in starts])
    return {"input_ids": ids, "labels": ids}


def snippets(g: torch.Generator, n: int, held_out: bool) -> list[str]:
    text = _lower_text(held_out)
    starts = torch.randint(0, len(text) - SNIPPET, (n,), generator=g)
    return [text[s : s + SNIPPET] for s in starts.tolist()]


def task_batch(task: str, g: torch.Generator, batch: int = 16, held_out: bool = False) -> dict:
    """Prompt + answer, loss (labels) on the answer only; all rows the same length."""
    prefix, fn = PROMPTS[task]
    rows, labels = [], []
    for s in snippets(g, batch, held_out):
        prompt, answer = f"{prefix}:{s}|", fn(s)
        answer = (answer + "." * SNIPPET)[:SNIPPET]  # pad to a fixed length with '.'
        ids = list((prompt + answer).encode("ascii"))
        rows.append(ids)
        labels.append([-100] * len(prompt) + ids[len(prompt):])
    return {"input_ids": torch.tensor(rows), "labels": torch.tensor(labels)}


def answer_accuracy(model, task: str, n: int = 64, seed: int = 7) -> float:
    """Teacher-forced accuracy of the answer characters on held-out snippets."""
    b = task_batch(task, torch.Generator().manual_seed(seed), n, held_out=True)
    with torch.no_grad():
        logits = model(input_ids=b["input_ids"], use_cache=False).logits
    pred = logits[:, :-1].argmax(-1)
    gold = b["labels"][:, 1:]
    mask = gold != -100
    return float((pred[mask] == gold[mask]).float().mean())
