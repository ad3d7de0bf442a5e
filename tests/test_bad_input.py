"""Bad adapters and bad requests: one clear line naming the file and the problem; weights untouched."""
import json

import numpy as np
import pytest

from shira_runtime import AdapterError, ShiraSession, read_adapter
from shira_format.adapter import SparseTensor, encode_adapter
from shira_toolchain.pack import PackError, pack_peft_shira

from .helpers import snapshot, write_peft_layout_checkpoint


@pytest.fixture
def session_with_active(llama, backend):
    """A session with an adapter active: a refusal must leave the PATCHED weights as they were too."""
    sess = ShiraSession(llama.base_dir, backend=backend)
    sess.load(llama.blobs["zen"], name="zen")
    sess.switch("zen")
    return sess


def _good_delta(sess, target="model.layers.0.self_attn.q_proj.weight", nnz=20):
    shape = sess.manifest.tensors[target].shape
    idx = np.sort(np.random.default_rng(0).choice(int(np.prod(shape)), nnz, replace=False))
    return SparseTensor(target, shape, idx, np.full(nnz, 0.25, np.float32))


def _refused(sess, blob, tmp_path, needle: str):
    path = tmp_path / "bad.shira"
    path.write_bytes(blob)
    before, active = snapshot(sess), dict(sess.active)
    with pytest.raises(AdapterError) as e:
        sess.load(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and needle in msg, msg
    assert snapshot(sess) == before and sess.active == active
    return msg


def test_wrong_base_fingerprint(session_with_active, tmp_path):
    s = session_with_active
    blob = encode_adapter("x", "sha256:" + "0" * 64, [_good_delta(s)], "f32", "flat-u32")
    _refused(s, blob, tmp_path, "made for base")


def test_adapter_for_another_model_is_refused(session_with_active, stylenet, tmp_path):
    _refused(session_with_active, stylenet.blobs["invert"].read_bytes(), tmp_path, "made for base")


@pytest.mark.parametrize("cut", [0, 7, 8, 100, -1, -4])
def test_truncated_blob(session_with_active, llama, tmp_path, cut):
    data = llama.blobs["json-doc"].read_bytes()
    data = data[:cut] if cut >= 0 else data[:len(data) + cut]
    _refused(session_with_active, data, tmp_path, "")


def test_flipped_byte_fails_checksum(session_with_active, llama, tmp_path):
    data = bytearray(llama.blobs["json-doc"].read_bytes())
    data[-10] ^= 0x40
    _refused(session_with_active, bytes(data), tmp_path, "checksum")


def test_out_of_range_index(session_with_active, tmp_path):
    s = session_with_active
    d = _good_delta(s)
    d.indices[-1] = int(np.prod(d.shape))
    _refused(s, encode_adapter("x", s.manifest.base_fingerprint, [d], "f32", "flat-u32"), tmp_path, "out of range")


def test_nan_value(session_with_active, tmp_path):
    s = session_with_active
    d = _good_delta(s)
    d.values[3] = np.nan
    _refused(s, encode_adapter("x", s.manifest.base_fingerprint, [d], "f32", "flat-u32"), tmp_path, "non-finite")


def test_unknown_module(session_with_active, tmp_path):
    s = session_with_active
    d = _good_delta(s)
    d = SparseTensor("model.layers.9.mlp.up_proj.weight", d.shape, d.indices, d.values)
    _refused(s, encode_adapter("x", s.manifest.base_fingerprint, [d], "f32", "flat-u32"), tmp_path, "not a patchable tensor")


def test_unsorted_or_duplicate_indices(session_with_active, tmp_path):
    s = session_with_active
    d = _good_delta(s)
    d.indices[5] = d.indices[4]
    _refused(s, encode_adapter("x", s.manifest.base_fingerprint, [d], "f32", "flat-u32"), tmp_path, "strictly increasing")


def test_unknown_version(session_with_active, llama, tmp_path):
    data = llama.blobs["zen"].read_bytes().replace(b'"shira.version":"1"', b'"shira.version":"9"')
    _refused(session_with_active, data, tmp_path, "unsupported format version")


def test_bad_fuse_requests_leave_weights_untouched(session_with_active, llama):
    s = session_with_active
    before = snapshot(s)
    with pytest.raises(AdapterError, match="not loaded"):
        s.fuse({"zen": 1.0, "nope": 1.0})
    with pytest.raises(AdapterError, match="not finite"):
        s.fuse({"zen": float("nan")})
    s.load(llama.blobs["json-doc"], name="big")
    with pytest.raises(AdapterError, match="non-finite weights"):
        s.fuse({"big": 1e300})
    with pytest.raises(AdapterError, match="non-finite weights"):
        s.fuse({"big": 1e300, "zen": 1.0})
    assert snapshot(s) == before and s.active == {"zen": 1.0}


@pytest.mark.parametrize("case,needle", [
    ("range", "out of range"), ("nan", "non-finite"), ("module", "made for another model"), ("dup", "listed twice"),
    ("shape", "[2, nnz]")])
def test_pack_refuses_bad_peft_checkpoints_naming_the_module(llama, tmp_path, case, needle):
    rows, cols, vals = np.array([0, 1, 2]), np.array([3, 4, 5]), np.array([0.1, 0.2, 0.3], np.float32)
    module = "model.layers.1.mlp.down_proj"
    if case == "range":
        cols = np.array([3, 4, 352])  # down_proj is [128, 352]
    elif case == "nan":
        vals[1] = np.inf
    elif case == "module":
        module = "model.layers.1.mlp.not_there"
    elif case == "dup":
        rows, cols = np.array([0, 0, 2]), np.array([3, 3, 5])
    ckpt = write_peft_layout_checkpoint(tmp_path / "c", {module: (rows, cols, vals)})
    if case == "shape":
        from safetensors.numpy import load_file, save_file

        st = load_file(str(ckpt / "adapter_model.safetensors"))
        st[f"base_model.model.{module}.shira_weight"] = vals[:2]
        save_file(st, str(ckpt / "adapter_model.safetensors"))
    out = tmp_path / "o.shira"
    with pytest.raises(PackError) as e:
        pack_peft_shira(ckpt, llama.base_dir, out)
    msg = str(e.value)
    assert "\n" not in msg and needle in msg and (module in msg), msg
    assert not out.exists()


def test_pack_accepts_windows_float_indices(llama, tmp_path):
    """PEFT on Windows saves shira_indices as float32; they pack to the same blob."""
    rows, cols, vals = np.array([0, 5]), np.array([1, 2]), np.array([0.5, -0.5], np.float32)
    m = "model.layers.0.mlp.up_proj"
    a = pack_peft_shira(write_peft_layout_checkpoint(tmp_path / "i", {m: (rows, cols, vals)}), llama.base_dir,
                        tmp_path / "i.shira", name="x").out.read_bytes()
    b = pack_peft_shira(write_peft_layout_checkpoint(tmp_path / "f", {m: (rows, cols, vals)}, index_dtype=np.float32),
                        llama.base_dir, tmp_path / "f.shira", name="x").out.read_bytes()
    assert a == b


def test_blob_metadata_is_bound_to_base(llama):
    from shira_format.safetensors_file import read_file

    meta = read_file(llama.blobs["zen"]).metadata
    manifest = json.loads((llama.base_dir / "manifest.json").read_text())
    assert meta["shira.base_fingerprint"] == manifest["base_fingerprint"]
    adapter = read_adapter(llama.blobs["zen"])
    assert adapter.nnz == sum(e["nnz"] for e in json.loads(meta["shira.tensors"]))


def test_a_wrong_input_name_is_one_clear_line(session_with_active, llama):
    from shira_format.errors import ShiraError

    ids = next(iter(llama.inputs.values()))
    with pytest.raises(ShiraError) as e:
        session_with_active.run({"input_id": ids})
    msg = str(e.value)
    assert "\n" not in msg and "no value for input 'input_ids'" in msg and "'input_id'" in msg, msg
