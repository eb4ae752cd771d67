"""Tests of poster.checkpoint.safe_load: the reader for untrusted checkpoint files."""

from __future__ import annotations

import pickle
import struct
import subprocess
import sys
import textwrap
import types
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from poster.checkpoint.safe_load import NUMPY_GLOBALS, Placeholder, read_checkpoint
from poster.errors import CheckpointError

# ---------------------------------------------------------------------------------------------------------------------
# helpers: hand-written pickles and torch zip archives around them
# ---------------------------------------------------------------------------------------------------------------------

PROTO2 = b"\x80\x02"
STOP = b"."
TUPLE1 = b"\x85"
REDUCE = b"R"
EMPTY_TUPLE = b")"
EMPTY_DICT = b"}"
EMPTY_LIST = b"]"
APPEND = b"a"
SETITEM = b"s"
NEWOBJ = b"\x81"
BUILD = b"b"
TUPLE2 = b"\x86"


def G(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def U(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def call(module: str, name: str, *str_args: str) -> bytes:
    """Pickle fragment that calls module.name(*str_args) (strings only)."""
    body = G(module, name)
    if len(str_args) == 1:
        return body + U(str_args[0]) + TUPLE1 + REDUCE
    assert len(str_args) == 2
    return body + U(str_args[0]) + U(str_args[1]) + TUPLE2 + REDUCE


def rewrite_data_pkl(src: Path, dst: Path, transform) -> None:
    """Copy the torch zip ``src`` to ``dst`` with data.pkl replaced by ``transform(old_bytes)``."""
    with zipfile.ZipFile(src) as zi, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zo:
        for info in zi.infolist():
            data = zi.read(info.filename)
            if info.filename.endswith("/data.pkl"):
                data = transform(data)
            zo.writestr(info.filename, data)


def torch_zip_with_pickle(path: Path, pkl: bytes) -> Path:
    """A genuine torch.save archive whose data.pkl is ``pkl``."""
    template = path.with_name(path.stem + "_template.pt")
    torch.save({}, template)
    rewrite_data_pkl(template, path, lambda _old: pkl)
    return path


def legacy_with_pickle(path: Path, pkl: bytes) -> Path:
    """A legacy (non-zip) torch file whose object pickle is ``pkl``."""
    sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
    path.write_bytes(
        pickle.dumps(torch.serialization.MAGIC_NUMBER, 2)
        + pickle.dumps(torch.serialization.PROTOCOL_VERSION, 2)
        + pickle.dumps(sys_info, 2)
        + pkl
        + pickle.dumps([], 2)
    )
    return path


# ---------------------------------------------------------------------------------------------------------------------
# V2-style checkpoint made by a separate interpreter (classes really live in __main__ there)
# ---------------------------------------------------------------------------------------------------------------------

V2_SCRIPT = textwrap.dedent(
    """
    import sys
    from collections import OrderedDict
    from unittest import mock
    import numpy as np
    import torch

    class AverageMeter:
        def __init__(self):
            self.val = 0.5
            self.count = 4

    class RecorderMeter:
        def __init__(self, total_epoch):
            self.total_epoch = total_epoch
            self.current_epoch = 2
            self.epoch_losses = np.arange(total_epoch * 2, dtype=np.float32).reshape(total_epoch, 2)
            self.epoch_accuracy = np.full((total_epoch, 2), 87.25, dtype=np.float32)
            self.best = np.float64(0.875)

    class RecorderMeter1:
        def __init__(self, total_epoch):
            self.total_epoch = total_epoch
            self.y_pred = np.array([0, 3, 6, 1], dtype=np.int64)
            self.y_true = [np.int64(0), np.int64(3)]
            self.meter = AverageMeter()

    lin = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1, momentum=0.9)
    lin(torch.ones(1, 3)).sum().backward()
    opt.step()
    state_dict = OrderedDict(("module." + k, v) for k, v in lin.state_dict().items())
    ckpt = {
        "epoch": 7,
        "state_dict": state_dict,
        "best_acc": torch.tensor(91.5),
        "optimizer": opt.state_dict(),
        "recorder1": RecorderMeter1(4),
        "recorder": RecorderMeter(4),
    }
    # The released files were written on a GPU: tag every storage 'cuda:0' like they are.
    with mock.patch.object(torch.serialization, "location_tag", lambda storage: "cuda:0"):
        torch.save(ckpt, sys.argv[1])
    torch.save(state_dict, sys.argv[2])  # reference values, plain state dict
    """
)


@pytest.fixture(scope="module")
def v2_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("v2")
    ckpt, ref = d / "v2_cuda.pth", d / "v2_ref.pth"
    script = d / "make_v2.py"
    script.write_text(V2_SCRIPT)
    subprocess.run([sys.executable, str(script), str(ckpt), str(ref)], check=True, timeout=300)
    # numpy 1.x spelling of the same file: numpy._core.multiarray -> numpy.core.multiarray
    np1 = d / "v2_numpy1.pth"
    rewrite_data_pkl(ckpt, np1, lambda b: b.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))
    return types.SimpleNamespace(ckpt=ckpt, ref=ref, np1=np1, dir=d)


def _data_pkl(path: Path) -> bytes:
    with zipfile.ZipFile(path) as z:
        return z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))


