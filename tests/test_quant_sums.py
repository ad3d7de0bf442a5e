"""The sums ONNX Runtime's ARM packers derive from quantized integers (shira_runtime.inplace.derived_sums), pinned to real
packed bytes: tests/vectors/arm64_packing/cortex_a76.npz holds the prepacked B of one MatMulNBits (K=128, N=64,
block 32, accuracy level 4) that onnxruntime 1.32's aarch64 wheel saved on an emulated Cortex-A76, with the
integers and scales it was made from. The layouts below are what that packer wrote (docs/INPLACE.md); the test
runs on any host, so a change to the formulas is caught without emulation (tests/test_arm64.py runs the whole
bake there)."""
from pathlib import Path

import numpy as np
import pytest

from shira_format.quant import Nibbles, Quant, entries
from shira_runtime.patcher import WeightPatcher
from shira_runtime.inplace.derived_sums import block_sums, match, stored_block_sums, sums

V = np.load(Path(__file__).parent / "vectors" / "arm64_packing" / "cortex_a76.npz")
N, K, BLOCK = 64, 128, 32


def test_kleidiai_int4_row_sums_and_signed_nibbles():
    region, u, s = V["int4_region"], V["int4_u"], V["int4_scales"]
    # rows in groups of 4; per block: 4 rows x 32 nibbles (k and k+16 share a byte), then 4 bf16 scales; after
    # the blocks, the 4 rows' float32 sums, then 4 float32 biases (zero)
    group = (K // BLOCK) * (4 * BLOCK // 2 + 8) + 32  # 320 bytes
    stored = np.stack([region[g * group + 288: g * group + 304].view(np.float32) for g in range(N // 4)]).reshape(-1)
    want = sums("row", block_sums(u.reshape(-1), N, K, BLOCK, 8), s)
    assert np.array_equal(want.view(np.uint32), stored.view(np.uint32))
    # the nibbles are u XOR 8 (u - 8 in two's complement): byte j of row 0's first block holds k=j and k=j+16
    nib = Nibbles(region, flip=8)
    assert np.array_equal(nib[np.arange(0, 8, 2)], u[0, 0:4]) and np.array_equal(nib[np.arange(1, 8, 2)], u[0, 16:20])
    packed = (u[:, 0::2] | (u[:, 1::2] << 4)).astype(np.uint8)  # as the export stores B: two entries a byte
    assert np.array_equal(stored_block_sums(packed, 4, N, K, BLOCK), block_sums(u.reshape(-1), N, K, BLOCK, 8))
    wrong = sums("row", block_sums(u.reshape(-1), N, K, BLOCK, 8), s * np.float32(1.001))
    assert not np.array_equal(wrong.view(np.uint32), stored.view(np.uint32))


def test_mlas_int8_block_sums():
    region, u, s = V["int8_region"], V["int8_u"], V["int8_scales"]
    # after the integers (8192 bytes) and the scales (1024): one float32 per row and block, rows in groups of
    # 16 ([N/16][blocks][16])
    stored = region[9216:10240].view(np.float32).reshape(N // 16, K // BLOCK, 16).transpose(0, 2, 1).reshape(-1)
    want = sums("block", block_sums(u.reshape(-1), N, K, BLOCK, 128), s)
    assert np.array_equal(want.view(np.uint32), stored.view(np.uint32))
    assert np.array_equal(stored_block_sums(u.astype(np.uint8), 8, N, K, BLOCK), block_sums(u.reshape(-1), N, K, BLOCK, 128))
    assert sums("block", np.zeros((1, 1), np.int32), np.ones((1, 1), np.float32)).view(np.uint32)[0] == 0  # +0.0


def test_match_places_every_sum_once_or_refuses():
    rng = np.random.default_rng(0)
    expected = rng.integers(0, 2**32, (3, 50), dtype=np.uint32)
    order = rng.permutation(50)
    words = expected[:, order]  # word i holds sum order[i]
    at = match("row", words, expected)
    assert np.array_equal(order[at], np.arange(50))
    words[1, 7] ^= 1  # one pass disagrees: not explained
    assert match("row", words, expected) is None
    twins = expected.copy()
    twins[:, 3] = twins[:, 4]  # two sums alike in every pass cannot be placed
    assert match("row", twins[:, order], twins) is None


@pytest.mark.parametrize("flip", [0, 8])
def test_patcher_writes_signed_nibbles_and_restores_them(flip):
    q = Quant(bits=4, block=32, scales=None, signed=bool(flip))
    u = np.arange(64, dtype=np.uint8) % 16
    buf = (u[0::2] | (u[1::2] << 4)) ^ np.uint8(flip * 0x11)  # stored nibble = u XOR flip
    base = buf.copy()
    patcher = WeightPatcher({"w": buf}, quant={"w": q})
    idx = np.array([1, 2, 40], dtype=np.int64)
    plans = patcher.plan({"w": [(idx, np.array([1.0, -2.0, 3.0], np.float32), 1.0, np.ones(3, np.float32))]})
    patcher.commit(plans)
    got = entries(buf, q)
    want = np.clip(u[idx].astype(int) + np.array([1, -2, 3]), 0, 15)
    assert np.array_equal(got[idx], want)
    others = np.setdiff1d(np.arange(64), idx)
    assert np.array_equal(got[others], u[others])  # neighbours in the same bytes untouched
    patcher.commit(patcher.plan({}))
    assert np.array_equal(buf, base)
