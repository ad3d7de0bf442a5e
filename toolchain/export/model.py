"""`shira-export model`: export a base model ONCE, with a manifest that says where every patchable weight lives.

Pipeline: fold BatchNorm into the weights before it (fold.py, recorded per placement) -> torch.onnx.export
(dynamo) -> locate each targeted torch weight among the graph's initializers by
value (as-is, or transposed: the exporter pre-transposes MatMul weights and renames them `val_N`) -> turn
those initializers into graph inputs whose bytes go to weights.safetensors (the runtime owns and patches
them) -> keep every other weight embedded, so ORT prepacks it -> verify against torch -> write the manifest.

A weight whose bytes the exporter merged with another tensor (tied weights, identical all-zero tensors) is
excluded: patching one buffer would silently patch both. Excluded weights are listed in the manifest with
the reason, and packing an adapter that touches one fails with that reason.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shutil
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from shira_format import layouts
from shira_format import manifest as manifest_format

from ..model_source import ExportSubject
from .fold import fold_batchnorm

PATCHABLE_KINDS = {torch.nn.Linear: "linear", torch.nn.Conv1d: "conv1d", torch.nn.Conv2d: "conv2d"}
ONNX_EXTERNAL_DATA_ABOVE = 1_800_000_000  # protobuf cannot hold 2 GB in one message


class ExportError(RuntimeError):
    pass


def tensor_sha256(t: torch.Tensor | np.ndarray) -> str:
    arr = t.detach().cpu().contiguous().numpy() if isinstance(t, torch.Tensor) else np.ascontiguousarray(t)
    return hashlib.sha256(arr.tobytes()).hexdigest()


def base_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over every tensor of the state dict (name, dtype, shape, bytes), sorted by name."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        arr = t.detach().cpu().contiguous()
        h.update(f"{name}|{arr.dtype}|{list(arr.shape)}\n".encode())
        h.update(arr.reshape(-1).view(torch.uint8).numpy().tobytes() if arr.numel() else b"")  # any rank
    return "sha256:" + h.hexdigest()


def _module_kind(mod: torch.nn.Module) -> str | None:
    kind = PATCHABLE_KINDS.get(type(mod))
    if kind is None and type(mod).__name__ == "Conv1D" and type(mod).__module__.startswith("transformers"):
        kind = "linear-fan-in-fan-out"  # GPT-2 style Conv1D: a Linear whose weight is stored [in, out]
    return kind


def check_targets(targets: str | None) -> None:
    """Refuse a --targets value that is not a regular expression, before any work starts."""
    if targets is None:
        return
    try:
        re.compile(targets)
    except re.error as e:
        raise ExportError(f"--targets {targets!r}: not a valid regular expression: {e}") from None


def patchable_weights(model: torch.nn.Module, targets: str | None) -> dict[str, tuple[str, str]]:
    """torch parameter name -> (module name, kind) for Linear/Conv weights matching the `targets` regex."""
    check_targets(targets)
    out = {}
    for mname, mod in model.named_modules():
        kind = _module_kind(mod)
        pname = f"{mname}.weight"
        if kind and (targets is None or re.search(targets, pname)):
            out[pname] = (mname, kind)
    return out


def _torch_export(subject: ExportSubject) -> onnx.ModelProto:
    emod = subject.export_module()
    names = list(subject.example_inputs)
    args = tuple(subject.example_inputs.values())
    dyn = subject.dynamic_shapes()
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter):
            prog = torch.onnx.export(emod, args, dynamo=True, input_names=names, output_names=subject.output_names,
                                     dynamic_shapes=dyn, verbose=False)
    except Exception as e:
        raise ExportError(f"torch.onnx.export failed: {exporter_cause(e)}") from e
    return prog.model_proto


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def exporter_cause(e: BaseException, limit: int = 600) -> str:
    """The part of an exporter's error that says why: torch.onnx wraps the real error in a page of advice whose
    first line says nothing; the cause is its "Exception summary" (else the innermost error's last lines)."""
    while e.__cause__ is not None and not str(e).count("## Exception summary"):
        e = e.__cause__
    text = _ANSI.sub("", str(e))
    if "## Exception summary" in text:
        body = text.split("## Exception summary", 1)[1].strip().split("\n\n")[0]
    else:
        body = "\n".join([ln for ln in text.splitlines() if ln.strip()][-3:])
    body = " ".join(ln.strip() for ln in body.splitlines() if ln.strip())
    name = type(e).__name__
    return f"{name}: {body[:limit]}" + ("..." if len(body) > limit else "")


def _value_key(arr: np.ndarray) -> tuple:
    return arr.shape, arr.dtype.str, hashlib.sha1(np.ascontiguousarray(arr).tobytes()).digest()


def locate_weights(proto: onnx.ModelProto, model: torch.nn.Module, targets: dict[str, tuple[str, str]]):
    """Find each target's initializer(s) by value. Returns (placements, excluded, shared_groups)."""
    init_arrays = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    inits_by_key = defaultdict(list)
    for name, arr in init_arrays.items():
        inits_by_key[_value_key(arr)].append(name)

    # every tensor of the model, by value, in both orientations: which torch tensors each initializer holds
    holders = defaultdict(set)  # initializer -> torch tensor names whose value it equals
    by_storage = defaultdict(list)
    for name, t in list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False)):
        by_storage[(t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))].append(name)
        arr = t.detach().cpu().contiguous().numpy()
        for key in {_value_key(arr), _value_key(arr.T)} if arr.ndim == 2 else {_value_key(arr)}:
            for init in inits_by_key.get(key, ()):
                holders[init].add(name)
    tied = {n: names for names in by_storage.values() if len(names) > 1 for n in names}

    placements, excluded, shared = {}, {}, []
    params = dict(model.named_parameters(remove_duplicate=False))
    for pname in targets:
        w = params[pname].detach().cpu().contiguous().numpy()
        if pname in tied:
            excluded[pname] = f"shares storage with {sorted(set(tied[pname]) - {pname})} in torch (tied weights)"
            shared.append(sorted(tied[pname]))
            continue
        found = [(n, "identity") for n in inits_by_key.get(_value_key(w), ())]
        if w.ndim == 2:  # an initializer equal in both layouts is one placement only where the maps agree
            found += [(n, "transpose2d") for n in inits_by_key.get(_value_key(w.T), ())
                      if (n, "identity") not in found or not layouts.same_map("identity", "transpose2d", w.shape)]
        if not found:
            excluded[pname] = "not found as an initializer of the exported graph (folded or fused by the exporter)"
            continue
        others = sorted(set().union(*(holders[n] for n, _ in found)) - {pname})
        if others or len({n for n, _ in found}) < len(found):
            excluded[pname] = f"the exporter stores it in one buffer with {others or 'itself transposed'}"
            shared.append(sorted({pname, *others}))
            continue
        placements[pname] = [(n, layout, tuple(init_arrays[n].shape)) for n, layout in found]
    return placements, excluded, shared, init_arrays