def _check_v2(ckpt, ref_sd):
    assert set(ckpt) == {"epoch", "state_dict", "best_acc", "optimizer", "recorder1", "recorder"}
    assert ckpt["epoch"] == 7
    assert ckpt["best_acc"].device.type == "cpu" and float(ckpt["best_acc"]) == 91.5
    assert list(ckpt["state_dict"]) == ["module.weight", "module.bias"]
    for k, v in ref_sd.items():
        assert torch.equal(ckpt["state_dict"][k], v) and ckpt["state_dict"][k].device.type == "cpu"
    assert set(ckpt["optimizer"]) == {"state", "param_groups"}
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == 0.1

    rec = ckpt["recorder"]
    assert isinstance(rec, Placeholder)
    assert rec.__poster_class__ == "__main__.RecorderMeter" and type(rec).__name__ == "RecorderMeter"
    assert rec.args == ()
    assert rec.state["total_epoch"] == 4 and rec.state["current_epoch"] == 2
    losses = rec.state["epoch_losses"]
    assert isinstance(losses, np.ndarray) and losses.dtype == np.float32
    np.testing.assert_array_equal(losses, np.arange(8, dtype=np.float32).reshape(4, 2))
    np.testing.assert_array_equal(rec.state["epoch_accuracy"], np.full((4, 2), 87.25, np.float32))
    assert isinstance(rec.state["best"], np.float64) and rec.state["best"] == 0.875

    rec1 = ckpt["recorder1"]
    assert isinstance(rec1, Placeholder) and rec1.__poster_class__ == "__main__.RecorderMeter1"
    np.testing.assert_array_equal(rec1.state["y_pred"], [0, 3, 6, 1])
    assert rec1.state["y_pred"].dtype == np.int64
    assert rec1.state["y_true"] == [0, 3] and isinstance(rec1.state["y_true"][0], np.int64)
    meter = rec1.state["meter"]
    assert isinstance(meter, Placeholder) and meter.__poster_class__ == "__main__.AverageMeter"
    assert meter.state == {"val": 0.5, "count": 4}


# ---------------------------------------------------------------------------------------------------------------------
# ordinary files
# ---------------------------------------------------------------------------------------------------------------------


def test_plain_state_dict_round_trip(tmp_path):
    sd = OrderedDict(w=torch.randn(3, 4), b=torch.arange(5), idx=torch.zeros(2, 2, dtype=torch.int64))
    path = tmp_path / "ir50.pth"
    torch.save(sd, path)
    for p in (path, str(path)):
        out = read_checkpoint(p)
        assert isinstance(out, OrderedDict) and list(out) == ["w", "b", "idx"]
        for k in sd:
            assert torch.equal(out[k], sd[k]) and out[k].dtype == sd[k].dtype


