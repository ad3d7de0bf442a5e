"""The console scripts as a user runs them."""
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def _run(*args, timeout=300):
    return subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("cmd,words", [
    (("shira-export", "model", "--help"), ["--targets", "--weights", "--input", "--out", "--format"]),
    (("shira-pack", "adapter", "--help"), ["--base", "--out", "--values", "PEFT"]),
    (("shira", "demo", "--help"), ["--model", "--steps", "--threads"]),
    (("shira", "--help"), ["export", "pack", "demo"]),
])
def test_help_explains_every_option(cmd, words):
    r = _run(*cmd)
    assert r.returncode == 0
    for w in words:
        assert w in r.stdout, (w, r.stdout)


def test_export_pack_roundtrip_and_errors(llama, tmp_path):
    r = _run("shira-export", "model", "style-net", "--out", str(tmp_path / "sn"), "--targets", "mix",
             "--format", "onnx")
    assert r.returncode == 0, r.stderr
    assert "max |onnxruntime - torch|" in r.stdout and (tmp_path / "sn" / "manifest.json").exists()
    r = _run("shira-pack", "adapter", str(llama.peft_dirs["zen"]), "--base", str(llama.base_dir),
             "--out", str(tmp_path / "z.shira"), "--values", "f16")
    assert r.returncode == 0, r.stderr
    assert "nonzeros" in r.stdout and (tmp_path / "z.shira").exists()
    r = _run("shira-pack", "adapter", str(llama.peft_dirs["zen"]), "--base", str(tmp_path / "sn"),
             "--out", str(tmp_path / "bad.shira"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "made for another model" in r.stderr
    assert not (tmp_path / "bad.shira").exists()
    r = _run("shira-export", "model", "no-such-model", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "not a built-in model" in r.stderr


@pytest.mark.long  # end to end, 20-60 s: in the CI's second run (README, Test)
def test_demo_command_runs_end_to_end(tmp_path):
    r = _run("shira", "demo", "--model", "style-net", "--steps", "5", "--out", str(tmp_path / "d"), "--threads", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    table = [l for l in lines if l.startswith(("switch", "fuse", "reset", "base"))]
    assert len(table) == 7
    for l in table:  # runtime == PEFT merged model at every step, on both runtimes
        cols = l.split()
        assert float(cols[-5]) < 1e-4 and float(cols[-2]) < 1e-4, l
    assert r.stdout.count("byte-equal to the base: yes") == 2
