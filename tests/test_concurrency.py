"""Inference in one thread while another switches: every output is one of the valid states, never a mix."""
import threading

import numpy as np
import pytest

from shira_runtime import ShiraSession


@pytest.mark.parametrize("mode", ["patchable", "two-phase"])
def test_no_half_patched_outputs_under_concurrent_switching(llama, backend, mode):
    """With "two-phase", prepacked engines are built and swapped in while runs and switches go on."""
    sess = ShiraSession(llama.base_dir, backend=backend, threads=1, mode=mode)
    names = list(llama.blobs)
    for t in names:
        sess.load(llama.blobs[t], name=t)
    states = [{}, {names[0]: 1.0}, {names[1]: 1.0}, {names[0]: 1.0, names[1]: 1.0}]
    valid = []
    for st in states:
        sess.fuse(st)
        sess.wait_full_speed()
        valid.append(sess.run(llama.inputs)["logits"])
    # the states must be far apart for "equals one of them" to mean anything
    gaps = [np.max(np.abs(a - b)) for i, a in enumerate(valid) for b in valid[i + 1:]]
    assert min(gaps) > 1e-2

    stop = threading.Event()
    seen, bad, switches = [], [], [0]

    def infer():
        while not stop.is_set():
            out = sess.run(llama.inputs)["logits"]
            errs = [float(np.max(np.abs(out - v))) for v in valid]
            (seen if min(errs) < 1e-4 else bad).append(int(np.argmin(errs)))  # engines differ by ~1e-6

    def switch():
        for i in range(300):
            sess.fuse(states[i % len(states)])
            switches[0] += 1
        stop.set()

    readers = [threading.Thread(target=infer) for _ in range(2)]
    writer = threading.Thread(target=switch)
    for t in readers:
        t.start()
    writer.start()
    writer.join(timeout=120)
    stop.set()
    for t in readers:
        t.join(timeout=30)
    assert switches[0] == 300
    assert not bad, f"{len(bad)} outputs matched no valid state"
    assert len(seen) > 20 and len(set(seen)) >= 2, f"too little overlap to test anything: {len(seen)} runs"
    if mode == "two-phase":
        assert sess.wait_full_speed() and sess.rebuilder.history, sess.rebuilder.last_error
        installs = len(sess.rebuilder.history)
        assert installs >= 2, f"only {installs} prepacked engine(s) were swapped in during the run"