def weight_reach(subject: ExportSubject, names: list[str]) -> dict[str, str]:
    """For each of `names`: "unused" if no exported output depends on it (no gradient: exporters drop it, so it is
    "not found"), "zero-gradient" if the outputs depend on it but not on the sample (a probe write changes
    nothing), else "reached". Saying which spares the user a hunt."""
    if not names:
        return {}
    params = dict(subject.model.named_parameters())
    chosen = [params[n] for n in names]
    was = [p.requires_grad for p in chosen]
    try:
        for p in chosen:
            p.requires_grad_(True)
        with torch.enable_grad():
            out = subject.export_module()(*subject.example_inputs.values())
            outs = [o for o in (out if isinstance(out, tuple) else (out,)) if o.is_floating_point() and o.requires_grad]
            if not outs:
                return dict.fromkeys(names, "unused")
            grads = torch.autograd.grad([o.sum() for o in outs], chosen, allow_unused=True)
    finally:
        for p, w in zip(chosen, was):
            p.requires_grad_(w)
    return {n: "unused" if g is None else "zero-gradient" if not torch.any(g != 0) else "reached"
            for n, g in zip(names, grads)}


def _to_graph_inputs(proto: onnx.ModelProto, names: set[str]) -> None:
    keep = [i for i in proto.graph.initializer if i.name not in names]
    moved = [i for i in proto.graph.initializer if i.name in names]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(keep)
    existing = {i.name for i in proto.graph.input}
    for init in moved:
        if init.name not in existing:
            proto.graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))


