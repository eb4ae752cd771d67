"""Hostile model files (security round 2): each reproduction of a finding is a test here.

Every file below is small and crafted; the assertion is always the same shape: one
``CheckpointError`` / ``PosterError`` naming the file (or a clean one-line CLI error), no code from
the file run, no process killed by a signal, nothing allocated that the file did not pay for.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
import time
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

import poster
from poster.checkpoint.formats import read_weight_file
from poster.checkpoint.safe_load import read_checkpoint
from poster.cli import main
from poster.errors import CheckpointError, PosterError
from poster.checkpoint.releases import BUNDLED_MODEL
from test_safe_load import (BUILD, G, PROTO2, REDUCE, STOP, TUPLE1, U, legacy_with_pickle,  # noqa: E402
                            torch_zip_with_pickle)

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
TUPLE3 = b"\x87"
NONE = b"N"
MARK = b"("
TUPLE = b"t"
BININT = b"J"


def _refused(path, *words, cls=CheckpointError):
    with pytest.raises(cls) as ei:
        read_weight_file(path)
    msg = str(ei.value)
    assert str(path) in msg, msg
    for w in words:
        assert w in msg.lower(), msg
    return msg


# ---------------------------------------------------------------------------------------------
# Finding 1: a TorchScript archive given as a checkpoint runs code


MAKE_TORCHSCRIPT = textwrap.dedent('''
    import sys, warnings
    import torch
    warnings.simplefilter("ignore")


    class Payload(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.note = "x"

        def forward(self, x):
            return x.mean(dim=(2, 3)).repeat(1, 3)[:, :7]

        @torch.jit.export
        def __getstate__(self):
            return (self.note, self.training)

        @torch.jit.export
        def __setstate__(self, state: tuple[str, bool]):
            self.note = state[0]
            self.training = state[1]
            print("PAYLOAD-RAN")  # stands for anything TorchScript can do at load time


    torch.jit.save(torch.jit.script(Payload()), sys.argv[1], _extra_files={"poster.meta": sys.argv[2]})
''')


@pytest.fixture(scope="module")
def torchscript_payload(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ts")
    script = folder / "make.py"
    script.write_text(MAKE_TORCHSCRIPT)
    meta = poster.ModelMeta(arch="poster_v1_tiny", num_classes=7, class_names=[f"c{i}" for i in range(7)])
    out = folder / "model.pth"  # named like a checkpoint, carries valid poster metadata
    subprocess.run([sys.executable, str(script), str(out), json.dumps(meta.to_dict())], check=True, env=ENV,
                   timeout=300, capture_output=True)
    return out


def _poster(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "poster", *args], env=ENV, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_torchscript_checkpoint_never_runs_by_default(torchscript_payload, tmp_path):
    image = ROOT / "examples" / "astronaut.jpg"
    for args in (["predict", str(image), "-c", str(torchscript_payload), "-o", str(tmp_path / "p")],
                 ["export", "-c", str(torchscript_payload), "-o", str(tmp_path / "x.onnx")]):
        proc = _poster(*args)
        assert proc.returncode != 0
        assert "PAYLOAD-RAN" not in proc.stdout + proc.stderr
        assert "TorchScript" in proc.stderr and "Traceback" not in proc.stderr
    # Control: asked for by name, the same file does run (so the test above can fail).
    proc = _poster("predict", str(image), "-c", str(torchscript_payload), "--runtime", "torchscript",
                   "--detector", "none", "-o", str(tmp_path / "q"), "--no-annotate")
    assert "PAYLOAD-RAN" in proc.stdout


def test_auto_runtime_never_picks_torchscript(torchscript_payload):
    from poster.inference.runtime import detect_runtime, load_backend

    assert detect_runtime(torchscript_payload) == "torch"
    with pytest.raises(CheckpointError, match="TorchScript"):
        load_backend(torchscript_payload)


# ---------------------------------------------------------------------------------------------
# Finding 2: numpy dtype states that crash numpy


def _dtype_pickle(code: str, state: bytes) -> bytes:
    return (PROTO2 + G("numpy", "dtype") + U(code) + b"\x89\x88" + TUPLE3 + REDUCE  # dtype(code, False, True)
            + state + BUILD + STOP)


def test_datetime_dtype_state_does_not_kill_the_process(tmp_path):
    # (3, '<', None, None, None, -1, -1, 0) on a datetime64 dtype: numpy itself segfaults on it.
    state = MARK + b"K\x03" + U("<") + NONE + NONE + NONE + b"J\xff\xff\xff\xff" * 2 + b"K\x00" + TUPLE
    path = torch_zip_with_pickle(tmp_path / "dt.pth", _dtype_pickle("M8", state))
    code = f"from poster.checkpoint.safe_load import read_checkpoint\nread_checkpoint({str(path)!r})"
    proc = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-500:])  # an exception, not a signal
    assert "CheckpointError" in proc.stderr and "not a plain numeric dtype" in proc.stderr


@pytest.mark.parametrize("code,state", [
    ("f4", MARK + b"K\x03" + U("<") + NONE + NONE + NONE + b"K\x10" + b"K\x04" + b"K\x00" + TUPLE),  # elsize 16
    ("f4", MARK + b"K\x03" + U("<") + U("names") + NONE + NONE + b"J\xff\xff\xff\xff" * 2 + b"K\x00" + TUPLE),
    ("f4", NONE),
])
def test_plain_dtype_with_a_made_up_state_refused(tmp_path, code, state):
    path = torch_zip_with_pickle(tmp_path / "d.pth", _dtype_pickle(code, state))
    with pytest.raises(CheckpointError, match="unexpected state"):
        read_checkpoint(path)


def _latin1(text: str) -> bytes:
    """Protocol-2 bytes, as numpy's pickles write them: _codecs.encode(text, 'latin1')."""
    return G("_codecs", "encode") + U(text) + U("latin1") + b"\x86" + REDUCE


