"""Session-wide fixtures: each built-in model exported once, real PEFT SHiRA adapters trained for it."""
from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

warnings.filterwarnings("ignore")
if "SHIRA_CACHE_DIR" not in os.environ:  # in-place bakes go to a throwaway cache, never the user's
    import tempfile

    os.environ["SHIRA_CACHE_DIR"] = tempfile.mkdtemp(prefix="shira-test-cache-")
logging.getLogger("torchao").setLevel(logging.ERROR)


TASKS = {"tiny-llama": ("zen", "json-doc"), "style-net": ("invert", "warm")}  # two adapters per built-in


EXPORTED = {"llama", "stylenet", "built", "onnx_base", "qbase"}  # fixtures that export a model (and train)


def pytest_collection_modifyitems(config, items):
    """`slow` = not in the inner loop: long or fuzz runs, and every test that needs an exported model."""
    for item in items:
        if (item.get_closest_marker("long") or item.get_closest_marker("fuzz") or item.get_closest_marker("arm64")
                or EXPORTED & set(getattr(item, "fixturenames", ()))):
            item.add_marker(pytest.mark.slow)


@dataclass
class Built:
    name: str
    family: str  # "causal-lm" | "image"
    subject: object  # ExportSubject
    base_dir: Path
    peft_dirs: dict  # task -> PEFT checkpoint dir
    blobs: dict  # task -> packed blob path
    inputs: dict  # sample inputs (numpy)


def _build(name: str, tmp: Path) -> Built:
    from shira_models import get_spec
    from shira_toolchain.train import peft_shira
    from shira_toolchain.export import export_model
    from shira_toolchain.model_source import resolve
    from shira_toolchain.pack import pack_peft_shira

    subject = resolve(name)
    base = tmp / "base"
    export_model(subject, base, log=lambda *a: None)
    spec = get_spec(name)
    peft_dirs, blobs = {}, {}
    for i, task in enumerate(TASKS[name]):
        peft_dirs[task] = tmp / "peft" / task
        peft_shira.train_shira(spec.family, subject.model, task, peft_dirs[task], spec.peft_targets, r=1, steps=8, seed=i,
                               log=lambda *a: None)
        blobs[task] = pack_peft_shira(peft_dirs[task], base, tmp / f"{task}.shira").out
    sample = np.load(base / "sample.npz")
    inputs = {k.removeprefix("input:"): sample[k] for k in sample.files if k.startswith("input:")}
    return Built(name, spec.family, subject, base, peft_dirs, blobs, inputs)


@pytest.fixture(scope="session")
def llama(tmp_path_factory) -> Built:
    return _build("tiny-llama", tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def stylenet(tmp_path_factory) -> Built:
    return _build("style-net", tmp_path_factory.mktemp("style-net"))


@pytest.fixture(params=["onnxruntime", "executorch"])
def backend(request) -> str:
    return request.param


@pytest.fixture(params=["tiny-llama", "style-net"])
def built(request) -> Built:
    return request.getfixturevalue({"tiny-llama": "llama", "style-net": "stylenet"}[request.param])