def _io_spec(values, skip=frozenset()) -> list[dict]:
    out = []
    for v in values:
        if v.name in skip:
            continue
        tt = v.type.tensor_type
        shape = [d.dim_param if d.dim_param else d.dim_value for d in tt.shape.dim]
        out.append({"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name, "shape": shape})
    return out


def tool_versions() -> dict:
    import onnxruntime
    import transformers

    from .. import __version__

    try:
        import peft

        peft_v = peft.__version__
    except ImportError:
        peft_v = None
    return {"shira": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "transformers": transformers.__version__, "peft": peft_v}


FORMATS = {"onnx": "onnxruntime", "pte": "executorch"}


def _combine_exclusions(per_backend: dict[str, dict[str, str]], located: dict[str, dict], wanted) -> dict[str, str]:
    """A weight is patchable only if every exported backend can patch it; otherwise say why, per backend."""
    excluded = {}
    for pname in wanted:
        why = [f"{b}: {ex[pname]}" for b, ex in per_backend.items() if pname in ex]
        why += [f"{b}: not located" for b, loc in located.items() if pname not in loc and pname not in per_backend[b]]
        if why:
            excluded[pname] = "; ".join(why)
    return excluded


@dataclass
class _OnnxPart:
    """What the ONNX export found: the graph, where each weight lies in it, and what it cannot patch."""
    proto: onnx.ModelProto
    located: dict
    excluded: dict
    shared: list
    init_arrays: dict


@dataclass
class _PtePart:
    """What the ExecuTorch lowering found: the program(s), where each weight lies, what needs a reload."""
    pte: bytes
    dynamic: bool
    lowering: dict
    located: dict
    excluded: dict
    shared: list
    reload: dict
    static_pte: bytes | None
    static_located: dict
    static_excluded: dict
    quantization: dict | None  # a quantized base: the integers' summary, and ExecuTorch's own part of it


def _check_request(formats, quantize, headroom, quantize_patchable) -> tuple:
    formats = tuple(dict.fromkeys(formats))
    if not formats or set(formats) - set(FORMATS):
        raise ExportError(f"formats must be among {sorted(FORMATS)}, got {list(formats)}")
    if quantize is not None:
        from .quantize import MODES

        if quantize not in MODES or quantize_patchable not in (None, *MODES):
            raise ExportError(f"--quantize and --quantize-patchable must be one of {', '.join(MODES)}, got "
                              f"{quantize!r}, {quantize_patchable!r}")
        if headroom is not None and not (1.0 <= headroom <= 16.0):
            raise ExportError(f"--headroom must be between 1 and 16, got {headroom}")
    return formats


def _candidates(subject: ExportSubject, targets: str | None) -> dict[str, tuple[str, str]]:
    """The weights `targets` picks, refused before minutes of export if there are none or one is not float32."""
    model = subject.model
    wanted = patchable_weights(model, targets)
    if not wanted:
        raise ExportError(f"--targets {targets!r} matches no Linear/Conv weight of {subject.source}")
    params = dict(model.named_parameters(remove_duplicate=False))  # tied weights keep both names
    low = [p for p in wanted if params[p].dtype != torch.float32]
    if low:
        raise ExportError(f"{subject.source}: weight {low[0]} is {str(params[low[0]].dtype).removeprefix('torch.')}; "
                          "patchable weights are float32: export the model in float32 (model.float()); "
                          "low-precision bases are patched in their own domain by the quantized route")
    return wanted


def _export_onnx(esubject: ExportSubject, wanted, log) -> _OnnxPart:
    proto = _torch_export(esubject)
    located, excluded, shared, init_arrays = locate_weights(proto, esubject.model, wanted)
    log(f"  onnx: {len(proto.graph.node)} nodes, {len(located)} weights located")
    return _OnnxPart(proto, located, excluded, shared, init_arrays)


def _export_pte(esubject: ExportSubject, wanted, quantize, headroom, quantize_patchable, log) -> _PtePart:
    from . import executorch as et

    emodel = esubject.model
    qsubject, qours, quantization = esubject, {}, None
    if quantize is not None:  # XNNPACK's integer Linear weights (quantize_executorch.py)
        from . import quantize_executorch as qet

        qsubject, qours, qsummary, et_quantization = qet.quantize_linears(
            esubject, set(wanted), quantize, headroom, quantize_patchable, log)
        quantization = {**qsummary, "executorch": et_quantization}
    pte, dynamic, lowering = et.lower(qsubject, log)
    pl, ex, shared = et.locate_in_program(pte, emodel, [p for p in wanted if p not in qours])
    reload, ex2 = et.probe_reload(pte, pl, esubject.example_inputs)
    ex.update(ex2)
    pl = {k: v for k, v in pl.items() if k not in ex2}
    if qours:
        qfound, qex = qet.locate_quantized(pte, qours)
        shapes = {k: v[0].shape for k, v in qours.items()}
        qex.update(qet.probe_quantized(pte, {k: v for k, v in qfound.items() if k not in qex}, shapes,
                                       esubject.example_inputs))
        ex.update(qex)
        for k, (off, q) in qfound.items():
            if k not in qex:
                pl[k] = [(off, "identity", shapes[k], q)]
                reload[(k, off)] = True
    n_reload = sum(reload[(k, h[0])] for k, hs in pl.items() for h in hs)
    log(f"  pte: {len(pte):,} bytes, {lowering['delegates']} XNNPACK delegate calls, {len(pl)} weights "
        f"located ({n_reload} need a method reload when patched: conv, quantized)")
    if quantize is None:
        static_pte, _, _ = et.lower(esubject, lambda *a: None, static=True)
        static_pl, static_ex, _ = et.locate_in_program(static_pte, emodel, wanted)
    else:  # quantized weights are packed at load anyway: the reloaded program is the prepacked one
        static_pte, static_pl = None, {}
        static_ex = {p: "a quantized base has no separate prepacked program" for p in wanted}
    return _PtePart(pte, dynamic, lowering, pl, ex, shared, reload, static_pte, static_pl, static_ex, quantization)


def _exclusions(subject: ExportSubject, per_backend: dict, located: dict, wanted, log) -> dict[str, str]:
    """Weight -> why it is not patchable, with the true reason where torch agrees the weight does not matter."""
    excluded = _combine_exclusions(per_backend, located, wanted)
    reach = weight_reach(subject, [p for p in excluded if "not found" in excluded[p] or "changed no output" in excluded[p]])
    for pname, how in reach.items():
        if how == "unused":
            excluded[pname] = "not used by the exported outputs (e.g. a pooler when only last_hidden_state is exported)"
        elif how == "zero-gradient":
            excluded[pname] = ("the sample input does not reach it (its gradient is zero in torch too, e.g. "
                               "saturated activations): export with a sample that exercises it")
    for pname, why in excluded.items():
        log(f"  not patchable: {pname}: {why}")
    return excluded


def _tensor_records(subject: ExportSubject, esubject: ExportSubject, patchable, wanted, folds, onnx_part,
                    pte_part, static_ok: bool) -> dict:
    """The manifest's `tensors`: per patchable weight, its torch facts and every placement of it."""
    params = dict(subject.model.named_parameters(remove_duplicate=False))
    eparams = dict(esubject.model.named_parameters())
    tensors = {}
    for pname in patchable:
        mname, kind = wanted[pname]
        w = params[pname]
        fold = {}
        if pname in folds:
            fold = {"channel_scale": [float(v) for v in folds[pname][0]], "folded_sha256": tensor_sha256(eparams[pname])}
        placements, prepacked_placements = {}, {}
        if onnx_part is not None:
            placements["onnxruntime"] = [{"name": n, "shape": list(shp), "layout": lay, **fold}
                                         for n, lay, shp in onnx_part.located[pname]]
        if pte_part is not None:
            placements["executorch"] = [{"name": f"model.pte@{off}", "shape": list(shp), "layout": lay,
                                         "offset": off, "reload": pte_part.reload[(pname, off)], **fold,
                                         **({"quant": rest[0]} if rest else {})}
                                        for off, lay, shp, *rest in pte_part.located[pname]]
            if static_ok:
                prepacked_placements["executorch"] = [
                    {"name": f"model_prepacked.pte@{off}", "shape": list(shp), "layout": lay, "offset": off,
                     "reload": True, **fold} for off, lay, shp in pte_part.static_located[pname]]
        tensors[pname] = {"module": mname, "kind": kind, "shape": list(w.shape),
                          "dtype": str(w.dtype).removeprefix("torch."), "sha256": tensor_sha256(w),
                          "placements": placements}
        if prepacked_placements:
            tensors[pname]["prepacked_placements"] = prepacked_placements
        if pname in folds:
            tensors[pname]["folded_batchnorm"] = folds[pname][1]
    return tensors


def _finish_onnx(part: _OnnxPart, tensors: dict, quantize, headroom, quantize_patchable, quantization, log) -> set:
    """The located weights become graph inputs (quantized first where asked); returns the names that move
    to weights.safetensors (and the scales of quantized ones)."""
    moved = {pl["name"] for t in tensors.values() for pl in t["placements"]["onnxruntime"]}
    _to_graph_inputs(part.proto, moved)
    if quantize is not None:
        from .quantize import quantize_graph

        entries = {pl["name"]: pl for t in tensors.values() for pl in t["placements"]["onnxruntime"]}
        for t in tensors.values():
            for pl in t["placements"]["onnxruntime"]:
                pl["torch_shape"] = t["shape"]
        quantization.update(quantize_graph(part.proto, quantize, entries, part.init_arrays, log, headroom,
                                           quantize_patchable))
        for pl in entries.values():
            del pl["torch_shape"]
            if "quant" in pl:
                moved.add(pl["quant"]["scales"])
    return moved


def _write_export(out_dir: Path, manifest: dict, subject: ExportSubject, onnx_part, pte_part, moved,
                  ref_outputs, quantize, log) -> None:
    """Every file into a staging folder, checked there by both engines, then moved in; manifest.json last, so
    readers see all of a new export or none of it."""
    from safetensors.numpy import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out_dir))
    files = ["sample.npz"]
    try:
        if onnx_part is not None:
            save_file({n: np.ascontiguousarray(onnx_part.init_arrays[n]) for n in sorted(moved)},
                      str(staging / "weights.safetensors"))
            big = _onnx_bytes(onnx_part.proto) > ONNX_EXTERNAL_DATA_ABOVE
            onnx.save_model(onnx_part.proto, str(staging / "model.onnx"), save_as_external_data=big,
                            all_tensors_to_one_file=True, location="model.onnx.data")
            _write_prepacked_twin(staging, moved)
            files += (["model.onnx.data"] if big else []) + ["weights.safetensors", "model.onnx",
                                                              "model_prepacked.onnx"]
        if pte_part is not None:
            (staging / "model.pte").write_bytes(pte_part.pte)
            files.append("model.pte")
            if "prepacked" in manifest["artifacts"]["executorch"]:
                (staging / "model_prepacked.pte").write_bytes(pte_part.static_pte)
                files.append("model_prepacked.pte")
        tokenizer = Path(subject.source) / "tokenizer.json"  # a model directory's: `shira generate` reads it
        if tokenizer.is_file():
            shutil.copyfile(tokenizer, staging / "tokenizer.json")
            files.append("tokenizer.json")
        sample = {**{f"input:{k}": v.numpy() for k, v in subject.example_inputs.items()},
                  **{f"output:{k}": v for k, v in ref_outputs.items()}}
        np.savez(staging / "sample.npz", **sample)
        add_checksums(staging, manifest)
        manifest_format.write(manifest, staging / "manifest.json")
        errors = {b: verify_export(staging, b, subject, ref_outputs) for b in manifest["artifacts"]}
        if onnx_part is not None:  # the live route's proof reference, so that no device computes it
            from shira_runtime.inplace.live import proof_entries

            proof = proof_entries(manifest_format.load(staging))
            if proof:
                np.savez(staging / "sample.npz", **sample, **proof)
        manifest["export_check"] = {"sample": "sample.npz", "max_abs_error": errors}
        for b, e in errors.items():
            log(f"  verified with {b}: max |{b} - torch| = {e:.3g}"
                + (f" (torch runs the float32 model: most of this is the {quantize} quantization itself, with "
                   "int8 activations at run time; the runtime's adapters are checked against the integers)"
                   if quantize else ""))
        for f in files:
            os.chmod(staging / f, 0o644)
            os.replace(staging / f, out_dir / f)
        manifest_format.write(manifest, out_dir / "manifest.json")  # last: readers see all or nothing new
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def export_model(subject: ExportSubject, out_dir, targets: str | None = None, formats=("onnx", "pte"),
                 log=print, quantize: str | None = None, headroom: float | None = None,
                 quantize_patchable: str | None = None) -> dict:
    """Export `subject` once per format into out_dir, with one manifest for all of them. Returns the manifest.

    Files: model.onnx + weights.safetensors (onnx), model.pte (pte), sample.npz, manifest.json (written last).
    `quantize`: "int8" or "int4", a weight-only quantized base (quantize.py for ONNX Runtime, quantize_executorch.py
    for ExecuTorch); `headroom`: its patchable weights' scales cover headroom x their largest entry (room for
    adapters; docs/QUANTIZATION.md); `quantize_patchable`: the patchable weights' own mode (default:
    `quantize`), e.g. int8 under an int4 base.
    """
    out_dir = Path(out_dir)
    formats = _check_request(formats, quantize, headroom, quantize_patchable)
    model = subject.model.eval()
    t0 = time.perf_counter()
    wanted = _candidates(subject, targets)
    log(f"exporting {subject.source}: {sum(p.numel() for p in model.parameters()):,} parameters, "
        f"{len(wanted)} candidate patchable weights, formats: {', '.join(formats)}")

    esubject, folds = fold_batchnorm(subject, wanted)  # exporters get the folded copy; names stay the model's
    if folds:
        log(f"  folded {len(folds)} BatchNorm layers into the weights before them (recorded as channel_scale)")
    onnx_part = _export_onnx(esubject, wanted, log) if "onnx" in formats else None
    pte_part = _export_pte(esubject, wanted, quantize, headroom, quantize_patchable, log) if "pte" in formats else None
    parts = {b: p for b, p in (("onnxruntime", onnx_part), ("executorch", pte_part)) if p is not None}
    excluded = _exclusions(subject, {b: p.excluded for b, p in parts.items()},
                           {b: p.located for b, p in parts.items()}, wanted, log)
    patchable = [p for p in wanted if p not in excluded]
    if not patchable:
        raise ExportError("no targeted weight could be made patchable (see the reasons above)")
    static_missing = [p for p in patchable if p not in pte_part.static_located] if pte_part is not None else []
    quantization = None
    if quantize is not None:
        quantization = dict(pte_part.quantization) if pte_part is not None else {}
    tensors = _tensor_records(subject, esubject, patchable, wanted, folds, onnx_part, pte_part, not static_missing)
    with torch.no_grad():
        ref = subject.export_module()(*subject.example_inputs.values())
    ref = ref if isinstance(ref, tuple) else (ref,)
    ref_outputs = {n: r.detach().numpy() for n, r in zip(subject.output_names, ref)}

    artifacts, moved = {}, set()
    if onnx_part is not None:
        moved = _finish_onnx(onnx_part, tensors, quantize, headroom, quantize_patchable, quantization, log)
        artifacts["onnxruntime"] = {"patchable": "model.onnx", "weights": "weights.safetensors",
                                    "prepacked": "model_prepacked.onnx"}
        io_inputs, io_outputs = _io_spec(onnx_part.proto.graph.input, skip=moved), _io_spec(onnx_part.proto.graph.output)
    if pte_part is not None:
        artifacts["executorch"] = {"patchable": "model.pte", "method": "forward", "dynamic_shapes": pte_part.dynamic,
                                   "lowering": pte_part.lowering}
        if static_missing and quantize is not None:
            log("  model_prepacked.pte not written: a quantized program packs its weights at load already")
        elif static_missing:
            m0 = static_missing[0]
            log(f"  model_prepacked.pte not written: {len(static_missing)} weight(s) not located in it, e.g. {m0}: "
                f"{pte_part.static_excluded.get(m0, 'not found')}")
        else:
            artifacts["executorch"]["prepacked"] = "model_prepacked.pte"
        if onnx_part is None:
            io_inputs = [{"name": k, "dtype": str(v.dtype).removeprefix("torch."), "shape": list(v.shape)}
                         for k, v in subject.example_inputs.items()]
            io_outputs = [{"name": k, "dtype": "float32", "shape": list(v.shape)} for k, v in ref_outputs.items()]
    manifest = {
        "format": manifest_format.FORMAT,
        "format_version": manifest_format.QUANTIZED_VERSION if quantization else manifest_format.FORMAT_VERSION,
        "created_by": tool_versions(),
        "model": {"source": subject.source, "class": type(model).__name__,
                  "parameters": sum(p.numel() for p in model.parameters())},
        "base_fingerprint": base_fingerprint(model),
        "inputs": io_inputs,
        "outputs": io_outputs,
        "artifacts": artifacts,
        "sample": "sample.npz",
        "tensors": tensors,
        "excluded": excluded,
        "untargeted": sorted(set(patchable_weights(model, None)) - set(wanted)),
        **({"generation": subject.generation} if subject.generation else {}),
        **({"quantization": quantization} if quantization else {}),
        "shared_storage": [s for p in parts.values() for s in p.shared],
    }
    _write_export(out_dir, manifest, subject, onnx_part, pte_part, moved, ref_outputs, quantize, log)
    n_patch = sum(int(np.prod(t["shape"])) for t in tensors.values())
    log(f"  {len(tensors)} patchable tensors ({n_patch:,} weights) -> {out_dir} in {time.perf_counter() - t0:.1f}s")
    return manifest


