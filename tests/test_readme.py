"""README truth: its examples run verbatim, and what it and `--help` say agree with what the tools do.

Covered here: "The tools" lines in order in a fresh directory, then the Python snippet (20 times, each must exit
0 with no abort on stderr: a session left to the interpreter's exit used to end in `terminate called without
an active exception`), then the "Training adapters" lines. Covered elsewhere: the set-up and test commands
(.ci/run runs exactly those), `shira demo` (test_cli), `shira demo --serve` (test_web_demo), `shira-bench`
(test_bench, a reduced run); `shira build-demo-models` is not run (minutes of training; its outputs are
committed and checked by test_demo_models).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BIN = Path(sys.executable).parent


def block(after_heading: str, lang: str) -> str:
    """The first ```lang block after a heading."""
    section = README[README.index(after_heading):]
    m = re.search(rf"```{lang}\n(.*?)```", section, re.S)
    assert m, f"no {lang} block after {after_heading!r}"
    return m.group(1)


def shell_lines(text: str) -> list[str]:
    """The commands of a block, a line ending in a backslash joined with the next (as the shell reads them)."""
    text = text.replace("\\\n", " ")
    return [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def _env() -> dict:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def _sh(line: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", line], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=900)


def _snippet_runs(cwd: Path, n: int) -> None:
    code = block("## The tools", "python")

    def one(_):
        return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)

    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(one, range(n)))
    for r in runs:
        assert r.returncode == 0 and "terminate called" not in r.stderr and "Traceback" not in r.stderr, \
            (r.returncode, r.stderr[-2000:])
        assert "(1, 32, 256)" in r.stdout


def test_python_snippet_runs_verbatim_20_times_and_exits_cleanly(llama, tmp_path):
    """The snippet against the session's exported tiny-llama and two packed adapters named as in README."""
    from shira_toolchain.pack import pack_peft_shira

    (tmp_path / "out").mkdir()
    os.symlink(llama.base_dir, tmp_path / "out" / "llama")
    pack_peft_shira(llama.peft_dirs["zen"], llama.base_dir, tmp_path / "zen.shira", name="zen")
    pack_peft_shira(llama.peft_dirs["json-doc"], llama.base_dir, tmp_path / "json.shira", name="json")
    _snippet_runs(tmp_path, 20)


def test_in_place_snippet_runs_verbatim_and_says_in_place(llama, tmp_path):
    (tmp_path / "out").mkdir()
    os.symlink(llama.base_dir, tmp_path / "out" / "llama")
    r = subprocess.run([sys.executable, "-c", block("## In place on ONNX Runtime", "python")], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "SHIRA_CACHE_DIR": str(tmp_path / "cache")})  # no bake cached: live
    assert r.returncode == 0 and r.stdout.split() == ["in-place", "None", "live"], r.stderr[-2000:]


def test_many_adapters_snippet_runs_verbatim(llama, tmp_path):
    """plan_cache=1 and prepare(): the snippet switches to an adapter that was no longer decoded."""
    from shira_toolchain.pack import pack_peft_shira

    (tmp_path / "out").mkdir()
    os.symlink(llama.base_dir, tmp_path / "out" / "llama")
    pack_peft_shira(llama.peft_dirs["zen"], llama.base_dir, tmp_path / "zen.shira", name="zen")
    pack_peft_shira(llama.peft_dirs["json-doc"], llama.base_dir, tmp_path / "json.shira", name="json")
    r = subprocess.run([sys.executable, "-c", block("Many adapters (same run", "python")], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "{'zen': 1.0}", r.stderr[-2000:]


@pytest.mark.long
def test_tool_lines_then_snippet_then_training_run_in_a_fresh_directory(tmp_path):
    for line in shell_lines(block("## The tools", "sh")):
        r = _sh(line, tmp_path)
        assert r.returncode == 0, f"{line}\n{r.stderr[-3000:]}"
        assert "Traceback" not in r.stderr, line
    assert (tmp_path / "zen.shira").exists() and (tmp_path / "zen-lora.shira").exists()
    _snippet_runs(tmp_path, 2)
    for line in shell_lines(block("## Training adapters", "sh")):
        r = _sh(line, tmp_path)
        assert r.returncode == 0, f"{line}\n{r.stderr[-3000:]}"


@pytest.mark.long  # an export, 300 training steps and a bake: ~1 min
def test_quantized_lines_and_snippet_run_verbatim(tmp_path):
    for line in shell_lines(block("## Quantized bases", "sh")):
        r = _sh(line, tmp_path)
        assert r.returncode == 0, f"{line}\n{r.stderr[-3000:]}"
        if line.startswith("shira-pack"):
            assert "0 of 5,632 entries clamped" in r.stdout, r.stdout
    r = subprocess.run([sys.executable, "-c", block("## Quantized bases", "python")], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "SHIRA_CACHE_DIR": str(tmp_path / "cache")})
    assert r.returncode == 0 and r.stdout.strip() == "in-place 0", r.stderr[-2000:]


def test_export_help_lists_every_file_an_export_writes(llama):
    r = subprocess.run([str(BIN / "shira-export"), "model", "--help"], capture_output=True, text=True, env=_env())
    text = " ".join(r.stdout.split())
    written = sorted(p.name for p in llama.base_dir.iterdir())
    assert "model.onnx.data" in text  # written only above 1.8 GB, so not in this export
    for name in written:
        assert name in text, f"shira-export model --help does not name {name}"


HELP = [("shira", "build-demo-models"), ("shira", "report", "styles"), ("shira", "report", "cost"),
        ("shira-bench",), ("shira", "demo")]


@pytest.mark.parametrize("cmd", HELP, ids=" ".join)
def test_times_in_help_name_their_machine(cmd):
    r = subprocess.run([str(BIN / cmd[0]), *cmd[1:], "--help"], capture_output=True, text=True, env=_env())
    text = " ".join(r.stdout.split())
    quotes = re.findall(r"[^.]*\b\d+(?:\.\d+)?\s*(?:s|min|minutes?|seconds?)\b[^.]*", text)
    for q in quotes:
        assert "2-core" in q, f"{' '.join(cmd)} --help quotes a time without its machine: {q.strip()!r}"


def test_demo_folders_do_not_collide():
    from shira_demos.cli import demo_cmd

    out = next(p for p in demo_cmd.params if p.name == "out_dir")
    assert out.default is None and "shira-demo/MODEL" in out.help


def test_readme_quotes_agree_with_help():
    """Where README and --help quote the same command's duration, they say the same."""
    pairs = [("shira", "build-demo-models"), ("shira", "report", "styles")]
    for cmd in pairs:
        r = subprocess.run([str(BIN / cmd[0]), *cmd[1:], "--help"], capture_output=True, text=True, env=_env())
        help_text = " ".join(r.stdout.split())
        for minutes in re.findall(r"(\d+(?:\.\d+)?) min", help_text):
            assert f"{minutes} min" in README, f"{' '.join(cmd)} --help says {minutes} min; README does not"



def test_a_script_that_never_closes_its_session_exits_cleanly_20_times(llama, tmp_path):
    """The README snippet closes (with-block); a user's script may not. Its sessions are closed at exit, before
    the native libraries go: a background build of an ORT session still running then used to abort (134)."""
    code = (f"import numpy as np\nfrom shira_runtime import ShiraSession\n"
            f"s = ShiraSession({str(llama.base_dir)!r})\n"
            f"s.load({str(llama.blobs['zen'])!r}, name='a'); s.load({str(llama.blobs['json-doc'])!r}, name='b')\n"
            "s.switch('a'); s.fuse({'a': 0.7, 'b': 0.3}); s.reset()\n"
            f"x = dict(np.load({str(llama.base_dir / 'sample.npz')!r}))\n"
            "print(s.run({'input_ids': x['input:input_ids']})['logits'].shape)\n")

    def one(_):
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)

    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(one, range(20)))
    for r in runs:
        assert r.returncode == 0 and "terminate called" not in r.stderr, (r.returncode, r.stderr[-2000:])
