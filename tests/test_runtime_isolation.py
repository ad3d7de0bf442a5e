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
        s = shira_runtime.ShiraSession({str(llama.base_dir)!r}, mode="patchable")
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


def _imports(path):
    """Absolute module names a Python file imports (relative imports resolved against its package)."""
    import ast

    tree = ast.parse(path.read_text())
    name = _module_name(path)
    pkg = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - node.level + 1]
                mods = [node.module] if node.module else [a.name for a in node.names]
                out |= {".".join(base + [m]) for m in mods}
            else:
                out.add(node.module)
    return out


from pathlib import Path as _Path  # noqa: E402

ROOT = _Path(__file__).resolve().parents[1]
PACKAGE_OF = {"toolchain": "shira_toolchain", "demos": "shira_demos", "models": "shira_models"}


def _module_name(path):
    rel = path.relative_to(ROOT)
    if rel.parts[0] == "runtime":
        parts = list(rel.parts[1:])
    else:
        parts = [PACKAGE_OF[rel.parts[0]], *rel.parts[1:]]
    parts[-1] = parts[-1].removesuffix(".py")
    return ".".join(p for p in parts if p != "__init__")


def test_the_house_imports_one_way():
    """format <- runtime <- toolchain <- demos, never back: the format package needs only numpy, the runtime
    never reaches into the toolchain, the product never into the demos; and no module imports run in a loop."""
    files = [p for d in ("runtime", "toolchain", "demos", "models") for p in (ROOT / d).rglob("*.py")
             if not {"build", "__pycache__"} & set(p.relative_to(ROOT).parts)]
    graph = {}
    for f in files:
        name = _module_name(f)
        graph[name] = {i for i in _imports(f) if i.split(".")[0].startswith("shira_")}
        top = name.split(".")[0]
        tops = {i.split(".")[0] for i in _imports(f)}
        if top == "shira_format":
            third = {t for t in tops if not t.startswith("shira_format")} - set(sys.stdlib_module_names)
            assert third <= {"numpy", "safetensors", "ml_dtypes"}, (name, third)  # the two only in the writer, lazily
        allowed = {"shira_format": {"shira_format"}, "shira_runtime": {"shira_format", "shira_runtime"},
                   "shira_toolchain": {"shira_format", "shira_runtime", "shira_toolchain", "shira_models"},
                   "shira_models": {"shira_models"}}.get(top)
        if allowed is not None:
            assert {t for t in tops if t.startswith("shira_")} <= allowed, (name, tops)

    def resolve(mod):  # `from pkg import sub` and `from pkg.sub import name` both reach a module we know
        while mod and mod not in graph:
            mod = mod.rpartition(".")[0]
        return mod

    edges = {m: {resolve(i) for i in deps} - {m, ""} for m, deps in graph.items()}
    # a package's __init__ importing its own submodules is not a loop back up
    edges = {m: {d for d in ds if not (d.startswith(m + ".") or m.startswith(d + ".") and d in graph and
                                        _is_init(d))} for m, ds in edges.items()}
    seen, stack, loops = set(), [], []

    def visit(m):
        if m in stack:
            loops.append(stack[stack.index(m):] + [m])
            return
        if m in seen:
            return
        seen.add(m)
        stack.append(m)
        for d in sorted(edges.get(m, ())):
            visit(d)
        stack.pop()

    for m in sorted(edges):
        visit(m)
    assert not loops, loops[:3]


def _is_init(mod):
    return any(_module_name(p) == mod and p.name == "__init__.py"
               for d in ("runtime", "toolchain", "demos", "models") for p in (ROOT / d).rglob("__init__.py"))