def add_checksums(base_dir: Path, manifest: dict) -> None:
    """Record every placement's CRC-32 (its manifest record + its stored bytes): the runtime checks them at
    load, so a changed file, a moved offset or an edited layout is refused instead of patched wrongly."""
    from shira_format.manifest import Placement
    from shira_format.quant import decode_scales
    from shira_format.safetensors_file import read_file
    from shira_format.checksum import placement_crc32

    from .quantize import quant_of

    arts = manifest["artifacts"]
    weights = read_file(base_dir / arts["onnxruntime"]["weights"]) if "onnxruntime" in arts else None
    programs = {}  # (placements key, runtime) -> the file's bytes, for placements addressed by offset
    if "executorch" in arts:
        programs[("placements", "executorch")] = (base_dir / arts["executorch"]["patchable"]).read_bytes()
        if arts["executorch"].get("prepacked"):
            programs[("prepacked_placements", "executorch")] = (base_dir / arts["executorch"]["prepacked"]).read_bytes()
    for tname, t in manifest["tensors"].items():
        for key in ("placements", "prepacked_placements"):
            for runtime, plist in t.get(key, {}).items():
                for pl in plist:
                    scale = pl.get("channel_scale")
                    p = Placement(pl["name"], tuple(pl["shape"]), pl["layout"], pl.get("offset"),
                                  channel_scale=None if scale is None else tuple(scale), quant=quant_of(pl))
                    if runtime == "onnxruntime":
                        stored = weights.raw(p.name)
                        scales = None if p.quant is None else weights.array(p.quant.scales)
                    else:
                        prog = programs[(key, runtime)]
                        n = 4 * int(np.prod(p.shape)) if p.quant is None else p.quant.stored_bytes(*p.shape)
                        stored = memoryview(prog)[p.offset : p.offset + n]
                        scales = None
                        if p.quant is not None:
                            so = p.quant.scales_offset
                            raw = np.frombuffer(prog, np.uint8)[so : so + p.quant.stored_scales_bytes(*p.shape)]
                            scales = decode_scales(raw, p.quant, *p.shape)
                    pl["crc32"] = placement_crc32(tname, t["shape"], p, stored, scales)


