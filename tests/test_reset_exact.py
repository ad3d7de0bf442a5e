"""After any sequence of operations, reset() gives back the base weights byte for byte."""
import random

import numpy as np

from shira_runtime import ShiraSession
from shira_format.safetensors_file import read_file

from .helpers import snapshot


def test_200_random_steps_then_reset_is_bit_exact(built, backend):
    sess = ShiraSession(built.base_dir, backend=backend)
    base = snapshot(sess)
    names = list(built.blobs)
    for t in names:
        sess.load(built.blobs[t], name=t)
    rng = random.Random(7)
    counts = {}
    for _ in range(200):
        op = rng.choice(["switch", "fuse", "fuse", "reset", "reload"])
        counts[op] = counts.get(op, 0) + 1
        if op == "switch":
            sess.switch(rng.choice(names))
        elif op == "fuse":
            k = rng.randint(1, len(names))
            sess.fuse({n: rng.uniform(-2, 2) for n in rng.sample(names, k)})
        elif op == "reset":
            sess.reset()
            assert snapshot(sess) == base
        else:  # load a second copy under a new name and use it once
            extra = f"copy{rng.randint(0, 3)}"
            if extra not in sess.active:
                sess.load(built.blobs[rng.choice(names)], name=extra)
                sess.fuse({extra: rng.uniform(-1, 1), names[0]: 1.0})
    assert set(counts) == {"switch", "fuse", "reset", "reload"}  # every kind of operation was exercised
    sess.reset()
    assert snapshot(sess) == base
    assert sess.patcher.patched_entries == 0
    # and the base equals what export wrote to disk, in each artifact
    if backend == "onnxruntime":
        on_disk = read_file(built.base_dir / "weights.safetensors")
        assert sess.mode == "in-place"  # the engine's own packed copies in the baked file, every one of them
        buffers = sess.live_buffers()
        for name, copies in sess.engine.copies.items():
            for copy in copies:
                for key in copy.keys:  # every mapping that holds the copy
                    live = buffers[key][copy.positions(np.arange(copy.size))]
                    np.testing.assert_array_equal(live, on_disk.array(name).reshape(-1))
    else:
        assert sess.engine.program.memory.tobytes() == (built.base_dir / "model.pte").read_bytes()
