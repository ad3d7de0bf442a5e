"""ExecuTorch export: lower to XNNPACK once, then find where every patchable weight lives in the .pte.

Lowering uses two XNNPACK partitioners: one restricted to the linear configs with
`force_non_static_weights_for_f32_linear=True` (XNNPACK then reads linear weights from the program's constant
data at every execute instead of packing them at load), and a default one for everything else. The flag is
kept away from conv on purpose: with it, conv biases go non-static and the method fails to load.

Each targeted weight is then located in the program bytes by value, in every layout XNNPACK may store it
(as-is, transposed, channels-last), and probed on the real runtime: perturb it, execute, and see whether the
same loaded method sees the change (`reload: false`) or only a reloaded method does (`reload: true`, conv).
A weight whose bytes also hold another tensor (ExecuTorch merges identical constants) is refused.
"""
from __future__ import annotations

import contextlib
import io
from collections import defaultdict

import numpy as np
import torch
from shira_format import layouts

from ..model_source import ExportSubject

PROBE_SHIFT = 1.0


def lower(subject: ExportSubject, log, static: bool = False) -> tuple[bytes, bool, dict]:
    """-> (pte bytes, dynamic shapes kept?, lowering report).

    `static=True` lowers with XNNPACK's defaults only: every weight is packed at method load (the fastest
    inference, and nothing can be patched in a loaded method). The runtime patches a private copy of that
    program's bytes and loads it in the background to reach prepacked speed after a switch (two-phase switching).
    """
    from executorch.backends.xnnpack.partition.config import (
        AddmmConfig,
        LinearConfig,
        MMConfig,
    )
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
        XnnpackPartitioner,
    )
    from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower

    emod = subject.export_module()
    args = tuple(subject.example_inputs.values())

    def _lower(dynamic):
        dyn = subject.dynamic_shapes(min_size=2) if dynamic else None
        ep = torch.export.export(emod, args, dynamic_shapes=dyn)
        partitioners = [XnnpackPartitioner()]
        if not static:
            partitioners.insert(0, XnnpackPartitioner(configs=[LinearConfig, AddmmConfig, MMConfig],
                                                      force_non_static_weights_for_f32_linear=True))
        edge = to_edge_transform_and_lower(ep, partitioner=partitioners)
        return edge.to_executorch(ExecutorchBackendConfig())

    chatter = io.StringIO()
    dynamic = bool(subject.dynamic_axes)
    with contextlib.redirect_stdout(chatter):
        try:
            prog = _lower(dynamic)
        except Exception as e:  # noqa: BLE001 - torch.export/XNNPACK raise many types for dynamic shapes
            if not dynamic:
                raise
            log(f"  executorch: dynamic shapes not lowerable ({e.__class__.__name__}); using the sample's static shapes")
            dynamic = False
            prog = _lower(False)
    ops = [n for n in prog.exported_program().graph_module.graph.nodes if n.op == "call_function"]
    outside = sorted({getattr(n.target, "__name__", str(n.target)).split("::")[-1] for n in ops
                      if "delegate" not in str(n.target) and "getitem" not in str(n.target)})
    report = {"delegates": sum("delegate" in str(n.target) for n in ops), "ops_outside_delegates": outside}
    return bytes(prog.buffer), dynamic, report


def _find_all(haystack: bytes, needle: bytes) -> list[int]:
    hits, i = [], haystack.find(needle)
    while i != -1:
        hits.append(i)
        i = haystack.find(needle, i + 1)
    return hits


def locate_in_program(pte: bytes, model: torch.nn.Module, targets) -> tuple[dict, dict, list]:
    """-> (placements {pname: [(offset, layout, stored shape)]}, excluded {pname: why}, shared groups)."""
    holders = defaultdict(set)  # byte offset -> names of multi-dim tensors whose bytes sit there
    found = {}
    tensors = list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False))
    for name, t in tensors:
        if t.ndim < 2 or t.dtype != torch.float32:
            continue
        arr = t.detach().cpu().contiguous().numpy()
        hits, seen = [], {}
        for layout, form in layouts.forms(arr).items():
            for off in _find_all(pte, np.ascontiguousarray(form).tobytes()):
                if off in seen and layouts.same_map(seen[off], layout, arr.shape):
                    continue  # a 1x1 conv, a [N, 1] weight: one placement, and either layout is right
                seen.setdefault(off, layout)
                hits.append((off, layout, tuple(form.shape)))
                holders[off].add(name)
        found[name] = hits
    placements, excluded, shared = {}, {}, []
    for pname in targets:
        hits = found.get(pname, [])
        if not hits:
            excluded[pname] = "not found in the .pte (folded, fused or quantized by lowering)"
            continue
        others = sorted(set().union(*(holders[o] for o, _, _ in hits)) - {pname})
        if others or len({o for o, _, _ in hits}) < len(hits):
            excluded[pname] = f"the .pte stores it in one buffer with {others or 'itself in another layout'}"
            shared.append(sorted({pname, *others}))
            continue
        placements[pname] = hits
    return placements, excluded, shared


def probe_reload(pte: bytes, placements: dict, inputs: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """Perturb each placement in a live program: is the change seen by the loaded method, or only after reload?"""
    from shira_runtime.backends.executorch import PatchableProgram

    prog = PatchableProgram(bytes(bytearray(pte)))  # a private copy: the probe must not touch `pte`
    args = list(inputs.values())
    outputs = lambda: [o.clone() for o in prog.execute(args) if isinstance(o, torch.Tensor)]  # noqa: E731
    base = outputs()
    changed = lambda: any(not torch.equal(a, b) for a, b in zip(outputs(), base))  # noqa: E731
    rng = np.random.default_rng(0)
    reload, excluded = {}, {}
    for pname, hits in placements.items():
        for off, layout, shape in hits:
            view = prog.floats(off, int(np.prod(shape)))
            saved = view.copy()
            # every entry, by a random amount: the output moves unless the layer's whole input is zero (writing
            # a few entries, or one constant, can miss: a zero input feature, a LayerNorm'd input summing to 0)
            view += rng.standard_normal(view.size).astype(np.float32) * PROBE_SHIFT
            live = changed()
            after_reload = live
            if not live:
                prog.reload()
                after_reload = changed()
            view[:] = saved
            if not live:
                prog.reload()
            if not after_reload:
                excluded[pname] = f"a write at byte {off} changed no output, even after a method reload"
            reload[(pname, off)] = not live
    return reload, excluded
