"""The runtime distribution installs alone: a clean virtual environment, `pip install ./runtime`, then a switch
on a real exported base. Nothing of torch or the toolchain is installed there, so nothing can sneak in."""
import shutil
import subprocess
import textwrap
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.long  # a fresh venv and a pip install: ~1 min


def test_runtime_installs_alone_and_switches(tmp_path):
    from shira_toolchain.export import export_model
    from shira_toolchain.model_source import resolve

    base = tmp_path / "base"
    export_model(resolve("style-net"), base, formats=("onnx",), log=lambda *a: None)  # the committed styles' base
    env = tmp_path / "venv"
    venv.create(env, with_pip=True)
    py = env / "bin" / "python"
    src = tmp_path / "runtime-src"  # pip builds in the source folder: keep the checkout clean
    shutil.copytree(ROOT / "runtime", src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", str(src)], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    listed = subprocess.run([str(py), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True).stdout
    names = {line.split("==")[0].lower() for line in listed.splitlines()}
    assert "shira-runtime" in names and "onnxruntime" in names and "numpy" in names
    assert not names & {"torch", "shira-toolchain", "transformers", "peft", "safetensors"}, names
    code = textwrap.dedent(f"""
        import importlib.util, sys
        import numpy as np
        from shira_runtime import ShiraSession
        with ShiraSession({str(base)!r}, mode="patchable") as s:  # one engine: every run of a state is bit-identical
            x = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
            a = s.run({{"image": x}})["styled"]
            s.load({str(ROOT / "models" / "styles" / "sepia.shira")!r})
            s.switch("sepia")
            b = s.run({{"image": x}})["styled"]
            s.reset()
            c = s.run({{"image": x}})["styled"]
        assert np.abs(a - b).max() > 1e-2, np.abs(a - b).max()
        assert np.array_equal(a, c)
        assert importlib.util.find_spec("torch") is None and importlib.util.find_spec("shira_toolchain") is None
        assert "site-packages" in sys.modules["shira_runtime"].__file__  # the installed copy, not the checkout
        print("OK")
    """)
    r = subprocess.run([str(py), "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip().endswith("OK"), r.stderr[-3000:]