def test_numpy_array_data_must_match_its_shape(tmp_path):
    # shape (2**40,) with 4 bytes of data: numpy would be asked to build a huge view
    dtype = G("numpy", "dtype") + U("f4") + b"\x89\x88" + TUPLE3 + REDUCE + MARK + b"K\x03" + U("<") + NONE * 3 \
        + b"J\xff\xff\xff\xff" * 2 + b"K\x00" + TUPLE + BUILD
    shape = b"\x8a\x06" + (2 ** 40).to_bytes(6, "little") + TUPLE1
    pkl = (PROTO2 + G("numpy._core.multiarray", "_reconstruct") + G("numpy", "ndarray") + b"K\x00" + TUPLE1
           + _latin1("b") + TUPLE3 + REDUCE + MARK + b"K\x01" + shape + dtype + b"\x89" + _latin1("abcd") + TUPLE
           + BUILD + STOP)
    path = torch_zip_with_pickle(tmp_path / "arr.pth", pkl)
    with pytest.raises(CheckpointError, match="bytes of data"):
        read_checkpoint(path)


# ---------------------------------------------------------------------------------------------
# Finding 4: small files that ask for gigabytes


def test_bytearray_of_two_gib_refused_before_allocating(tmp_path):
    pkl = PROTO2 + G("builtins", "bytearray") + BININT + struct.pack("<i", 2**31 - 1) + TUPLE1 + REDUCE + STOP
    path = torch_zip_with_pickle(tmp_path / "ba.pth", pkl)
    assert path.stat().st_size < 2000
    with pytest.raises(CheckpointError, match="forbidden global.*bytearray"):
        read_checkpoint(path)


def test_compressed_storage_record_refused(tmp_path):
    plain = tmp_path / "plain.pth"
    torch.save({"w": torch.zeros(4 * 1024 * 1024)}, plain)  # 16 MB of zeros
    packed = tmp_path / "packed.pth"
    with zipfile.ZipFile(plain) as zi, zipfile.ZipFile(packed, "w") as zo:
        for info in zi.infolist():
            kind = zipfile.ZIP_DEFLATED if "/data/" in info.filename else zipfile.ZIP_STORED
            zo.writestr(info.filename, zi.read(info.filename), compress_type=kind)
    assert packed.stat().st_size < 200_000
    msg = _refused(packed, "compressed")
    assert "data/0" in msg


def _storage_pid_pickle(numel: int, legacy: bool) -> bytes:
    """_rebuild_tensor_v2(<FloatStorage '0' of numel>, 0, (numel,), (1,), False, OrderedDict())."""
    numel_op = b"\x8a\x08" + numel.to_bytes(8, "little")
    pid = MARK + U("storage") + G("torch", "FloatStorage") + U("0") + U("cpu") + numel_op
    pid += (NONE + TUPLE) if legacy else TUPLE
    return (PROTO2 + G("torch._utils", "_rebuild_tensor_v2") + MARK + pid + b"Q" + b"K\x00" + numel_op + TUPLE1
            + b"K\x01" + TUPLE1 + b"\x89" + G("collections", "OrderedDict") + b")" + REDUCE + TUPLE + REDUCE + STOP)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_storage_sizes_beyond_the_file_refused(tmp_path, legacy):
    pkl = _storage_pid_pickle(2**34, legacy)  # 64 GiB of floats declared by a file of a few hundred bytes
    path = (legacy_with_pickle if legacy else torch_zip_with_pickle)(tmp_path / "big.pth", pkl)
    with pytest.raises(CheckpointError, match="declare more bytes than the file holds"):
        read_checkpoint(path)