def test_v1_style_round_trip(tmp_path):
    ckpt = {
        "iter": 12,
        "model_state_dict": OrderedDict([("module.fc.weight", torch.randn(7, 4)), ("module.fc.bias", torch.randn(7))]),
        "optimizer_state_dict": {
            "state": {0: {"old_p": torch.randn(7, 4)}},
            "param_groups": [{"lr": 3.5e-5, "rho": 0.05, "params": [0, 1]}],
        },
    }
    path = tmp_path / "rafdb_best.pth"
    torch.save(ckpt, path)
    out = read_checkpoint(path)
    assert out["iter"] == 12
    for k, v in ckpt["model_state_dict"].items():
        assert torch.equal(out["model_state_dict"][k], v)
    old_p = ckpt["optimizer_state_dict"]["state"][0]["old_p"]
    assert torch.equal(out["optimizer_state_dict"]["state"][0]["old_p"], old_p)
    assert out["optimizer_state_dict"]["param_groups"] == ckpt["optimizer_state_dict"]["param_groups"]


def test_legacy_non_zip_round_trip(tmp_path):
    path = tmp_path / "legacy.pth"
    torch.save({"a": torch.arange(4.0), "n": 3}, path, _use_new_zipfile_serialization=False)
    assert path.read_bytes()[:1] == b"\x80"
    out = read_checkpoint(path)
    assert out["n"] == 3 and torch.equal(out["a"], torch.arange(4.0))


def test_safe_globals_registry_left_as_found(tmp_path, v2_files):
    before = set(torch.serialization.get_safe_globals())
    read_checkpoint(v2_files.ckpt)
    assert set(torch.serialization.get_safe_globals()) == before


# ---------------------------------------------------------------------------------------------------------------------
# V2 checkpoints: __main__ recorders and CUDA tensors
# ---------------------------------------------------------------------------------------------------------------------


def test_v2_numpy2_names(v2_files):
    pkl = _data_pkl(v2_files.ckpt)
    assert b"c__main__\nRecorderMeter\n" in pkl and b"numpy._core.multiarray\n_reconstruct\n" in pkl
    with pytest.raises(Exception):  # plain weights_only refuses it: the placeholders are what makes it load
        torch.load(v2_files.ckpt, map_location="cpu", weights_only=True)
    _check_v2(read_checkpoint(v2_files.ckpt), torch.load(v2_files.ref, weights_only=True))


def test_v2_numpy1_names(v2_files):
    pkl = _data_pkl(v2_files.np1)
    assert b"numpy._core" not in pkl
    assert b"numpy.core.multiarray\n_reconstruct\n" in pkl and b"numpy.core.multiarray\nscalar\n" in pkl
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # numpy.core must never be imported
        ckpt = read_checkpoint(v2_files.np1)
    _check_v2(ckpt, torch.load(v2_files.ref, weights_only=True))


def test_v2_cuda_tensors_need_map_location(v2_files):
    assert b"cuda:0" in _data_pkl(v2_files.ckpt)
    if not torch.cuda.is_available():
        with pytest.raises(CheckpointError, match="CUDA") as ei:
            read_checkpoint(v2_files.ckpt, map_location=None)
        assert str(v2_files.ckpt) in str(ei.value)
    out = read_checkpoint(v2_files.ckpt, map_location={"cuda:0": "cpu"})
    assert out["best_acc"].device.type == "cpu"
    seen = []

    def mapper(storage, location):
        seen.append(location)
        return storage

    out = read_checkpoint(v2_files.ckpt, map_location=mapper)
    assert seen and set(seen) == {"cuda:0"}
    assert float(out["best_acc"]) == 91.5
    assert read_checkpoint(v2_files.ckpt, map_location=torch.device("cpu"))["best_acc"].device.type == "cpu"


