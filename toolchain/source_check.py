"""What `shira-export model` can refuse before it imports torch and transformers (15 s on a small machine): a
name that is neither a built-in model, a directory, nor package.module:factory; a directory without config.json;
an unknown --hf-task. The full checks stay in model_source.py; these only come first."""
from __future__ import annotations

from pathlib import Path

from shira_models.names import BUILTIN_NAMES

from .hf_tasks import TASKS


def early_refusal(model: str, task: str | None) -> str | None:
    """The one-line reason MODEL/--hf-task cannot be exported, where it needs no import to tell; else None."""
    path = Path(model)
    if task is not None and task not in TASKS:
        return f"--hf-task {task!r}: known tasks are {', '.join(TASKS)}"
    if path.is_dir():
        if not (path / "config.json").exists():
            return f"{model}: no config.json; not a Hugging Face model directory"
        return None
    if task is not None:
        return f"--hf-task applies to Hugging Face model directories only; {model} is not one"
    if model not in BUILTIN_NAMES and ":" not in model:
        return (f"{model}: not a built-in model ({', '.join(BUILTIN_NAMES)}), a local model directory, "
                "or package.module:factory")
    return None
