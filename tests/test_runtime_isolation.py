"""The device runtime must work where torch (and the host toolchain) cannot even be imported."""
import subprocess
import sys
import textwrap


def test_runtime_runs_with_torch_and_toolchain_unimportable(llama):
    code = textwrap.dedent(f"""
        import sys, importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "shira_toolchain", "transformers", "peft"):
                    raise ImportError("blocked on device: " + name)
        sys.meta_path.insert(0, Block())
        import numpy as np
        import shira_runtime
        s = shira_runtime.ShiraSession({str(llama.base_dir)!r}, prepack="off")
        ids = np.array([[1, 2, 3, 4]], dtype=np.int64)
        a = s.run({{"input_ids": ids}})["logits"]
        s.load({str(llama.blobs["zen"])!r}, name="zen")
        s.switch("zen")
        b = s.run({{"input_ids": ids}})["logits"]
        s.reset()
        c = s.run({{"input_ids": ids}})["logits"]
        assert np.abs(a - b).max() > 1e-3 and np.array_equal(a, c)
        bad = [m for m in sys.modules if m.split(".")[0] in ("torch", "shira_toolchain")]
        assert not bad, bad
        print("OK")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip().endswith("OK"), r.stderr[-2000:]


def test_runtime_sources_import_neither_torch_nor_toolchain():
    from pathlib import Path
    import re

    root = Path(__file__).resolve().parents[1] / "runtime"
    offenders = []
    for p in root.rglob("*.py"):
        if "executorch" in p.name:
            continue
        for line in p.read_text().splitlines():
            if re.match(r"\s*(import|from)\s+(torch|shira_toolchain|toolchain)\b", line):
                offenders.append(f"{p.name}: {line.strip()}")
    assert not offenders, offenders
