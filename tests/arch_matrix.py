"""The architecture matrix: every model of shira_models.architectures through the whole product.

For one architecture: save it as a model directory (save_pretrained), `shira-export model DIR` to both
runtimes, make an adapter touching every patchable weight (with PEFT's own ShiraConfig on Linear layers;
PEFT's SHiRA refuses convs and GPT-2's Conv1D, so those modules are written in PEFT's checkpoint layout
directly), pack it with f32 values, switch it on ONNX Runtime and ExecuTorch and compare with the model
merged in torch, then reset and compare every weight buffer with the base, bit for bit.

`python -m tests.arch_matrix [NAME ...]` runs the matrix and rewrites docs/MODELS.md from the results.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REL_TOL = 1e-5  # max |runtime - merged| / max |merged|
TRUE_REASONS = ("tied weights", "stores it in one buffer with ['", "not used by the exported outputs")
DENSITY = 0.02


def _modules_by_kind(model: torch.nn.Module, tensors) -> tuple[list[str], list[str]]:
    """Patchable modules split into (PEFT SHiRA can adapt them: nn.Linear, the rest)."""
    linear, other = [], []
    for name, info in tensors.items():
        mod = model.get_submodule(info["module"])
        (linear if type(mod) is torch.nn.Linear else other).append(info["module"])
    return linear, other


def _random_entries(shape, seed: int):
    rng = np.random.default_rng(seed)
    out_f, in_f = shape[0], int(np.prod(shape[1:]))
    nnz = max(1, int(out_f * in_f * DENSITY))
    flat = np.sort(rng.choice(out_f * in_f, size=nnz, replace=False))
    return flat // in_f, flat % in_f, rng.normal(0, 0.05, nnz).astype(np.float32)


def make_adapter(model: torch.nn.Module, manifest: dict, out_dir: Path) -> tuple[Path, torch.nn.Module]:
    """-> (a PEFT SHiRA checkpoint touching every patchable weight, the model with those deltas merged)."""
    from peft import ShiraConfig, get_peft_model
    from safetensors.numpy import load_file, save_file

    linear, other = _modules_by_kind(model, manifest["tensors"])
    merged = copy.deepcopy(model)
    tensors, fan_in_fan_out = {}, False
    if linear:
        torch.manual_seed(0)
        peft_model = get_peft_model(copy.deepcopy(model), ShiraConfig(r=1, target_modules=linear, init_weights=False))
        with torch.no_grad():  # init_weights=False draws N(0, 1): 50x a weight's size here; trained values are not
            for mod in peft_model.modules():
                for w in getattr(mod, "shira_weight", {}).values():
                    w.mul_(0.05)
        peft_model.save_pretrained(str(out_dir))
        merged = peft_model.merge_and_unload().eval()
        tensors = load_file(str(out_dir / "adapter_model.safetensors"))
    params = dict(merged.named_parameters())
    for i, module in enumerate(sorted(other)):
        w = params[f"{module}.weight"]
        conv1d = type(merged.get_submodule(module)).__name__ == "Conv1D"  # GPT-2: weight stored [in, out]
        fan_in_fan_out |= conv1d
        rows, cols, vals = _random_entries(w.T.shape if conv1d else w.shape, 100 + i)
        with torch.no_grad():  # SHiRA rows/cols address the weight as [out, in*kh*kw]
            (w.T if conv1d else w.view(w.shape[0], -1))[torch.from_numpy(rows), torch.from_numpy(cols)] += \
                torch.from_numpy(vals)
        tensors[f"base_model.model.{module}.shira_indices"] = np.stack([rows, cols]).astype(np.int64)
        tensors[f"base_model.model.{module}.shira_weight"] = vals
    if linear and fan_in_fan_out:
        raise AssertionError("an architecture mixing nn.Linear and Conv1D needs two checkpoints")
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / "adapter_model.safetensors"))
    if not linear:
        (out_dir / "adapter_config.json").write_text(json.dumps(
            {"peft_type": "SHIRA", "r": 1, "mask_type": "random", "fan_in_fan_out": fan_in_fan_out,
             "target_modules": sorted(other)}))
    else:
        cfg = json.loads((out_dir / "adapter_config.json").read_text())
        cfg["target_modules"] = sorted(set(cfg["target_modules"]) | set(other))
        (out_dir / "adapter_config.json").write_text(json.dumps(cfg))
    return out_dir, merged.eval()


def check_architecture(name: str, work: Path, log=lambda *a: None) -> dict:
    """Run one architecture through export, pack, switch and reset; return its row for docs/MODELS.md.
    Raises AssertionError where the product is wrong."""
    from shira_models.architectures import ARCHITECTURES, save
    from shira_runtime import ShiraSession
    from shira_toolchain.export import export_model
    from shira_toolchain.model_source import resolve
    from shira_toolchain.pack import pack_peft_shira

    t0 = time.perf_counter()
    model_dir = save(name, work / "hf")
    subject = resolve(str(model_dir))
    assert subject.task == ARCHITECTURES[name].task, (subject.task, ARCHITECTURES[name].task)
    base = work / "base"
    manifest = export_model(subject, base, formats=("onnx", "pte"), log=log)
    t_export = time.perf_counter() - t0
    wrong = {k: v for k, v in manifest["excluded"].items() if not any(r in v for r in TRUE_REASONS)}
    assert not wrong, f"refused for no true reason: {wrong}"
    ckpt, merged = make_adapter(subject.model, manifest, work / "adapter")
    blob = work / "a.shira"
    pack_peft_shira(ckpt, base, blob, name="a", value_coding="f32")
    row = {"architecture": name, "class": manifest["model"]["class"], "task": subject.task,
           "parameters": manifest["model"]["parameters"], "patchable": len(manifest["tensors"]),
           "excluded": {k: v.split(": ", 1)[-1] if "; " not in v else v for k, v in manifest["excluded"].items()},
           "folded": sum("channel_scale" in t["placements"]["onnxruntime"][0] for t in manifest["tensors"].values()),
           "export_s": round(t_export, 1), "rel_error": {}}
    from shira_format import manifest as manifest_format

    inputs = manifest_format.load(base).sample_inputs()
    with torch.no_grad():  # the merged model, traced the way the export traced the base
        ref = dataclasses.replace(subject, model=merged).export_module()(
            *[torch.from_numpy(inputs[k]) for k in subject.example_inputs])
    ref = ref if isinstance(ref, tuple) else (ref,)
    for backend in ("onnxruntime", "executorch"):
        with ShiraSession(base, backend=backend, mode="patchable") as sess:
            before = sess.live_buffers()
            out0 = sess.run(inputs)
            sess.load(blob)
            sess.switch("a")
            out = sess.run(inputs)
            rel = max(float(np.max(np.abs(out[n] - r.numpy())) / max(float(np.max(np.abs(r.numpy()))), 1e-12))
                      for n, r in zip(subject.output_names, ref))
            moved = max(float(np.max(np.abs(out[n] - out0[n]))) for n in out)
            assert moved > 0, f"{backend}: the adapter changed no output"
            assert rel <= REL_TOL, f"{backend}: max |runtime - merged| is {rel:.3g} of the output's scale"
            sess.reset()
            for n, b in sess.live_buffers().items():
                assert np.array_equal(b.view(np.uint8), before[n].view(np.uint8)), f"{backend}: {n} not reset"
            assert all(np.array_equal(sess.run(inputs)[n], out0[n]) for n in out0), f"{backend}: output not reset"
            row["rel_error"][backend] = rel
            if backend == "onnxruntime":
                patchable_out = out
    row["in_place"] = check_in_place(base, blob, inputs, patchable_out, work / "bake-cache")
    row["total_s"] = round(time.perf_counter() - t0, 1)
    return row


def check_in_place(base: Path, blob: Path, inputs: dict, patchable_out: dict, cache: Path) -> str:
    """The default ONNX Runtime session (mode="auto"): in place where the base bakes, checked against the
    patchable engine's output for the same adapter and bit-exact on reset; else the reason it fell back."""
    from shira_runtime import ShiraSession

    with ShiraSession(base, cache_dir=cache) as sess:
        if sess.mode != "in-place":
            assert sess.mode_reason, "fell back without a reason"
            return f"no: {sess.mode_reason}"
        out0 = sess.run(inputs)
        sess.load(blob)
        sess.switch("a")
        out = sess.run(inputs)
        for n, ref in patchable_out.items():
            scale = max(float(np.max(np.abs(ref))), 1e-12)
            err = float(np.max(np.abs(out[n] - ref))) / scale
            assert err <= REL_TOL, f"in place: output {n} is {err:.3g} of its scale away from the patchable engine's"
        sess.reset()
        assert all(np.array_equal(sess.run(inputs)[n], out0[n]) for n in out0), "in place: output not reset"
    return "yes"


