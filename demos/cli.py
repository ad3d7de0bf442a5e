"""`shira`: the product's commands (export, pack, train) plus the demos and reports, in one group."""
from __future__ import annotations

from pathlib import Path

import click
from shira_toolchain.cli import (
    _fail,
    export_group,
    pack_group,
    quiet_third_party,
    run_command,
    train_cmd,
)


@click.group(help="SHiRA on-device toolchain: export a base once, pack adapters, switch them in place.")
def main_group():
    pass


@main_group.command("demo")
@click.option("--model", "model_name", type=click.Choice(["tiny-llama", "style-net"]), default="tiny-llama",
              show_default=True, help="Built-in base model to run the pipeline on.")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Where the exported base, the PEFT checkpoints and the packed blobs go. Default: "
                   "shira-demo/MODEL (shira-demo/web with --serve), one folder per demo.")
@click.option("--steps", default=40, show_default=True, help="Training steps per PEFT SHiRA adapter.")
@click.option("--r", "r", default=1, show_default=True, help="PEFT ShiraConfig r: r*(in+out) values per layer.")
@click.option("--threads", default=None, type=int, help="ONNX Runtime intra-op threads (default: all cores).")
@click.option("--serve", is_flag=True, help="Instead: serve the style-swapping web page on 127.0.0.1 (the "
              "committed style adapters on the style net, both runtimes).")
@click.option("--port", default=8765, show_default=True, help="Port for --serve (loopback only).")
def demo_cmd(model_name, out_dir, steps, r, threads, serve, port):
    """Export MODEL, train two SHiRA adapters with PEFT, pack them, load the base ONCE in ONNX Runtime and in
    ExecuTorch, switch, fuse and reset in place, and print per step and runtime the switch time, inference time
    and the max abs difference to PEFT's merged torch model. With --serve: the style demo web page."""
    quiet_third_party()
    if out_dir is None:
        out_dir = str(Path("shira-demo") / ("web" if serve else model_name))
    if serve:
        from .web_demo import serve as serve_page

        serve_page(Path(out_dir), port, threads, log=click.echo)
        return
    from .demo import run_demo

    run_demo(model_name, out_dir, steps=steps, r=r, threads=threads, log=click.echo)


@main_group.command("build-demo-models")
@click.option("--base-steps", default=2000, show_default=True, help="Training steps of the base image net.")
@click.option("--style-steps", default=300, show_default=True, help="Training steps per style adapter.")
@click.option("--reuse-base", is_flag=True, help="Keep the committed base weights; rebuild only the adapters.")
@click.option("--only", type=click.Choice(["all", "style", "lm"]), default="all", show_default=True,
              help="style: the image net and its style adapters; lm: the small LM and its task adapters.")
def build_demo_models_cmd(base_steps, style_steps, reuse_base, only):
    """Train the style demo's base net on photos shipped with scikit-image / scikit-learn and one SHiRA adapter
    per style; write models/style_net.safetensors and models/styles/*.shira (committed, so the demo needs no
    training). About 2.5 min for the style models and 5 min for the LM ones (--only lm) on the 2-core x86-64
    dev machine."""
    quiet_third_party()
    from .demo_models import build_demo_models, build_lm_models

    if only in ("all", "style"):
        build_demo_models(base_steps, style_steps, reuse_base, log=click.echo)
    if only in ("all", "lm"):
        build_lm_models(reuse_base=reuse_base, log=click.echo)


@main_group.group("report")
def report_group():
    """Reports that show with numbers and pictures what adapters are worth."""


@report_group.command("styles")
@click.option("--out", "out_dir", default="reports/styles", show_default=True, type=click.Path(file_okay=False),
              help="Where README.md, report.json and grid.png go.")
@click.option("--steps", default=300, show_default=True, help="Training steps per adapter (24 adapters).")
def report_styles_cmd(out_dir, steps):
    """Train every style with SHiRA (each of the five masks) and LoRA at the same trainable-value count; report
    PSNR/SSIM to each style, concept loss under 2- and 3-adapter fusion, mask overlap and AWOM/AWOR, and an
    image grid. About 10 min (600 s) on the 2-core x86-64 dev machine."""
    quiet_third_party()
    from .styles_report import style_report

    style_report(out_dir, steps, log=click.echo)


@report_group.command("fusion")
@click.option("--out", "out_dir", default="reports/fusion", show_default=True, type=click.Path(file_okay=False),
              help="Where README.md, report.json, curve.png and styles.png go.")
@click.option("--steps", default=300, show_default=True, help="Training steps per task and adapter.")
@click.option("--masks", default="snip wm grad rand struct", show_default=True,
              help="SHiRA masks trained alone (space-separated); disjoint and joint recipes use snip.")
