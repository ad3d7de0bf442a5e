"""Command line of the product: `shira-export`, `shira-pack`, `shira-train`, `shira-bench`. (The `shira` group,
which adds the demos and reports, lives in shira_demos.cli.)

Every failure ends in one line on stderr, `error: <file or option>: <problem>`, and a non-zero exit: 2 for
input the tool refuses (a bad adapter, base directory, option), 1 for anything unexpected (then the line says
so and SHIRA_DEBUG=1 shows the traceback). Usage errors are click's (exit 2).
"""
from __future__ import annotations

import importlib.util
import logging
import os
import sys
import warnings

import click

from .hf_tasks import TASKS as HF_TASKS

DEBUG_ENV = "SHIRA_DEBUG"


def quiet_third_party() -> None:
    """torch/torchao/onnxscript/ExecuTorch print pages of warnings and start-up lines that say nothing about the
    user's model. Python warnings and library loggers are set to errors only; ExecuTorch's native start-up
    lines are muted by known pattern (shira_runtime.quiet), so any other stderr output still shows."""
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import torch  # noqa: F401 - torch configures its loggers on import; quiet them after that

    for name in ("torch", "torch.onnx", "torch.export", "torchao", "onnxscript", "transformers", "peft",
                 "executorch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if _has_executorch():
        from shira_runtime.backends.executorch import import_bindings

        try:
            import_bindings()
        except ImportError:
            pass  # reported by the command that needs it


def _has_executorch() -> bool:
    try:
        return importlib.util.find_spec("executorch") is not None
    except (ImportError, ValueError):
        return False


def one_line(e: BaseException) -> str:
    """An exception as one line: its first line, plus its last line when that says more (exporters put the
    cause at the end)."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()] or [type(e).__name__]
    text = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
    return text[:1000]


def _fail(e: Exception) -> None:
    click.echo(f"error: {one_line(e)}", err=True)
    sys.exit(2)


def run_command(command) -> None:
    """Run a click command; anything it did not handle becomes one line, not a traceback, and so does a usage
    error (click prints four lines for one: usage, hint, blank, error)."""
    try:
        rv = command.main(standalone_mode=False)
    except SystemExit:
        raise
    except click.UsageError as e:
        where = f"{e.ctx.command_path}: " if e.ctx is not None else ""
        click.echo(f"error: {where}{one_line(e.format_message())} (--help lists the options)", err=True)
        sys.exit(2)
    except click.ClickException as e:
        click.echo(f"error: {one_line(e.format_message())}", err=True)
        sys.exit(e.exit_code)
    except (KeyboardInterrupt, click.Abort):
        click.echo("error: interrupted", err=True)
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - the last line of defence against a traceback
        if os.environ.get(DEBUG_ENV):
            raise
        click.echo(f"error: unexpected {type(e).__name__}: {one_line(e)} (set {DEBUG_ENV}=1 for the traceback)",
                   err=True)
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)


@click.group(help="Export a base model to ONNX with a manifest of its patchable weights.")
def export_group():
    pass


@export_group.command("model")
@click.argument("model")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory to write into. onnx: model.onnx (+ model.onnx.data above 1.8 GB), "
                   "model_prepacked.onnx, weights.safetensors; pte: model.pte, model_prepacked.pte; always: "
                   "sample.npz and manifest.json (written last). docs/MANIFEST.md describes each file.")
@click.option("--targets", default=None, metavar="REGEX",
              help="Only weights whose torch parameter name matches REGEX (re.search) become patchable, e.g. "
                   "'self_attn\\.(q|v)_proj'. Default: every Linear and Conv weight. The others keep the "
                   "runtime's fast prepacked path.")
@click.option("--weights", default=None, type=click.Path(exists=True, dir_okay=False),
              help="A .safetensors state dict loaded into the model before export (built-in or module:factory).")
@click.option("--input", "inputs", multiple=True, metavar="NAME:SHAPE[:DTYPE]",
              help="Sample input for a module:factory model, e.g. image:1x3x64x64:float32. Repeat per input.")
@click.option("--format", "fmt", type=click.Choice(["onnx", "pte", "all"]), default="all", show_default=True,
              help="onnx: model.onnx for ONNX Runtime; pte: model.pte for ExecuTorch (XNNPACK); all: both. A weight "
                   "is patchable only if every exported format can patch it.")
@click.option("--hf-task", default=None, type=click.Choice(list(HF_TASKS)),
              help="For a model directory: the class to load it as. Default: the class its config.json names "
                   "(architectures). Weights missing or unexpected for that class are refused, never initialised.")
@click.option("--kv-cache", is_flag=True,
              help="Causal LMs: export with the key/value cache as inputs (past.<i>.key/value) and outputs "
                   "(present.<i>.key/value), as on-device generation runs (`shira generate`), on both runtimes.")
@click.option("--quantize", type=click.Choice(["int8", "int4"]), default=None,
              help="A weight-only quantized base, int8 with one scale per output channel or int4 with one per "
                   "block of 32 (16 where K is not a multiple of 32): ONNX Runtime's MatMulNBits for every MatMul "
                   "weight and 8-bit per-channel integers behind a DequantizeLinear for every Conv weight (no 4-bit "
                   "conv kernel exists), ExecuTorch's XNNPACK integer Linear (int8 dynamic activations) for every "
                   "Linear. Adapters are patched into the integers with the base's scales (docs/QUANTIZATION.md).")
@click.option("--quantize-patchable", type=click.Choice(["int8", "int4"]), default=None,
              help="With --quantize: the patchable weights' own mode (default: the same), e.g. --quantize int4 "
                   "--quantize-patchable int8 keeps the weights adapters touch at 8 bits under a 4-bit base.")
@click.option("--headroom", type=float, default=None,
              help="With --quantize: the patchable weights' scales cover this many times their largest entry, room "
                   "for adapters' values (never for constants). Default 4 at int8, 1 at int4 (measured in "
                   "docs/QUANTIZATION.md).")
def export_model_cmd(model, out_dir, targets, weights, inputs, fmt, hf_task, kv_cache, quantize, quantize_patchable,
                     headroom):
    """Export MODEL once: a built-in name (tiny-llama, style-net), package.module:factory, or a local Hugging
    Face model directory. Reports the export's max abs error against torch on a sample input."""
    from .source_check import early_refusal

    why = early_refusal(model, hf_task)  # a typo is refused at once, not after torch and transformers load
    if why:
        _fail(ValueError(why))
    quiet_third_party()
    from shira_format.errors import ShiraError

    from .export import ExportError, check_targets, export_model
    from .model_source import ModelSourceError, resolve

    try:
        check_targets(targets)  # before minutes of export, not after
        formats = ("onnx", "pte") if fmt == "all" else (fmt,)
        if "pte" in formats and not _has_executorch():
            raise ExportError(f"--format {fmt}: ExecuTorch is not installed (pip install 'shira-runtime[executorch]'); "
                              "--format onnx exports for ONNX Runtime alone")
        subject = resolve(model, weights, inputs, hf_task)
        if kv_cache:
            from .export.kv_cache import with_kv_cache

            subject = with_kv_cache(subject)
        if (quantize_patchable or headroom is not None) and not quantize:
            raise ExportError("--quantize-patchable and --headroom apply to a quantized export: add --quantize")
        export_model(subject, out_dir, targets, formats=formats, log=click.echo, quantize=quantize,
                     quantize_patchable=quantize_patchable, headroom=headroom)
    except (ExportError, ModelSourceError, ShiraError) as e:
        _fail(e)


@click.group(help="Pack adapters into compact blobs bound to one exported base.")
def pack_group():
    pass


@pack_group.command("adapter")
@click.argument("src", type=click.Path(exists=True))
@click.option("--base", "base_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="The exported base directory (from shira-export) the adapter was made for.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="The blob to write (.shira).")
@click.option("--name", default=None, help="Adapter name stored in the blob. Default: SRC's name.")
@click.option("--values", "value_coding", type=click.Choice(["f16", "f32", "bf16", "int8", "int8-row"]),
              default="f16", show_default=True,
              help="How delta values are stored: f16 (2 B, ~5e-4 relative error), f32 (lossless), bf16 (2 B, "
                   "~4e-3), int8 with one scale per tensor, or int8-row with one scale per weight row. The max "
                   "error each introduces is reported.")
@click.option("--index-coding", type=click.Choice(["auto", "elias-fano", "bitmap", "rowcol", "seed", "flat-u32"]),
              default="auto", show_default=True,
              help="How positions are stored. auto picks per tensor: seed (0 bytes, masks from the portable PRNG), "
                   "rowcol (SHiRA-Struct masks), else the smallest of elias-fano (~1.1 B/nonzero at 1%), bitmap "
                   "(dense masks) and flat-u32.")
@click.option("--density", type=float, default=None,
              help="For LoRA checkpoints (required) and full fine-tunes: keep this share of each weight, the "
                   "largest |delta|. A full fine-tune without it keeps its exact nonzero difference.")
@click.option("--float-base", default=None, type=click.Path(exists=True, file_okay=False),
              help="With a quantized --base: the float32 export of the same model, to report the error of the "
                   "patched base against merging in float32 and then quantizing the whole model.")
def pack_adapter_cmd(src, base_dir, out, name, value_coding, index_coding, density, float_base):
    """Pack SRC into a blob bound to the base: a PEFT SHiRA checkpoint directory, a PEFT LoRA checkpoint
    directory (sparsified at --density), or a full fine-tune (.safetensors file or directory) diffed against
    the base. Every module must be a patchable tensor of the base, every index in range, every value finite."""
    from shira_format.errors import ShiraError

    from .pack import PackError, pack_adapter

    try:
        r = pack_adapter(src, base_dir, out, name, value_coding, index_coding, density, float_base)
    except (PackError, ShiraError) as e:
        _fail(e)
    codings = ", ".join(f"{k} x{v}" for k, v in sorted(r.index_codings.items()))
    click.echo(f"{r.out}: adapter {r.name!r} from {r.source_kind}, {r.tensors} tensors, {r.nnz:,} nonzeros "
               f"({r.density:.2%} of the adapted weights), {r.blob_bytes:,} bytes "
               f"({r.blob_bytes / max(r.nnz, 1):.2f} B/nonzero); source {r.source_bytes:,} bytes")
    click.echo(f"  indices: {codings}; values: {r.value_coding}, max abs error {r.value_max_abs_error:.3g}")
    if r.sparsify_rel_error is not None:
        e = r.sparsify_rel_error
        click.echo(f"  sparsification: relative error ||delta - kept|| / ||delta|| = {e:.4f}: the blob keeps "
                   f"{1 - e * e:.0%} of the change's energy"
                   + ("; a LoRA update is dense and low-rank, and the largest entries keep little of it: raise "
                      "--density, or train SHiRA (shira-train) for a sparse adapter" if e > 0.5 else ""))
    if r.quantized is not None:
        q = r.quantized
        click.echo(f"  quantized base: {q['clamped']:,} of {q['entries']:,} entries clamped by the base's scales; the "
                   f"integers hold {q['kept']:.1%} of the delta"
                   + ("" if q["clamped"] <= 0.01 * q["entries"] else
                      " (train it on this base: shira-train --quantized-base, or export with more --headroom)"))
        if "error_patched" in q:
            click.echo(f"  against merging in float32: relative error {q['error_patched']:.4f} patched into this "
                       f"base, {q['error_merged_then_quantized']:.4f} merged then quantized whole")
    if r.ignored and r.ignored_checked:
        click.echo(f"  warning: {len(r.ignored)} changed weight(s) of the fine-tune are not patchable in this base, "
                   f"so their change is lost: {', '.join(r.ignored[:3])}{'...' if len(r.ignored) > 3 else ''} "
                   "(export the base with --targets covering them)")
    elif r.ignored:
        click.echo(f"  warning: {len(r.ignored)} weight(s) of the fine-tune are not patchable in this base and could "
                   f"not be compared with it (no ONNX artifact); any change to them is lost: "
                   f"{', '.join(r.ignored[:3])}{'...' if len(r.ignored) > 3 else ''}")


@pack_group.command("inspect")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
def pack_inspect_cmd(file):
    """Show, per tensor of a blob: nonzeros, density, index and value coding, bytes per nonzero and checksum;
    then totals against the PEFT SHiRA checkpoint layout. Validates the whole file first."""
    from shira_format.errors import ShiraError

    from .pack import inspect_blob

    try:
        click.echo(inspect_blob(file))
    except ShiraError as e:
        _fail(e)


@click.command("train")
@click.argument("model")
@click.option("--task", default=None,
              help="Built-in objective. LMs: zen, json-doc (next byte on those texts), upper, reverse, vowels "
                   "and 13 more prompt-prefix tasks (double, rot13, shift, sort, nospace, dash, title, initials, "
                   "lasts, pairs, dedup, atbash, stars). Image nets: sepia, blue-fire, posterize, pencil (styles "
                   "of bundled photos), invert, warm. Not needed with --data. With --joint: several, comma-separated.")
@click.option("--data", default=None, type=click.Path(exists=True, dir_okay=False),
              help="LMs: a UTF-8 text file to train on (next token), tokenized by the model directory's tokenizer "
                   "if it has one, else as bytes.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for the PEFT-compatible checkpoint (adapter_config.json, adapter_model.safetensors) "
                   "and train_report.json.")
@click.option("--mask", type=click.Choice(["struct", "rand", "wm", "grad", "snip"]), default="rand", show_default=True,
              help="SHiRA mask: struct (diagonal + every f-th row), rand (seeded PRNG: blobs store no indices), wm "
                   "(largest |W|), grad (largest accumulated |dW|), snip (largest |W*dW|).")
@click.option("--r", "r", default=1, show_default=True,
              help="r*(rows+cols) trainable values per layer: PEFT's count, the same as a LoRA of rank r.")
@click.option("--steps", default=100, show_default=True, help="Optimizer steps.")
@click.option("--lr", default=1e-2, show_default=True, help="Adam learning rate.")
@click.option("--seed", default=0, show_default=True, help="Seed for masks, batches and initialisation: same seed, "
                                                          "same checkpoint bytes.")
@click.option("--calib-batches", default=4, show_default=True, help="Batches whose gradients rank entries for "
                                                                    "the grad and snip masks.")
@click.option("--targets", default=None, metavar="REGEX",
              help="Adapt only weights whose torch name matches REGEX. Default: every Linear and Conv weight.")
@click.option("--weights", default=None, type=click.Path(exists=True, dir_okay=False),
              help="A .safetensors state dict loaded into the base model first.")
@click.option("--lora", is_flag=True, help="Train the LoRA baseline (peft.LoraConfig, rank r, alpha r) instead: "
                                           "the same number of trainable values, for comparison.")
@click.option("--quantized-base", default=None, type=click.Path(exists=True, file_okay=False),
              help="An int8/int4 export of MODEL (shira-export --quantize): train on its integers, each trainable "
                   "value kept within what its entry can hold with the base's scales, so the adapter is not "
                   "clamped on the device (docs/QUANTIZATION.md).")
@click.option("--avoid", multiple=True, type=click.Path(exists=True, dir_okay=False), metavar="BLOB",
              help="An adapter (.shira) whose entries the mask must not pick (repeatable): masks disjoint from "
                   "adapters this one will be fused with, so no entry takes two adapters' deltas. wm, grad and snip "
                   "masks only.")
@click.option("--joint", is_flag=True,
              help="Train the comma-separated --task list together, one adapter each in OUT/<task>/, so that "
                   "they still work when fused: disjoint masks (the tasks take their best entries in turns; "
                   "wm, grad, snip) and each step's loss = the task alone + --fused-weight * the task fused with "
                   "a random subset of the others. --steps is per task. With --lora: the LoRA twin. Measured in "
                   "reports/fusion (shira report fusion).")
@click.option("--fused-weight", default=0.5, show_default=True, help="--joint: weight of the fused term.")
def train_cmd(model, task, data, out_dir, mask, r, steps, lr, seed, calib_batches, targets, weights, lora,
              quantized_base, avoid, joint, fused_weight):
    """Fine-tune MODEL (built-in name, package.module:factory, or a local HF directory) with a SHiRA adapter
    and write a checkpoint that `shira-pack adapter` accepts. Linear layers use peft.ShiraConfig with the
    chosen mask; conv layers use the same sparse scheme (PEFT's SHiRA is Linear-only) in the same layout."""
    quiet_third_party()
    from shira_format.errors import ShiraError

    from .export import ExportError, check_targets
    from .model_source import ModelSourceError, resolve
    from .train import TrainConfig, train

    try:
        check_targets(targets)
        if not task and not data:
            raise ValueError("give --task (a built-in objective) or --data FILE")
        if joint:
            from .train.joint import train_jointly

            train_jointly(resolve(model, weights), [t.strip() for t in (task or "").split(",") if t.strip()],
                          TrainConfig(task=task or "", mask=mask, r=r, steps=steps, lr=lr, seed=seed,
                                      calib_batches=calib_batches, targets=targets, lora=lora, data=data,
                                      quantized_base=quantized_base, avoid=tuple(avoid)),
                          out_dir, fused_weight, log=click.echo)
            return
        if task and "," in task:
            raise ValueError(f"--task {task}: several tasks train together only with --joint")
        train(resolve(model, weights), TrainConfig(task=task or "text", mask=mask, r=r, steps=steps, lr=lr, seed=seed,
                                                   calib_batches=calib_batches, targets=targets, lora=lora, data=data,
                                                   quantized_base=quantized_base, avoid=tuple(avoid)),
              out_dir, log=click.echo)
    except (ModelSourceError, ExportError, ValueError, ShiraError) as e:  # ShiraError: a damaged --quantized-base
        _fail(e)


def export_main():
    run_command(export_group)


def pack_main():
    run_command(pack_group)


def train_main():
    run_command(train_cmd)


@click.command("bench")
@click.option("--out", "out_dir", default="bench", show_default=True, type=click.Path(file_okay=False),
              help="Where bench.json (every raw sample and the machine), bench.md and bench.png go.")
@click.option("--quick/--full", default=False, show_default=True,
              help="--quick: 20 samples per measurement, scaling sweep at ~10M only (about 2 min on the 2-core "
                   "x86-64 dev machine). --full (default): 60 samples, scaling sweep up to ~1.1B parameters "
                   "(4-5.5 min on the same 2-core machine).")
@click.option("--threads", default=2, show_default=True, help="Threads for ONNX Runtime, ExecuTorch and torch.")
@click.option("--real-size", is_flag=True,
              help="Instead: switching at real size (Llama 168M and 0.55B, ViT-B/16, random weights, ONNX Runtime), "
                   "each mode in its own process with its RSS: in place, two-phase, patchable, re-creating the "
                   "session, PEFT LoRA, ORT's LoRA adapters. Writes real_size.{json,md,png}. 12 min on the 2-core "
                   "x86-64 dev machine (`shira-bench --real-size --out reports/real_size`); --quick: the 168M Llama "
                   "only, about 3 min.")
@click.option("--quantized", is_flag=True,
              help="Instead: quantized bases (int8, int4) against float32: tiny-llama's task adapters written into "
                   "the integers (accuracy, bits/byte, clamped entries, against merging in float32 and then "
                   "quantizing), the style net's style adapters (PSNR), and a 168M Llama's memory, bake, switch and "
                   "speed in place on ONNX Runtime and on ExecuTorch. Writes quantized.{json,md,png}; --quick: "
                   "tiny-llama and the style net only.")
@click.option("--ort-lora", is_flag=True,
              help="Instead: SHiRA in place against ONNX Runtime's LoRA left unfused (.onnx_adapter) on the same "
                   "float32, int8 and int4 bases of a 168M Llama (--models: others): LoRA r = 8, 16, 64 with one and three adapters "
                   "active, runs side by side in one process per base, RSS. Writes ort_lora.{json,md,png}. 46 min on "
                   "the 2-core x86-64 dev machine (`shira-bench --ort-lora --out reports/ort_lora`).")
@click.option("--first-open", is_flag=True,
              help="Instead: the first open of a base in place (found in the live session's memory, and baked) against "
                   "a plain ONNX Runtime session of the same model: time and peak RSS, each open in its own process, "
                   "Llama 0.55B and 1.1B (random weights; --models: others). Writes first_open.{json,md,png}.")
@click.option("--work", default=None, type=click.Path(file_okay=False),
              help="With --first-open: where the models are exported, kept and reused (default: a temporary "
                   "directory, removed afterwards).")
@click.option("--models", default=None, metavar="NAME[,NAME]",
              help="With --ort-lora: the Llama shapes to measure (llama-168M, llama-0.55B; default llama-168M). Rows "
                   "of other models and bases already in ort_lora.json in --out are kept. With --first-open: "
                   "llama-168M, llama-0.55B, llama-1.1B (default the last two).")
@click.option("--bases", default=None, metavar="fp32,int8,int4", help="With --ort-lora: the bases to measure.")
@click.option("--tokens-only", is_flag=True,
              help="With --ort-lora: only the time to the first tokens after a switch (no per-run rows).")
@click.option("--runs-only", is_flag=True,
              help="With --ort-lora: only the per-run rows (decode, prefill, RSS); the time-to-tokens rows already "
                   "in ort_lora.json for those bases are kept.")
@click.option("--parts", default=",".join(("lm", "style", "real", "executorch")), show_default=True,
              help="With --quantized: the sections to measure (lm: tiny-llama, style: the style net, real: 168M on "
                   "ONNX Runtime, executorch: 168M on ExecuTorch); the others are kept from quantized.json in --out, "
                   "which says which command measured each.")
def bench_cmd(out_dir, quick, threads, real_size, quantized, ort_lora, first_open, work, models, bases, tokens_only,
              runs_only, parts):
    """CPU latency, side by side in one run: SHiRA in-place switch (ONNX Runtime, ExecuTorch) vs PEFT LoRA
    merge/unmerge, merge_and_unload, PEFT SHiRA merge, session re-creation and method reload; inference after
    a switch vs the prepacked base and two-phase sessions, unfused LoRA and ORT's LoRA adapters; adapter sizes;
    switch time against model size from ~10M to ~1.1B parameters."""
    quiet_third_party()
    if first_open:
        from .bench.first_open import SHAPES, run_first_open

        names = models.split(",") if models else None
        if names and set(names) - set(SHAPES):
            raise click.UsageError(f"--models takes {', '.join(SHAPES)} with --first-open")
        run_first_open(out_dir, threads, models=names, work=work, log=click.echo)
        return
    if ort_lora:
        from .bench.ort_lora import run_ort_lora

        from .bench.subjects import MODELS

        names = (models or "llama-168M").split(",")
        labels = tuple(bases.split(",")) if bases else None
        unknown = [n for n in names if MODELS.get(n, ("",))[0] != "llama"]
        if unknown or (labels and set(labels) - {"fp32", "int8", "int4"}):
            raise click.UsageError(f"--models takes {', '.join(n for n, s in MODELS.items() if s[0] == 'llama')}; "
                                   "--bases takes fp32, int8, int4")
        if tokens_only and runs_only:
            raise click.UsageError("--tokens-only and --runs-only exclude each other")
        run_ort_lora(out_dir, threads, log=click.echo, models={n: MODELS[n] for n in names} if models else None,
                     labels=labels, runs=not tokens_only, tokens=not runs_only)
        return
    if quantized:
        from .bench.quantized import PARTS, run_quantized

        chosen = tuple(p.strip() for p in parts.split(",") if p.strip())
        if not chosen or set(chosen) - set(PARTS):
            raise click.UsageError(f"--parts takes a comma-separated list of {', '.join(PARTS)}; got {parts!r}")
        try:
            run_quantized(out_dir, quick, threads, log=click.echo, parts=chosen)
        except ValueError as e:
            raise click.ClickException(str(e)) from None
        return
    if real_size:
        from .bench.real_size import run_real_size

        run_real_size(out_dir, quick, threads, log=click.echo)
        return
    from .bench.run import run_bench

    run_bench(out_dir, quick, threads, log=click.echo)


def bench_main():
    run_command(bench_cmd)