def write_models_md(rows: list[dict], path: Path, command: str) -> None:
    lines = ["# Architectures: what `shira-export model DIR` takes today", "",
             "Each row is a small random-init model of the architecture (`shira_models/architectures.py`, hidden 64, "
             "2 layers), saved with `save_pretrained` and taken through the whole product by `tests/arch_matrix.py`: "
             "export to ONNX Runtime and ExecuTorch, a SHiRA adapter on every patchable weight (PEFT's own "
             "`ShiraConfig` on Linear layers; PEFT's checkpoint layout written directly for convs and Conv1D, "
             "which PEFT's SHiRA refuses), packed with f32 values, switched on both runtimes and compared with "
             "the model merged in torch, then reset and every weight buffer compared with the base bit for bit.",
             "", f"Produced by `{command}` on the 2-core x86-64 dev box (torch 2.13.0+cpu, onnxruntime 1.32, "
             "executorch 1.5.1).", "",
             "| architecture | class (task) | parameters | patchable | folded BatchNorm | not patchable (why) "
             "| max rel. error ORT / ET | in place on ORT | export s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        why = "; ".join(f"`{k}`: {v}" for k, v in r["excluded"].items()) or "-"
        err = " / ".join(f"{r['rel_error'][b]:.1e}" for b in ("onnxruntime", "executorch"))
        lines.append(f"| {r['architecture']} | {r['class']} ({r['task']}) | {r['parameters']:,} | {r['patchable']} "
                     f"| {r['folded']} | {why} | {err} | {r.get('in_place', '-')} | {r['export_s']} |")
    lines += ["", "`in place on ORT`: what the default session (`mode=\"auto\"`) got on ONNX Runtime: `yes` is the "
              "baked base patched in place (docs/INPLACE.md), its output checked against the patchable engine's and "
              "reset bit for bit; otherwise the reason it fell back.",
              "", "`export s`: wall time of both exports, with their probes and checks (other work shared the cores). "
              "The error is relative to the largest output value; most of it is each engine's own float32 "
              "arithmetic, present before any adapter (MobileNetV2's 52 ReLU6 layers give the largest).",
              "", "A weight is not patchable only for a true reason: it shares storage with another (tied "
              "embeddings; patching one buffer would patch both), or no exported output uses it. The default "
              "test run checks a representative subset (`pytest -m 'not long' tests/test_architectures.py`); "
              "`pytest -m long tests/test_architectures.py` runs all of them.", ""]
    from shira_format.atomic import write_text

    write_text(path, "\n".join(lines))


def main(argv: list[str]) -> int:
    import tempfile

    from shira_models.architectures import ARCHITECTURES

    names = argv or list(ARCHITECTURES)
    rows = []
    for n in names:
        with tempfile.TemporaryDirectory() as d:
            row = check_architecture(n, Path(d))
        print(f"{n}: {row['patchable']} patchable, rel error {row['rel_error']}, in place {row['in_place']}, {row['total_s']} s", flush=True)
        rows.append(row)
    if not argv:
        write_models_md(rows, Path(__file__).resolve().parents[1] / "docs" / "MODELS.md",
                        "python -m tests.arch_matrix")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