def _write_prepacked_twin(staging: Path, moved: set[str]) -> None:
    """model_prepacked.onnx: model.onnx with the patchable weights declared as initializers again, so ORT
    prepacks them, their data given as ONNX external data at their byte ranges inside weights.safetensors.

    Opened from disk it is the base model, fully prepacked. The runtime instead hands ORT the live (patched)
    bytes of weights.safetensors from memory (`add_external_initializers_from_files_in_memory`), so every
    graph pass and every kernel reads the same, current values: no stale private copies (docs/MANIFEST.md)."""
    from shira_format.safetensors_file import read_file

    st = read_file(staging / "weights.safetensors")
    proto = onnx.load(str(staging / "model.onnx"), load_external_data=False)
    inputs = {i.name: i for i in proto.graph.input}
    keep = [i for i in proto.graph.input if i.name not in moved]
    del proto.graph.input[:]
    proto.graph.input.extend(keep)
    for name in sorted(moved):
        tt, e = inputs[name].type.tensor_type, st.tensors[name]
        t = onnx.TensorProto(name=name, data_type=tt.elem_type, dims=[d.dim_value for d in tt.shape.dim])
        t.data_location = onnx.TensorProto.EXTERNAL
        for k, v in (("location", "weights.safetensors"), ("offset", str(st.data_start + e.start)),
                     ("length", str(e.end - e.start))):
            t.external_data.add(key=k, value=v)
        proto.graph.initializer.append(t)
    onnx.save_model(proto, str(staging / "model_prepacked.onnx"))


def _onnx_bytes(proto) -> int:
    """The serialized size, near enough: ByteSize() itself raises above protobuf's 2 GB limit (a 0.55B Llama
    with only its LoRA weights targeted keeps every base weight embedded), so the initializers count first."""
    data = sum(len(t.raw_data) + 4 * len(t.float_data) + 8 * len(t.int64_data) for t in proto.graph.initializer)
    return data if data > ONNX_EXTERNAL_DATA_ABOVE else proto.ByteSize()


def verify_export(base_dir: Path, backend: str, subject: ExportSubject, ref_outputs: dict[str, np.ndarray]) -> float:
    """Run the exported base through the real runtime and compare with torch on the sample input."""
    from shira_runtime import ShiraSession

    # mode="patchable": check the engine that patches are written to, without building a second one
    with ShiraSession(base_dir, backend=backend, verify="full", mode="patchable") as sess:
        outs = sess.run({k: v.numpy() for k, v in subject.example_inputs.items()})
    return max(float(np.max(np.abs(outs[k] - ref_outputs[k]))) for k in ref_outputs)