def test_zero_stride_giant_view_refused(tmp_path):
    path = tmp_path / "view.pth"
    torch.save({"w": torch.zeros(1).expand(2**20, 2**20)}, path)  # 1 float pretending to be 4 TiB
    assert path.stat().st_size < 5000
    _refused(path, "overlapping strides")


def _quantized() -> torch.Tensor:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantized tensors are deprecated in torch; old files still hold them
        return torch.quantize_per_tensor(torch.ones(3), 0.1, 0, torch.quint8)


def test_meta_sparse_and_quantized_tensors_refused(tmp_path):
    for name, tensor in (("meta", torch.empty(3, device="meta")), ("sparse", torch.eye(3).to_sparse()),
                         ("quantized", _quantized())):
        path = tmp_path / f"{name}.pth"
        torch.save({"w": tensor}, path)
        _refused(path, "forbidden global")


def _bundled() -> dict:
    return read_checkpoint(BUNDLED_MODEL)


def _write(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def test_class_count_is_checked_against_the_weights_before_building(tmp_path):
    obj = _bundled()
    obj["meta"]["num_classes"] = 2_000_000
    obj["meta"]["class_names"] = ["x"] * 2_000_000
    path = _write(tmp_path / "classes.pth", obj)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="num_classes must be an int from 1 to 1000"):
        poster.load_model(path)
    assert time.perf_counter() - start < 30
    obj = _bundled()
    obj["meta"]["num_classes"], obj["meta"]["class_names"] = 9, [f"c{i}" for i in range(9)]
    with pytest.raises(CheckpointError, match="9 classes but the classifier weights have 7 rows"):
        poster.load_model(_write(tmp_path / "nine.pth", obj))


@pytest.mark.parametrize("field,value,words", [
    ("input_size", 60000, "input_size"),
    ("mean", [float("nan"), 0.5, 0.5], "finite"),
    ("std", [0.2, float("inf"), 0.2], "finite"),
    ("mean", "abc", "3 numbers"),
])
def test_input_metadata_bounded(tmp_path, field, value, words):
    obj = _bundled()
    obj["meta"]["input"][field] = value
    path = _write(tmp_path / "input.pth", obj)
    with pytest.raises(CheckpointError, match=words):
        poster.load_model(path)


@pytest.mark.parametrize("change,words", [
    (lambda m: m.update(arch="os_system"), "unknown architecture"),
    (lambda m: m.update(arch="poster_v1_tiny.x"), "arch must be an identifier"),
    (lambda m: m["arch_options"].update(depth=99), "unknown option 'depth'"),
    (lambda m: m["arch_options"].update(token_mixing="yes"), "token_mixing"),
    (lambda m: m["arch_options"].update(drop_path_rate=5.0), "drop_path_rate"),
    (lambda m: m.update(num_classes=1e999), "num_classes"),
    (lambda m: m.update(num_classes="7"), "num_classes"),
    (lambda m: m.update(class_names=["\x1b[31mred\x1b[0m"] + ["x"] * 6), "control characters"),
    (lambda m: m.update(class_names=["a\nSummary: forged"] + ["x"] * 6), "control characters"),
    (lambda m: m.update(class_names=None), "class_names"),
    (lambda m: m.pop("arch"), "lacks"),
    (lambda m: m.update(input=[1, 2]), "input config must be a dict"),
])
def test_damaged_metadata_is_a_checkpoint_error(tmp_path, change, words):
    obj = _bundled()
    change(obj["meta"])
    path = _write(tmp_path / "meta.pth", obj)
    with pytest.raises(CheckpointError) as ei:
        poster.load_model(path)
    assert str(path) in str(ei.value) and words in str(ei.value), str(ei.value)


def test_non_finite_weights_refused_with_the_count(tmp_path):
    obj = _bundled()
    w = obj["state_dict"]["head.linear.weight"]
    w[0, :3] = float("nan")
    w[1, 0] = float("inf")
    path = _write(tmp_path / "nan.pth", obj)
    msg = str(pytest.raises(CheckpointError, poster.load_model, path).value)
    assert "4 weights are NaN or infinite" in msg and "head.linear.weight (4)" in msg


