"""Token generation on a patched session, with the KV cache the base was exported with (`--kv-cache`).

The protocol is the manifest's `generation` entry (docs/MANIFEST.md, "Generation"): the prompt runs against a
one-slot cache of zeros (slot 0 is always masked), then every step feeds one token and the previous step's
`present.*` outputs back as `past.*`. Numpy only, like the rest of the runtime: sampling is greedy (top_k 0 or
1) or top-k with a temperature from a seeded generator, so a run is reproducible.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
from shira_format.errors import ShiraError


@dataclass
class Generation:
    tokens: list[int]  # the new tokens, not the prompt
    prompt_tokens: int
    prompt_s: float  # the prompt's run (prefill), to the first new token
    decode_s: float  # every later step

    @property
    def tokens_per_s(self) -> float:
        """Decode speed: new tokens after the first, per second of decoding."""
        return (len(self.tokens) - 1) / self.decode_s if len(self.tokens) > 1 and self.decode_s > 0 else 0.0


def pick(logits: np.ndarray, top_k: int, temperature: float, rng: np.random.Generator) -> int:
    """The next token from one row of logits: argmax, or a sample among the top_k."""
    if top_k <= 1:
        return int(np.argmax(logits))
    k = min(top_k, logits.size)
    top = np.argpartition(logits, logits.size - k)[logits.size - k:]
    z = logits[top].astype(np.float64) / max(temperature, 1e-6)
    p = np.exp(z - z.max())
    return int(top[rng.choice(k, p=p / p.sum())])


def generate(session, prompt: list[int], max_new_tokens: int = 32, top_k: int = 0, temperature: float = 1.0,
             seed: int = 0, stop: int | None = None, on_token: Callable[[int], None] | None = None) -> Generation:
    """Generate up to `max_new_tokens` after `prompt` (token ids) with whatever adapters are active now."""
    gen = session.manifest.generation
    if gen is None:
        raise ShiraError(f"{session.manifest.root}: exported without its KV cache; export it with "
                         "`shira-export model ... --kv-cache` to generate")
    if not prompt:
        raise ShiraError("the prompt is empty: give at least one token")
    vocab = next((o["shape"][-1] for o in session.manifest.outputs if o["name"] == "logits"), None)
    bad = [t for t in prompt if not (isinstance(vocab, int) and 0 <= t < vocab)] if isinstance(vocab, int) else []
    if bad:  # ONNX Runtime's Gather would refuse it in a multi-line log message
        raise ShiraError(f"token id {bad[0]} is outside the vocabulary (0..{vocab - 1})")
    if len(prompt) + max_new_tokens > gen["max_positions"]:
        raise ShiraError(f"{len(prompt)} prompt + {max_new_tokens} new tokens exceed the model's "
                         f"{gen['max_positions']} positions")
    names = [(gen["past"].format(layer=i, kv=kv), gen["present"].format(layer=i, kv=kv))
             for i in range(gen["layers"]) for kv in ("key", "value")]
    zeros = np.zeros((1, gen["kv_heads"], 1, gen["head_dim"]), np.float32)
    feeds = {past: zeros for past, _ in names}
    rng = np.random.default_rng(seed)
    tokens: list[int] = []
    t0 = time.perf_counter()
    step = np.asarray([prompt], dtype=np.int64)
    prompt_s = 0.0
    for i in range(max_new_tokens):
        out = session.run({"input_ids": step, **feeds})
        tok = pick(out["logits"][0, -1], top_k, temperature, rng)
        tokens.append(tok)
        if i == 0:
            prompt_s = time.perf_counter() - t0
        if on_token is not None:
            on_token(tok)
        if tok == stop:
            break
        feeds = {past: out[present] for past, present in names}
        step = np.asarray([[tok]], dtype=np.int64)
    return Generation(tokens, len(prompt), prompt_s, time.perf_counter() - t0 - prompt_s)
