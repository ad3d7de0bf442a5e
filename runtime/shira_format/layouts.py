"""Layouts: how an engine stores a torch weight, both ways (spec: docs/MANIFEST.md, "Layouts").

Adapters are written in torch coordinates (row-major flat indices into the torch-shaped weight); engines may
store a weight transposed or channels-last. Forward maps go torch -> stored, inverse maps stored -> torch.
  identity       same row-major order as torch
  transpose2d    W viewed as [O, rest] and stored transposed: a 2-D weight as W.T (ONNX MatMul's B), a conv
                 kernel [O, I, kh, kw] as [I*kh*kw, O] (XNNPACK's depthwise [C, 1, kh, kw] -> [1, kh, kw, C])
  channels_last  dim 1 moved last, e.g. a conv kernel [O, I, kh, kw] stored as [O, kh, kw, I] (XNNPACK)
"""
from __future__ import annotations

import numpy as np

LAYOUTS = ("identity", "transpose2d", "channels_last")


def _prod(dims) -> int:
    """Exact product of Python ints (a hostile manifest's dims can overflow int64)."""
    n = 1
    for d in dims:
        n *= int(d)
    return n


def stored_shape(layout: str, torch_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape a weight of `torch_shape` has when stored in `layout`."""
    s = tuple(torch_shape)
    if layout == "transpose2d":  # of the [R, C] view, C = product of the other dims
        return (_prod(s[1:]), s[0])
    if layout == "channels_last":
        return (s[0], *s[2:], s[1])
    return s


def fits(layout: str, stored: tuple[int, ...], torch_shape: tuple[int, ...]) -> bool:
    """Whether a buffer of shape `stored` can hold a torch weight of `torch_shape` in `layout`."""
    if _prod(stored) != _prod(torch_shape) or (layout == "channels_last" and len(torch_shape) < 3):
        return False
    return layout == "identity" or tuple(stored) == stored_shape(layout, torch_shape)


def forms(arr: np.ndarray) -> dict[str, np.ndarray]:
    """Every layout a torch weight may be stored in -> that stored form (views): what an exporter searches for.
    Channels move only in 3-D+ weights; 1-D weights have one form."""
    names = ("identity", "transpose2d") if arr.ndim == 2 else ("identity", "channels_last", "transpose2d") \
        if arr.ndim >= 3 else ("identity",)
    return {name: to_stored(name, arr) for name in names}


def same_map(a: str, b: str, torch_shape: tuple[int, ...]) -> bool:
    """Whether two layouts put every entry of a weight of `torch_shape` at the same place (a 1x1 conv in
    identity and channels_last, a [N, 1] weight and its transpose): then either describes the buffer. Equal
    bytes alone do not show it (a constant weight looks the same in every layout)."""
    flat = np.arange(_prod(torch_shape), dtype=np.int64)
    return bool(np.array_equal(to_stored_indices(a, flat, torch_shape), to_stored_indices(b, flat, torch_shape)))


def to_stored(layout: str, arr: np.ndarray) -> np.ndarray:
    """Forward on arrays: a torch-layout weight -> its stored form (a view; np.ascontiguousarray for bytes)."""
    if layout == "transpose2d":
        return arr.reshape(arr.shape[0], -1).T
    if layout == "channels_last":
        return np.moveaxis(arr, 1, -1)
    return arr


def to_torch(layout: str, buf: np.ndarray, stored: tuple[int, ...], torch_shape: tuple[int, ...]) -> np.ndarray:
    """Inverse on arrays: a stored buffer -> a view of it in torch layout (writes through)."""
    arr = buf.reshape(stored)
    if layout == "transpose2d":
        return arr.T if len(torch_shape) == 2 else arr.T.reshape(torch_shape)  # splits a dim: still a view
    if layout == "channels_last":
        return np.moveaxis(arr, -1, 1)
    return arr.reshape(torch_shape)


def to_stored_indices(layout: str, flat: np.ndarray, torch_shape: tuple[int, ...]) -> np.ndarray:
    """Forward on indices: torch row-major flat indices -> flat indices into the stored buffer."""
    if layout == "identity":
        return flat
    if layout == "transpose2d":
        rows, cols = torch_shape[0], int(np.prod(torch_shape[1:]))
        return (flat % cols) * rows + flat // cols
    c, rest = torch_shape[1], int(np.prod(torch_shape[2:]))  # channels_last
    outer, inner = flat // (c * rest), flat % (c * rest)
    return outer * (c * rest) + (inner % rest) * c + inner // rest


def to_torch_indices(layout: str, flat: np.ndarray, torch_shape: tuple[int, ...]) -> np.ndarray:
    """Inverse on indices: flat indices into the stored buffer -> torch row-major flat indices."""
    if layout == "identity":
        return flat
    if layout == "transpose2d":
        rows, cols = torch_shape[0], int(np.prod(torch_shape[1:]))
        return (flat % rows) * cols + flat // rows
    c, rest = torch_shape[1], int(np.prod(torch_shape[2:]))  # channels_last: stored [outer, rest, c]
    outer, inner = flat // (c * rest), flat % (c * rest)
    return outer * (c * rest) + (inner % c) * rest + inner // c


def stable_order(keys: np.ndarray) -> np.ndarray:
    """np.argsort(keys, kind="stable") for non-negative integers, as a radix sort in 16-bit digits (numpy sorts
    uint16 keys by radix): 5-10x faster on the 10^5-10^6 positions one adapter writes into a weight, which are
    sorted again at every load and every switch to an adapter that is no longer decoded."""
    keys = np.asarray(keys)
    if keys.size < 4096 or keys.dtype.kind not in "iu" or (keys.dtype.kind == "i" and keys.min() < 0):
        return np.argsort(keys, kind="stable")
    top = int(keys.max())
    order = np.argsort(keys.astype(np.uint16), kind="stable")  # the lowest 16 bits (integer casts wrap)
    shift = 16
    while top >> shift:  # then each higher digit; each pass is stable, so equal digits keep the order so far
        order = order[np.argsort((keys[order] >> shift).astype(np.uint16), kind="stable")]
        shift += 16
    return order


def sorted_for(layout: str, indices: np.ndarray, values: np.ndarray,
               torch_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """A sparse delta in torch coordinates -> (stored indices ascending, values in the same order): the form a
    patcher scatters, in memory order."""
    idx = to_stored_indices(layout, indices, torch_shape)
    if layout == "identity":
        return idx, values
    order = stable_order(idx)
    return idx[order], values[order]