@click.option("--seeds", default="0,1,2", show_default=True,
              help="Training seeds of the three-task LM table (comma-separated): mean and range over them.")
def report_fusion_cmd(out_dir, steps, masks, seeds):
    """Fuse 3 and up to 16 adapters trained alone, on disjoint masks and jointly (shira-train --joint), SHiRA
    against LoRA at the same trainable count: LM task accuracy retained and style concept loss, with every merge
    rule; a curve of retained accuracy against the number fused and an image row of the fused styles. SHiRA is
    judged as users run it: blobs packed by shira-pack's defaults, switched and fused by a ShiraSession."""
    quiet_third_party()
    from .fusion import fusion_report

    try:
        seed_list = tuple(int(x) for x in seeds.split(","))
    except ValueError:
        raise click.BadParameter(f"{seeds!r}: comma-separated integers", param_hint="--seeds") from None
    fusion_report(out_dir, steps, tuple(masks.split()), log=click.echo, seeds=seed_list)


@report_group.command("cost")
@click.option("--out", "out_dir", default="reports/cost", show_default=True, type=click.Path(file_okay=False),
              help="Where README.md and report.json go.")
@click.option("--steps", default=30, show_default=True, help="Training steps per measurement.")
def report_cost_cmd(out_dir, steps):
    """Peak memory and step time of SHiRA training (snip, rand masks) against LoRA with the same number of
    trainable values, on both built-in models; each in a fresh process. About 2 min on the 2-core x86-64 dev
    machine."""
    quiet_third_party()
    from .train_cost import cost_report

    cost_report(out_dir, steps, log=click.echo)



@main_group.command("generate")
@click.argument("base", type=click.Path(exists=True, file_okay=False))
@click.option("--adapter", "adapters", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="A packed adapter to switch on before generating (repeat to fuse several at scale 1).")
@click.option("--prompt", default=None, help="Text, tokenized with BASE/tokenizer.json (copied there by export "
              "when the model directory has one), or as bytes for a byte-level model (vocab 256).")
@click.option("--prompt-ids", default=None, help="The prompt as token ids, e.g. 1,15,27 (no tokenizer needed).")
@click.option("--max-new-tokens", default=32, show_default=True)
@click.option("--top-k", default=0, show_default=True, help="0 or 1: greedy; k > 1: sample among the k likeliest.")
@click.option("--temperature", default=1.0, show_default=True)
@click.option("--seed", default=0, show_default=True, help="Seed of the top-k sampler.")
@click.option("--backend", type=click.Choice(["onnxruntime", "executorch"]), default="onnxruntime",
              show_default=True)
@click.option("--threads", default=None, type=int, help="ONNX Runtime intra-op threads (default: all cores).")
def generate_cmd(base, adapters, prompt, prompt_ids, max_new_tokens, top_k, temperature, seed, backend, threads):
    """Generate text on BASE (exported with --kv-cache) with ADAPTERs patched in place; prints the text (or the
    ids) and the prompt time and decode speed."""
    from shira_format.errors import ShiraError
    from shira_runtime import ShiraSession
    from shira_runtime.generate import generate

    from .tokens import TokenizerError, load_tokenizer

    try:
        if (prompt is None) == (prompt_ids is None):
            raise ShiraError("give exactly one of --prompt and --prompt-ids")
        with ShiraSession(base, backend=backend, threads=threads, mode="patchable") as sess:
            tok = load_tokenizer(Path(base), sess.manifest) if prompt is not None else None
            if prompt is not None:
                ids = tok.encode(prompt)
            else:
                try:
                    ids = [int(x) for x in prompt_ids.split(",") if x.strip()]
                except ValueError:
                    raise ShiraError(f"--prompt-ids {prompt_ids!r}: expected integers joined by commas") from None
            names = [sess.load(a) for a in adapters]
            sess.fuse(dict.fromkeys(names, 1.0))
            out = generate(sess, ids, max_new_tokens, top_k, temperature, seed)
        click.echo(tok.decode(out.tokens) if tok is not None else ",".join(map(str, out.tokens)))
        click.echo(f"{len(out.tokens)} tokens: prompt ({out.prompt_tokens} tokens) {out.prompt_s * 1e3:.1f} ms, "
                   f"then {out.tokens_per_s:.1f} tokens/s", err=True)
    except (ShiraError, TokenizerError) as e:
        _fail(e)


main_group.add_command(export_group, "export")
main_group.add_command(pack_group, "pack")
main_group.add_command(train_cmd, "train")


def main():
    run_command(main_group)