def test_ordered_dict_with_shadowing_attributes(tmp_path):
    from test_safe_load import rewrite_data_pkl

    sd = poster.create_model("poster_v1_tiny").state_dict()
    assert isinstance(sd, OrderedDict) and hasattr(sd, "_metadata")  # pickled through BUILD
    plain = _write(tmp_path / "plain.pth", sd)
    path = tmp_path / "shadow.pth"
    # Rename the instance attribute '_metadata' to 'get': the loaded dict's .get is then a dict, not a method.
    rewrite_data_pkl(plain, path, lambda b: b.replace(b"X\x09\x00\x00\x00_metadata", b"X\x03\x00\x00\x00get"))
    raw = torch.load(path, weights_only=True)
    assert not callable(raw.get)  # control: the attack is real
    wf = read_weight_file(path)  # read as the plain state dict it is
    assert wf.kind == "state_dict" and set(wf.state_dict) == set(sd)


def test_deep_nesting_refused(tmp_path):
    depth = 100_000
    pkl = PROTO2 + b"]" * depth + b"a" * (depth - 1) + STOP  # a list inside a list ... 100,000 deep
    path = torch_zip_with_pickle(tmp_path / "deep.pth", pkl)
    with pytest.raises(CheckpointError, match="nested"):
        read_checkpoint(path)


# ---------------------------------------------------------------------------------------------
# ONNX files: metadata and outputs are untrusted too

onnx = pytest.importorskip("onnx")


def _tiny_onnx(path: Path, meta_text: str | None, weight: np.ndarray | None = None, external: bool = False) -> Path:
    """[B,3,S,S] -> global average pool -> [B,3] @ W[3,7]: a valid 7-class model in a few hundred bytes."""
    from onnx import TensorProto, helper, numpy_helper

    w = weight if weight is not None else np.arange(21, dtype=np.float32).reshape(3, 7) / 10
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["x"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
         helper.make_node("MatMul", ["f", "w"], ["logits"])],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", 7])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    if meta_text is not None:
        helper.set_model_props(model, {"poster.meta": meta_text})
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, location="weights.bin", size_threshold=0)
    else:
        onnx.save_model(model, str(path))
    return path


def _meta_text(**changes) -> str:
    meta = poster.ModelMeta(arch="poster_v1_tiny", num_classes=7, class_names=[f"c{i}" for i in range(7)]).to_dict()
    meta.update(changes)
    return json.dumps(meta)


def test_onnx_metadata_hostile(tmp_path):
    pytest.importorskip("onnxruntime")
    from poster.inference.runtime import OnnxBackend

    deep = '{"arch": ' + "[" * 100_000 + "]" * 100_000 + "}"
    for name, text, words in (("deep", deep, "malformed"),
                              ("inf", _meta_text().replace('"num_classes": 7', '"num_classes": 1e999'), "num_classes"),
                              ("ansi", _meta_text(class_names=["\x1b]0;x\x07"] * 7), "control characters")):
        path = _tiny_onnx(tmp_path / f"{name}.onnx", text)
        with pytest.raises(PosterError, match=words) as ei:
            OnnxBackend(path)
        assert str(path) in str(ei.value)
    assert OnnxBackend(_tiny_onnx(tmp_path / "ok.onnx", _meta_text())).meta.num_classes == 7  # control


def test_onnx_external_data_refused_unless_allowed(tmp_path):
    pytest.importorskip("onnxruntime")
    from poster.inference.runtime import OnnxBackend

    path = _tiny_onnx(tmp_path / "ext.onnx", _meta_text(), external=True)
    assert (tmp_path / "weights.bin").is_file()
    with pytest.raises(PosterError, match="external files"):
        OnnxBackend(path)
    assert OnnxBackend(path, allow_external_data=True).meta.num_classes == 7


def test_model_with_nan_outputs_stops_cleanly(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    path = _tiny_onnx(tmp_path / "nan.onnx", _meta_text(), weight=np.full((3, 7), np.nan, np.float32))
    out = tmp_path / "run"
    code = main(["predict", str(ROOT / "examples" / "astronaut.jpg"), "-c", str(path), "--detector", "none",
                 "-o", str(out), "--no-annotate"])
    err = capsys.readouterr().err
    assert code == 1 and "NaN or infinite outputs" in err and "Traceback" not in err
    for file in out.rglob("results*"):
        assert "NaN" not in file.read_text() and "Infinity" not in file.read_text()
