"""The command line under bad input: one `error:` line on stderr, exit 2 (1 for the unexpected), never a
traceback; and no third-party noise a user cannot act on. Commands run in-process through their real entry
points (the same functions the console scripts call), so each case costs no interpreter start-up."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shira_toolchain import cli


def run_cli(entry, args, capsys, monkeypatch) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", [entry.__name__, *args])
    with pytest.raises(SystemExit) as e:
        entry()
    out, err = capsys.readouterr()
    return e.value.code, out, err


def assert_one_line(code, err, needle, want_code=2):
    lines = err.strip().splitlines()
    assert code == want_code and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert "Traceback" not in err


@pytest.fixture
def broken_base(llama, tmp_path):
    def make(damage):
        d = tmp_path / f"base-{damage}"
        shutil.copytree(llama.base_dir, d)
        if damage == "manifest-list":
            (d / "manifest.json").write_text("[]")
        elif damage == "weights-truncated":
            data = (d / "weights.safetensors").read_bytes()
            (d / "weights.safetensors").write_bytes(data[: len(data) // 3])
        elif damage == "weights-missing":
            (d / "weights.safetensors").unlink()
        return d
    return make


@pytest.mark.slow
def test_export_bad_regex(capsys, monkeypatch, tmp_path):
    code, _, err = run_cli(cli.export_main, ["model", "tiny-llama", "--out", str(tmp_path / "o"), "--targets", "("],
                           capsys, monkeypatch)
    assert_one_line(code, err, "not a valid regular expression")
    assert not (tmp_path / "o").exists()


def test_train_bad_regex(capsys, monkeypatch, tmp_path):
    code, _, err = run_cli(cli.train_main, ["tiny-llama", "--task", "zen", "--out", str(tmp_path / "o"),
                                            "--targets", "[a"], capsys, monkeypatch)
    assert_one_line(code, err, "not a valid regular expression")


@pytest.mark.parametrize("args,needle", [
    (["--task", "upper,reverse"], "only with --joint"),
    (["--task", "upper", "--joint"], "at least two"),
    (["--task", "upper,reverse", "--joint", "--mask", "rand"], "ranked by a score"),
    (["--task", "upper,sepia", "--joint", "--mask", "wm"], "unknown task 'sepia'"),
    (["--task", "upper,reverse", "--joint", "--mask", "wm", "--fused-weight", "-1"], "must be a finite number"),
])
def test_train_joint_bad_input(args, needle, capsys, monkeypatch, tmp_path):
    code, _, err = run_cli(cli.train_main, ["tiny-llama", *args, "--out", str(tmp_path / "o")], capsys, monkeypatch)
    assert_one_line(code, err, needle)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("model,spec,needle", [
    ("tests.factories:tiny_mlp", "x:axb", "positive integers"),
    ("tests.factories:tiny_mlp", "x:4x8:notadtype", "not a torch dtype"),
    ("tests.factories:tiny_mlp", "x:4x8:nn", "not a torch dtype"),
    ("tiny-llama", "input_ids:1x8:int64", "--input applies to package.module:factory"),
])
def test_export_bad_input_spec(capsys, monkeypatch, tmp_path, model, spec, needle):
    code, _, err = run_cli(cli.export_main, ["model", model, "--out", str(tmp_path / "o"), "--input", spec,
                                             "--format", "onnx"], capsys, monkeypatch)
    assert_one_line(code, err, needle)


def test_export_without_executorch_installed(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(cli, "_has_executorch", lambda: False)
    code, _, err = run_cli(cli.export_main, ["model", "style-net", "--out", str(tmp_path / "o")], capsys, monkeypatch)
    assert_one_line(code, err, "ExecuTorch is not installed")
    assert "--format onnx" in err


@pytest.mark.parametrize("damage,needle", [("manifest-list", "manifest.json"),
                                           ("weights-truncated", "weights.safetensors"),
                                           ("weights-missing", "weights.safetensors")])
def test_pack_with_a_broken_base(capsys, monkeypatch, llama, broken_base, tmp_path, damage, needle):
    from safetensors.torch import save_file

    ft = tmp_path / "ft.safetensors"
    save_file({k: v.contiguous() for k, v in llama.subject.model.state_dict().items()}, str(ft))
    base = broken_base(damage)
    for i, src in enumerate((str(llama.peft_dirs["zen"]), str(ft))):
        out = tmp_path / f"x{i}.shira"
        code, _, err = run_cli(cli.pack_main, ["adapter", src, "--base", str(base), "--out", str(out)],
                               capsys, monkeypatch)
        if damage != "manifest-list" and src != str(ft):
            continue  # a PEFT SHiRA checkpoint needs only the manifest; the fine-tune diff reads the weights
        assert_one_line(code, err, needle)
        assert not out.exists()


def test_inspect_garbage_and_a_directory(capsys, monkeypatch, tmp_path):
    (tmp_path / "g.shira").write_bytes(b"\xff" * 64)
    code, _, err = run_cli(cli.pack_main, ["inspect", str(tmp_path / "g.shira")], capsys, monkeypatch)
    assert_one_line(code, err, "g.shira")
    (tmp_path / "notes.txt").write_text("These are my notes about the adapters.\n")  # a file picked by mistake
    code, _, err = run_cli(cli.pack_main, ["inspect", str(tmp_path / "notes.txt")], capsys, monkeypatch)
    assert_one_line(code, err, "notes.txt: not a SHiRA adapter blob")


def test_peft_config_not_json(capsys, monkeypatch, llama, tmp_path):
    d = tmp_path / "ckpt"
    shutil.copytree(llama.peft_dirs["zen"], d)
    (d / "adapter_config.json").write_text("{nope")
    code, _, err = run_cli(cli.pack_main, ["adapter", str(d), "--base", str(llama.base_dir), "--out",
                                           str(tmp_path / "x.shira")], capsys, monkeypatch)
    assert_one_line(code, err, "adapter_config.json")


def test_unexpected_errors_are_one_line_too(capsys, monkeypatch, tmp_path):
    code, _, err = run_cli(cli.export_main, ["model", "tests.factories:raises", "--out", str(tmp_path / "o"),
                                             "--input", "x:1x4"], capsys, monkeypatch)
    assert_one_line(code, err, "unexpected RuntimeError: the factory failed", want_code=1)
    assert "SHIRA_DEBUG=1" in err


def test_peft_loads_a_shira_train_checkpoint_without_warnings(llama, tmp_path):
    """The project's own training facts live in shira_train.json, not in PEFT's adapter_config.json."""
    import warnings

    from peft import PeftModel

    from shira_toolchain.model_source import resolve
    from shira_toolchain.train import TrainConfig, train

    train(resolve("tiny-llama"), TrainConfig(task="zen", mask="rand", r=1, steps=2), tmp_path / "c",
          log=lambda *a: None)
    cfg = json.loads((tmp_path / "c" / "adapter_config.json").read_text())
    assert not [k for k in cfg if k.startswith("shira_")]
    assert json.loads((tmp_path / "c" / "shira_train.json").read_text())["mask_seeds"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        PeftModel.from_pretrained(resolve("tiny-llama").model, str(tmp_path / "c"))
    assert not [w for w in caught if "Unexpected keyword" in str(w.message)], [str(w.message) for w in caught]


def test_no_third_party_noise_on_stderr(llama, tmp_path):
    """ExecuTorch's cpuinfo lines and torchao's library-loading lines no longer reach the user; a real error
    on stderr still would (quiet.py only drops lines by known pattern)."""
    code = (f"from shira_runtime import ShiraSession\n"
            f"with ShiraSession({str(llama.base_dir)!r}, backend='executorch', threads=2) as s:\n"
            f"    s.load({str(llama.blobs['zen'])!r}); s.switch('zen')\n"
            "import os; os.write(2, b'a real problem\\n')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "a real problem\n", r.stderr
    r = subprocess.run([str(Path(sys.executable).parent / "shira-pack"), "inspect", str(llama.blobs["zen"])],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_train_data_that_is_not_text(capsys, monkeypatch, llama, tmp_path):
    code, _, err = run_cli(cli.train_main, ["tiny-llama", "--data", str(llama.base_dir / "weights.safetensors"),
                                            "--out", str(tmp_path / "t"), "--steps", "1"], capsys, monkeypatch)
    assert_one_line(code, err, "not UTF-8 text")


@pytest.mark.parametrize("args, needle", [
    (["model", "tiny-lama", "--out", "x"], "tiny-lama: not a built-in model"),
    (["model", "EMPTY", "--out", "x"], "no config.json"),
    (["model", "tiny-llama", "--hf-task", "causal-lm", "--out", "x"], "--hf-task applies to Hugging Face model directories"),
])
def test_export_refuses_a_bad_source_before_importing_torch(args, needle, tmp_path):
    """A typo costs a second, not the 15 s of importing torch and transformers first."""
    args = [str(tmp_path) if a == "EMPTY" else a for a in args]
    code = ("import atexit, sys; atexit.register(lambda: print('torch imported:', 'torch' in sys.modules)); "
            f"from shira_toolchain.cli import export_main; sys.argv = ['shira-export'] + {args!r}; export_main()")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "torch imported: False" in r.stdout, r.stdout


def test_a_usage_error_is_one_line(capsys, monkeypatch):
    code, _, err = run_cli(cli.export_main, ["model", "tiny-llama", "--out", "x", "--format", "nope"], capsys,
                           monkeypatch)
    assert_one_line(code, err, "model: Invalid value for '--format'")  # the program's name, then the command
