"""ONNX / TorchScript export: numerical agreement with PyTorch, dynamic batch, metadata, CLI, atomicity."""

from __future__ import annotations

import json
from pathlib import Path
import warnings

import numpy as np
import pytest
import torch

import poster
from poster.cli import main
from poster.errors import PosterError
from poster.meta import InputConfig, ModelMeta

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from poster.inference import export as export_mod  # noqa: E402
from poster.inference.export import (META_KEY, export_onnx, export_torchscript, read_onnx_meta, verify_onnx,  # noqa: E402
                           verify_torchscript)
from poster.inference.runtime import OnnxBackend, TorchScriptBackend, detect_runtime, load_backend  # noqa: E402

CLASSES = ("Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral")
META = ModelMeta(arch="poster_v1_tiny", num_classes=7, class_names=CLASSES,
                 input=InputConfig(channel_order="BGR", mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3)),
                 arch_options={"token_mixing": False}, source="unit-test", dataset="rafdb")


def _tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = poster.create_model("poster_v1_tiny").eval()
    # Random init leaves the logits ~0.1; make them larger and more varied so that a
    # mistake in the graph cannot hide under the tolerance.
    with torch.no_grad():
        model.head.linear.weight.mul_(20)
        model.head.linear.bias.uniform_(-1, 1)
    model.meta = META
    return model


def _inputs(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


def _torch_logits(model, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(x).numpy()


@pytest.fixture(scope="module")
def tiny():
    return _tiny_model()


@pytest.fixture(scope="module")
def tiny_onnx(tiny, tmp_path_factory):
    return export_onnx(tiny, tmp_path_factory.mktemp("onnx") / "tiny.onnx")


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny, tmp_path_factory):
    return poster.save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny_rafdb.pth", tiny, META)


# ---------------------------------------------------------------------------------------------
# Numerical agreement and dynamic batch


@pytest.mark.parametrize("batch", [1, 5])
def test_onnx_matches_pytorch_at_several_batch_sizes(tiny, tiny_onnx, batch):
    x = _inputs(batch, seed=batch)
    ref = _torch_logits(tiny, x)
    session = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])  # plain ORT, no helper
    out = session.run(["logits"], {"input": x.numpy()})[0]
    assert out.shape == (batch, 7)
    assert np.abs(ref).max() > 1.0  # the comparison is not between near-zero numbers
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-4 * max(1.0, np.abs(ref).max()))
    assert (out.argmax(1) == ref.argmax(1)).all()
    # the backend wrapper gives the same numbers, from torch and from numpy input
    backend = OnnxBackend(tiny_onnx)
    np.testing.assert_array_equal(backend(x).numpy(), out)
    np.testing.assert_array_equal(backend(x.numpy()).numpy(), out)


def test_graph_signature(tiny_onnx):
    model = onnx.load(str(tiny_onnx), load_external_data=False)
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.name == "input" and out.name == "logits"
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].HasField("dim_value")  # symbolic batch axis
    assert [d.dim_value for d in dims[1:]] == [3, 224, 224]
    assert out.type.tensor_type.shape.dim[0].dim_param == dims[0].dim_param
    assert out.type.tensor_type.shape.dim[1].dim_value == 7
    assert {o.domain: o.version for o in model.opset_import}[""] == export_mod.DEFAULT_OPSET


def test_verify_onnx_passes_and_detects_a_mismatch(tiny, tiny_onnx):
    diff = verify_onnx(tiny, tiny_onnx, batch_sizes=(1, 2))
    assert 0 <= diff < 1e-4
    other = _tiny_model()
    with torch.no_grad():
        other.head.linear.bias[3] += 0.01  # the file no longer matches this model
    with pytest.raises(PosterError, match="disagrees with PyTorch"):
        verify_onnx(other, tiny_onnx, batch_sizes=(1,))