def test_placeholder_never_uses_the_real_main_class(v2_files, monkeypatch):
    calls = []

    class RecorderMeter:  # a same-named class in this process's __main__ must be ignored
        def __new__(cls, *a, **k):
            calls.append("new")
            return object.__new__(cls)

        def __setstate__(self, state):
            calls.append("setstate")

    monkeypatch.setattr(sys.modules["__main__"], "RecorderMeter", RecorderMeter, raising=False)
    out = read_checkpoint(v2_files.ckpt)
    assert calls == []
    assert isinstance(out["recorder"], Placeholder) and not isinstance(out["recorder"], RecorderMeter)


def test_placeholder_copy_and_repr(v2_files):
    import copy

    rec = read_checkpoint(v2_files.ckpt)["recorder"]
    dup = copy.deepcopy(rec)
    assert type(dup) is type(rec) and dup.state is not rec.state
    np.testing.assert_array_equal(dup.state["epoch_losses"], rec.state["epoch_losses"])
    assert "__main__.RecorderMeter" in repr(rec)


# ---------------------------------------------------------------------------------------------------------------------
# hostile files
# ---------------------------------------------------------------------------------------------------------------------


def _marker_code(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').close()"


HOSTILE = {
    # name: (pickle body builder taking the marker path, expected global named in the message)
    "os.system": (lambda m: call("os", "system", f"touch '{m}'"), "os.system"),
    "posix.system": (lambda m: call("posix", "system", f"touch '{m}'"), "posix.system"),
    "builtins.exec": (lambda m: call("builtins", "exec", _marker_code(m)), "builtins.exec"),
    "builtins.eval": (lambda m: call("builtins", "eval", _marker_code(m)), "builtins.eval"),
    "subprocess.Popen": (
        lambda m: G("subprocess", "Popen") + EMPTY_LIST + U("touch") + APPEND + U(str(m)) + APPEND + TUPLE1 + REDUCE,
        "subprocess.Popen",
    ),
    # python 2 spelling, mapped by torch (and by pickle) to builtins.getattr
    "__builtin__.getattr": (
        lambda m: G("__builtin__", "getattr") + G("builtins", "print") + U("__call__") + TUPLE2 + REDUCE,
        "getattr",
    ),
    # numpy functions outside the allow-list, including one that exec()s a string
    "numpy runstring": (
        lambda m: G("numpy.testing._private.utils", "runstring") + U(_marker_code(m)) + EMPTY_DICT + TUPLE2 + REDUCE,
        "numpy.testing._private.utils.runstring",
    ),
    "numpy.load": (lambda m: call("numpy", "load", str(m)), "numpy.load"),
    "numpy.core.multiarray.frombuffer": (lambda m: call("numpy.core.multiarray", "frombuffer", "x"), "frombuffer"),
    # payload hidden in the state of a __main__ object
    "payload in __main__ state": (
        lambda m: G("__main__", "RecorderMeter")
        + EMPTY_TUPLE
        + NEWOBJ
        + EMPTY_DICT
        + U("x")
        + call("os", "system", f"touch '{m}'")
        + SETITEM
        + BUILD,
        "os.system",
    ),
    # a __main__ "class" called with a forbidden callable's result as argument
    "__main__ REDUCE wrapping exec": (
        lambda m: G("__main__", "Evil") + call("builtins", "exec", _marker_code(m)) + TUPLE1 + REDUCE,
        "builtins.exec",
    ),
    # torch-internal but not allow-listed
    "torch.load": (lambda m: call("torch", "load", str(m)), "torch.load"),
}


@pytest.mark.parametrize("container", ["zip", "legacy"])
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_globals_refused(tmp_path, name, container):
    build, expected = HOSTILE[name]
    marker = tmp_path / "pwned"
    pkl = PROTO2 + build(marker) + STOP
    path = tmp_path / f"evil.{container}.pth"
    (torch_zip_with_pickle if container == "zip" else legacy_with_pickle)(path, pkl)
    with pytest.raises(CheckpointError) as ei:
        read_checkpoint(path)
    msg = str(ei.value)
    assert str(path) in msg and expected in msg and "forbidden" in msg
    assert not marker.exists()


@pytest.mark.parametrize("name", ["os.system", "builtins.exec", "numpy runstring", "payload in __main__ state"])
def test_hostile_payloads_are_real(tmp_path, name, monkeypatch):
    """Control: the hostile pickles above do run code under plain pickle (so the refusal test can fail)."""
    monkeypatch.setattr(sys.modules["__main__"], "RecorderMeter", type("RecorderMeter", (), {}), raising=False)
    marker = tmp_path / "control"
    pickle.loads(PROTO2 + HOSTILE[name][0](marker) + STOP)
    assert marker.exists()


def test_main_global_as_callable_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    # __main__.system("touch marker"): with a real unpickler and a __main__.system function this runs code
    pkl = PROTO2 + EMPTY_DICT + U("r") + call("__main__", "system", f"touch '{marker}'") + SETITEM + STOP
    path = torch_zip_with_pickle(tmp_path / "main_call.pth", pkl)
    out = read_checkpoint(path)
    obj = out["r"]
    assert isinstance(obj, Placeholder) and obj.__poster_class__ == "__main__.system"
    assert obj.args == (f"touch '{marker}'",) and obj.state is None
    assert not marker.exists()


def test_main_placeholder_cannot_be_used_as_ndarray_subtype(tmp_path):
    # numpy._reconstruct(__main__.X, (0,), b'b') -> must fail inside numpy, not build anything foreign
    pkl = (
        PROTO2
        + G("numpy._core.multiarray", "_reconstruct")
        + G("__main__", "X")
        + b"K\x00"
        + TUPLE1
        + U("b")
        + b"\x87"  # TUPLE3
        + REDUCE
        + STOP
    )
    path = torch_zip_with_pickle(tmp_path / "subtype.pth", pkl)
    with pytest.raises(CheckpointError, match="subtype|ndarray") as ei:
        read_checkpoint(path)
    assert str(path) in str(ei.value)


def test_process_wide_safe_globals_are_not_trusted(tmp_path):
    calls = []

    def recorder_hook(arg):  # something another part of the process allow-listed for its own files
        calls.append(arg)
        return arg

    recorder_hook.__module__ = "tests_fake_mod"
    recorder_hook.__qualname__ = "recorder_hook"
    pkl = PROTO2 + call("tests_fake_mod", "recorder_hook", "hi") + STOP
    path = torch_zip_with_pickle(tmp_path / "user_allowed.pth", pkl)
    with torch.serialization.safe_globals([recorder_hook]):
        assert torch.load(path, weights_only=True) == "hi"  # control: torch itself accepts it now
        calls.clear()
        with pytest.raises(CheckpointError, match="tests_fake_mod.recorder_hook"):
            read_checkpoint(path)
    assert calls == []


def test_allow_list_is_exactly_the_numpy_reconstructors():
    assert NUMPY_GLOBALS == {
        "numpy.ndarray",
        "numpy.dtype",
        "numpy.core.multiarray._reconstruct",
        "numpy.core.multiarray.scalar",
        "numpy._core.multiarray._reconstruct",
        "numpy._core.multiarray.scalar",
    }


# ---------------------------------------------------------------------------------------------------------------------
# broken files
# ---------------------------------------------------------------------------------------------------------------------


def _assert_refused(path, *words):
    with pytest.raises(CheckpointError) as ei:
        read_checkpoint(path)
    msg = str(ei.value)
    assert str(path) in msg
    for w in words:
        assert w in msg.lower()
    return msg


def test_missing_file(tmp_path):
    _assert_refused(tmp_path / "nope.pth", "not found")


def test_directory(tmp_path):
    _assert_refused(tmp_path, "not a regular file")


def test_zero_byte_file(tmp_path):
    p = tmp_path / "empty.pth"
    p.write_bytes(b"")
    _assert_refused(p, "empty")


@pytest.mark.parametrize("fraction", [0.5, 0.9, 0.999])
def test_truncated_zip(tmp_path, fraction):
    full = tmp_path / "full.pth"
    torch.save({"w": torch.randn(64, 64), "b": torch.randn(64)}, full)
    data = full.read_bytes()
    p = tmp_path / "cut.pth"
    p.write_bytes(data[: int(len(data) * fraction)])
    _assert_refused(p, "truncated")


def test_truncated_legacy(tmp_path):
    full = tmp_path / "full_legacy.pth"
    torch.save({"w": torch.randn(64, 64)}, full, _use_new_zipfile_serialization=False)
    data = full.read_bytes()
    for cut in (len(data) // 2, 40):
        p = tmp_path / f"cut_legacy_{cut}.pth"
        p.write_bytes(data[:cut])
        _assert_refused(p)


def test_truncated_v2(tmp_path, v2_files):
    data = v2_files.ckpt.read_bytes()
    p = tmp_path / "cut_v2.pth"
    p.write_bytes(data[: len(data) // 2])
    _assert_refused(p, "truncated")


def test_random_bytes(tmp_path):
    import random

    p = tmp_path / "noise.pth"
    p.write_bytes(b"\x13" + random.Random(0).randbytes(4096))
    _assert_refused(p, "not a pytorch checkpoint")


def test_text_file(tmp_path):
    p = tmp_path / "notes.pth"
    p.write_text("this is not a checkpoint\n")
    _assert_refused(p, "not a pytorch checkpoint")


def test_pickle_looking_garbage(tmp_path):
    p = tmp_path / "junk.pth"
    p.write_bytes(b"\x80\x02" + bytes(range(256)) * 4)
    _assert_refused(p)


def test_zip_that_is_not_a_checkpoint(tmp_path):
    p = tmp_path / "other.zip"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("hello.txt", "hi")
    _assert_refused(p)


def test_torchscript_archive_refused(tmp_path):
    src = tmp_path / "ts_src.pth"
    torch.save({"a": 1}, src)
    p = tmp_path / "ts.pth"
    with zipfile.ZipFile(src) as zi, zipfile.ZipFile(p, "w", zipfile.ZIP_STORED) as zo:
        for info in zi.infolist():
            zo.writestr(info.filename, zi.read(info.filename))
        prefix = zi.namelist()[0].split("/")[0]
        zo.writestr(f"{prefix}/constants.pkl", pickle.dumps((), 2))
    _assert_refused(p, "torchscript")


def test_error_is_checkpoint_error_with_readable_message(tmp_path):
    p = tmp_path / "evil.pth"
    torch_zip_with_pickle(p, PROTO2 + call("os", "system", "true") + STOP)
    msg = _assert_refused(p, "forbidden")
    assert "weights_only=False" not in msg


def test_torch_compat_api_present(tmp_path):
    """The private torch serialisation APIs the safe loader relies on (poster/checkpoint/_torchcompat.py)
    exist and behave as expected on the installed torch (supported: torch >= 2.6)."""
    import io as _io

    from poster.checkpoint import _torchcompat as compat

    path = tmp_path / "plain.pth"
    torch.save({"w": torch.ones(2)}, path)
    with open(path, "rb") as f, compat.open_zip_reader(f) as zf:
        assert not compat.is_torchscript_zip(zf) and zf.has_record("data.pkl")
        data = zf.get_record("data.pkl")
    assert "torch._utils._rebuild_tensor_v2" in compat.globals_in_pickle(_io.BytesIO(data))
    marker = (types.SimpleNamespace, "tests.compat_marker")
    before = compat.safe_globals_now()
    compat.add_safe_globals([marker])
    assert marker in compat.safe_globals_now()
    compat.remove_safe_globals([marker])
    assert set(compat.safe_globals_now()) == set(before)  # the registry is a set: order is not kept
