"""The engine contract (shira_runtime/engine.py) is what the session uses, all of it, and every engine keeps it."""
import ast
import inspect
from pathlib import Path

from shira_runtime.backends.executorch import ExecuTorchEngine
from shira_runtime.backends.onnxruntime import OrtEngine
from shira_runtime.engine import Engine
from shira_runtime.inplace.engine import InPlaceOrtEngine

RUNTIME = Path(__file__).resolve().parents[1] / "runtime" / "shira_runtime"
ENGINES = (OrtEngine, ExecuTorchEngine, InPlaceOrtEngine)


def _contract() -> set[str]:
    names = set()
    for klass in Engine.__mro__[:-1]:  # without object
        names |= set(vars(klass)) | set(getattr(klass, "__annotations__", {}))
    return {n for n in names if not n.startswith("_")}


def test_every_engine_implements_the_contract():
    for engine in ENGINES:
        assert issubclass(engine, Engine), engine
        assert not inspect.isabstract(engine), (engine, engine.__abstractmethods__)


def _engine_uses(path: Path) -> tuple[set[str], list[str]]:
    """Attributes read on `self.engine` / `engine`, and the probing calls (hasattr/getattr on it, or
    assignments to its attributes) found in one module."""
    tree = ast.parse(path.read_text())
    used, probes = set(), []

    def is_engine(node) -> bool:
        return (isinstance(node, ast.Attribute) and node.attr == "engine") or \
            (isinstance(node, ast.Name) and node.id == "engine")

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_engine(node.value):
            used.add(node.attr)
            if isinstance(node.ctx, ast.Store):
                probes.append(f"{path.name}:{node.lineno}: assigns engine.{node.attr}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("hasattr", "getattr") \
                and node.args and is_engine(node.args[0]):
            probes.append(f"{path.name}:{node.lineno}: {node.func.id} on the engine")
    return used, probes


def test_the_session_asks_only_what_the_contract_says():
    """No feature probing, no engine state set from outside, and every member it uses is declared."""
    contract = _contract()
    for module in ("session.py", "two_phase.py"):
        used, probes = _engine_uses(RUNTIME / module)
        assert not probes, probes
        assert used, f"{module}: found no use of the engine (the check would pass vacuously)"
        assert used <= contract, (module, sorted(used - contract))


def test_a_probe_would_be_caught(tmp_path):
    """The check above fails on the patterns it forbids (it is not vacuous)."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f(self):\n    if hasattr(self.engine, 'x'):\n        self.engine.prepacked = 1\n"
                   "    return self.engine.copies\n")
    used, probes = _engine_uses(bad)
    assert len(probes) == 2 and "copies" in used and "copies" not in _contract()