def test_static_batch_export_of_a_model_without_meta(tmp_path):
    torch.manual_seed(2)
    model = poster.create_model("poster_v1_tiny", num_classes=5)
    assert model.training and not hasattr(model, "meta")
    path = export_onnx(model, tmp_path / "static.onnx", dynamic_batch=False, opset=17)
    assert model.training  # mode restored after the export
    proto = onnx.load(str(path))
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    assert {o.domain: o.version for o in proto.opset_import}[""] == 17
    backend = OnnxBackend(path)
    assert backend.fixed_batch == 1
    assert backend.meta.num_classes == 5 and backend.meta.class_names == tuple(f"class_{i}" for i in range(5))
    x = _inputs(3, seed=7)  # run one image at a time by the backend
    ref = _torch_logits(model.eval(), x)
    np.testing.assert_allclose(backend(x).numpy(), ref, atol=1e-4 * max(1.0, np.abs(ref).max()), rtol=0)


def test_backend_rejects_wrong_shapes(tiny_onnx):
    backend = OnnxBackend(tiny_onnx)
    with pytest.raises(PosterError, match="224x224"):
        backend(torch.zeros(1, 3, 112, 112))
    with pytest.raises(PosterError, match=r"\[B,3,S,S\]"):
        backend(torch.zeros(3, 224, 224))


# ---------------------------------------------------------------------------------------------
# Metadata


def test_metadata_round_trip(tiny_onnx):
    props = {p.key: p.value for p in onnx.load(str(tiny_onnx), load_external_data=False).metadata_props}
    stored = json.loads(props[META_KEY])  # plain JSON, readable without this package
    assert stored["class_names"] == list(CLASSES)
    assert stored["input"]["channel_order"] == "BGR"
    assert stored["input"]["mean"] == [0.5, 0.4, 0.3] and stored["input"]["input_size"] == 224
    assert read_onnx_meta(tiny_onnx) == META
    backend = OnnxBackend(tiny_onnx)
    assert backend.meta == META
    assert backend.meta.class_names == CLASSES and backend.meta.input.channel_order == "BGR"


def test_foreign_onnx_file_is_refused(tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["logits"])], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 4, 4])])
    path = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    with pytest.raises(PosterError, match="not written by poster export"):
        OnnxBackend(path)


def test_load_backend_torch_and_onnx_agree(tiny, tiny_onnx, tiny_checkpoint):
    ckpt = tiny_checkpoint
    assert detect_runtime(tiny_onnx) == "onnx" and detect_runtime(ckpt) == "torch"
    torch_backend, torch_meta = load_backend(ckpt, runtime="torch")
    onnx_backend, onnx_meta = load_backend(tiny_onnx, runtime="auto", threads=1)
    assert torch_meta == onnx_meta == META
    x = _inputs(2, seed=3)
    a, b = torch_backend(x), onnx_backend(x.numpy())
    assert a.dtype == b.dtype == torch.float32 and a.shape == b.shape == (2, 7)
    torch.testing.assert_close(b, a, atol=1e-4 * max(1.0, float(a.abs().max())), rtol=0)
    with pytest.raises(PosterError, match="unknown runtime"):
        load_backend(tiny_onnx, runtime="tensorrt")


def test_recognizer_runs_on_the_onnx_backend(tiny, tiny_onnx):
    from poster.inference.recognizer import Recognizer

    backend = OnnxBackend(tiny_onnx)
    recognizer = Recognizer(backend, backend.meta, detector=None, prefetch=False)
    assert recognizer.class_names == CLASSES
    x = _inputs(2, seed=9)
    probs = recognizer.probabilities(x)
    expected = torch.softmax(torch.from_numpy(_torch_logits(tiny, x)).double(), dim=1).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------
# Real faces


def test_real_faces_onnx_matches_pytorch(fer2013_dir, tmp_path):
    from poster.data import EvalTransform, load_image

    model = _tiny_model(seed=1)
    landmark = fer2013_dir.parents[1] / "weights" / "mobilefacenet_landmark68_from_openvino.pth.tar"
    if landmark.is_file():  # realistic activations in the landmark branch
        poster.load_backbone_weights(model, landmark=landmark)
        model.eval()
    meta = model.meta
    files = [sorted((fer2013_dir / "val" / c).glob("*.jpg"))[0] for c in ("angry", "happy", "sad", "surprise")]
    transform = EvalTransform(meta.input)
    x = torch.stack([transform(load_image(f, meta.input.channel_order)) for f in files])
    assert x.shape == (4, 3, 224, 224)
    path = export_onnx(model, tmp_path / "faces.onnx")
    ref = _torch_logits(model, x)
    out = OnnxBackend(path)(x).numpy()
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-4 * max(1.0, np.abs(ref).max()))
    assert (out.argmax(1) == ref.argmax(1)).all()


# ---------------------------------------------------------------------------------------------
# Full-size models (random init)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["poster_v2", "poster_v1_large"])
def test_full_models_export_and_verify(arch, tmp_path):
    torch.manual_seed(0)
    model = poster.create_model(arch).eval()
    path = export_onnx(model, tmp_path / f"{arch}.onnx")
    diff = verify_onnx(model, path, batch_sizes=(1, 2))
    assert diff < 1e-4
    assert read_onnx_meta(path).num_classes == 7
    path.unlink()


@pytest.mark.slow
def test_dynamo_exporter(tiny, tmp_path):
    pytest.importorskip("onnxscript")
    path = export_onnx(tiny, tmp_path / "dynamo.onnx", exporter="dynamo")
    assert read_onnx_meta(path) == META
    assert verify_onnx(tiny, path, batch_sizes=(1, 3)) < 1e-3


# ---------------------------------------------------------------------------------------------
# TorchScript


def test_torchscript_export_round_trip(tiny, tmp_path):
    path = export_torchscript(tiny, tmp_path / "tiny.torchscript.pt")
    assert detect_runtime(path) == "torch"  # code never runs unless asked for: TorchScriptBackend below
    backend = TorchScriptBackend(path)
    assert backend.meta == META
    assert verify_torchscript(tiny, path, batch_sizes=(1, 3)) < 1e-4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.load is deprecated in torch 2.9+
        plain = torch.jit.load(str(path))  # usable without this package
    x = _inputs(2, seed=5)
    with torch.no_grad():
        np.testing.assert_allclose(plain(x).numpy(), _torch_logits(tiny, x), atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------------
# Atomicity


def _boom(*args, **kwargs):
    raise RuntimeError("simulated crash")


def _files(folder):
    return sorted(p.name for p in folder.rglob("*") if p.is_file())


def test_failed_export_leaves_no_file(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(export_mod, "_export_legacy", _boom)  # the exporter dies
    target = tmp_path / "out" / "model.onnx"
    with pytest.raises(PosterError, match="simulated crash"):
        export_onnx(tiny, target, exporter="legacy")
    assert not target.exists() and _files(tmp_path) == []

    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"previous export")
    with pytest.raises(PosterError, match="simulated crash"):
        export_onnx(tiny, target, exporter="legacy")
    assert target.read_bytes() == b"previous export"  # an old file is kept whole
    assert _files(tmp_path) == ["model.onnx"]


def test_crash_while_writing_leaves_no_partial_file(tiny, tmp_path, monkeypatch):
    import poster.fileio as fileio

    monkeypatch.setattr(fileio.os, "replace", _boom)  # dies after the temp file is written
    target = tmp_path / "model.onnx"
    with pytest.raises(RuntimeError, match="simulated crash"):
        export_onnx(tiny, target)
    monkeypatch.undo()
    assert _files(tmp_path) == []  # neither the target nor the temporary file


# ---------------------------------------------------------------------------------------------
# CLI


def test_cli_export_onnx(tiny, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "exported" / "tiny.onnx"
    rc = main(["export", "-c", str(tiny_checkpoint), "--format", "onnx", "-o", str(out), "--batch-sizes", "1,2"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "logit difference" in printed and "batch sizes 1,2" in printed
    diff = float(printed.split("logit difference: ")[1].split()[0])
    assert 0 <= diff < 1e-4
    assert f"wrote {out}" in printed and "MB" in printed
    assert read_onnx_meta(out).class_names == CLASSES
    x = _inputs(2, seed=11)
    np.testing.assert_allclose(OnnxBackend(out)(x).numpy(), _torch_logits(tiny, x), atol=1e-3, rtol=0)


def test_cli_export_torchscript_no_verify(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "tiny.torchscript.pt"
    rc = main(["export", "-c", str(tiny_checkpoint), "--format", "torchscript", "-o", str(out), "--no-verify"])
    assert rc == 0 and out.is_file()
    assert "not verified" in capsys.readouterr().out


def test_cli_failed_verification_removes_the_file(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    def fail(*args, **kwargs):
        raise PosterError("ONNX file disagrees with PyTorch at batch 1: max |difference| 3 > tolerance 1e-4")

    monkeypatch.setattr(export_mod, "verify_onnx", fail)
    out = tmp_path / "bad.onnx"
    assert main(["export", "-c", str(tiny_checkpoint), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "disagrees" in err and "removed" in err
    assert not out.exists()


def test_cli_failed_verification_keeps_the_file_it_would_replace(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    def fail(*args, **kwargs):
        raise PosterError("ONNX file disagrees with PyTorch at batch 1: max |difference| 3 > tolerance 1e-4")

    monkeypatch.setattr(export_mod, "verify_onnx", fail)
    out = tmp_path / "good.onnx"
    out.write_bytes(b"the previous export")
    assert main(["export", "-c", str(tiny_checkpoint), "-o", str(out), "--force"]) == 1
    assert "left as it was" in capsys.readouterr().err
    assert out.read_bytes() == b"the previous export" and sorted(p.name for p in tmp_path.iterdir()) == ["good.onnx"]


def _no_model_loading(monkeypatch):
    """Fail the test if the export gets as far as loading the checkpoint (the slow part)."""
    from poster.checkpoint import loading

    def loaded(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded before the destination was checked")

    monkeypatch.setattr(loading, "load_model", loaded)


@pytest.mark.parametrize("case", ["existing file", "under a file", "folder that takes no files"])
def test_cli_export_checks_the_destination_before_any_work(tiny_checkpoint, tmp_path, monkeypatch, capsys, case):
    _no_model_loading(monkeypatch)
    (tmp_path / "a_file").write_bytes(b"mine")
    out, expected = {
        "existing file": (tmp_path / "a_file", f"{tmp_path / 'a_file'} exists; use --force to replace it"),
        "under a file": (tmp_path / "a_file" / "x.onnx", f"{tmp_path / 'a_file'} is not a folder"),
        "folder that takes no files": (Path("/proc/x.onnx"), "the folder /proc does not take new files"),
    }[case]
    if case == "folder that takes no files" and not Path("/proc/self").is_dir():
        pytest.skip("no /proc file system here")
    assert main(["export", "-c", str(tiny_checkpoint), "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ") and expected in err, err
    assert ".tmp" not in err and (tmp_path / "a_file").read_bytes() == b"mine"


def test_cli_export_into_a_folder_and_force(tiny_checkpoint, tmp_path, capsys):
    folder = tmp_path / "exports"
    folder.mkdir()
    args = ["export", "-c", str(tiny_checkpoint), "-f", "torchscript", "--no-verify", "-o", str(folder)]
    assert main(args) == 0
    written = folder / "tiny_rafdb.torchscript.pt"
    assert f"wrote {written}" in capsys.readouterr().out
    written.write_bytes(b"stale")
    assert main(args) == 1 and "use --force" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0 and written.read_bytes() != b"stale"
    assert TorchScriptBackend(written).meta.class_names == CLASSES


def test_cli_export_errors(tiny_checkpoint, tmp_path, capsys):
    assert main(["export", "-c", str(tmp_path / "missing.pth"), "-o", str(tmp_path / "x.onnx")]) == 1
    assert "no such file" in capsys.readouterr().err
    assert main(["export", "-c", str(tiny_checkpoint), "-o", str(tmp_path / "x.onnx"), "--opset", "9"]) == 1
    assert "opset 9" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()
    with pytest.raises(SystemExit):
        main(["export", "-c", str(tiny_checkpoint), "--batch-sizes", "0,2"])
