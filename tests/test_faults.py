"""Fault injection while writing checkpoints (issue 6, item 3), on CPU and in a few seconds.

* a full disk (ENOSPC) during ``save_checkpoint`` over an existing ``last.pth``;
* ``kill -9`` of a process that is writing checkpoints, at a fixed point (between write and
  rename) and at random moments.

In every case the target file is either absent or a complete, loadable checkpoint: never
truncated.  Kill -9 mid-epoch with resume, and NaN loss, are tested in tests/test_trainer.py.
"""

from __future__ import annotations

import errno
import hashlib
import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from poster import fileio
from poster.checkpoint.formats import read_weight_file, save_checkpoint
from poster.checkpoint.safe_load import read_checkpoint
from poster.meta import ModelMeta

META = ModelMeta("poster_v2", 2, ("a", "b"), source="test_faults")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _model(value: float) -> torch.nn.Module:
    m = torch.nn.Linear(64, 2)
    with torch.no_grad():
        m.weight.fill_(value)
        m.bias.fill_(value)
    return m


def _tmp_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.endswith(".tmp"))


# ------------------------------------------------------------------------------ full disk

class _FullDisk:
    """File object whose writes stop with ENOSPC after ``room`` bytes, like a filling disk."""

    def __init__(self, f, room: int):
        self._f, self._room = f, room

    def write(self, data) -> int:
        if len(data) > self._room:
            self._f.write(bytes(data[: self._room]))
            self._room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(data)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


@pytest.mark.parametrize("where", ["write", "fsync", "rename"])
def test_full_disk_keeps_previous_checkpoint(tmp_path, monkeypatch, where):
    target = tmp_path / "last.pth"
    save_checkpoint(target, _model(1.0), META, training={"epoch": 1})
    before = _sha(target)

    def enospc(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if where == "write":  # half the bytes reach the disk, then it is full
        real_fdopen = os.fdopen
        monkeypatch.setattr(fileio.os, "fdopen", lambda fd, mode: _FullDisk(real_fdopen(fd, mode), 1000))
    elif where == "fsync":  # buffered data cannot be flushed to the device
        monkeypatch.setattr(fileio.os, "fsync", enospc)
    else:
        monkeypatch.setattr(fileio.os, "replace", enospc)

    with pytest.raises(OSError) as ei:
        save_checkpoint(target, _model(2.0), META, training={"epoch": 2})
    assert ei.value.errno == errno.ENOSPC and "No space left" in str(ei.value)
    monkeypatch.undo()

    assert _sha(target) == before  # byte-identical
    wf = read_weight_file(target)  # and loadable: the epoch-1 weights, not a mix
    assert wf.info["training"]["epoch"] == 1 and torch.all(wf.state_dict["weight"] == 1.0)
    assert _tmp_files(tmp_path) == []  # the partial temporary file was removed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth"]

    save_checkpoint(target, _model(3.0), META, training={"epoch": 3})  # space is back: saving works again
    assert read_weight_file(target).info["training"]["epoch"] == 3


def test_full_disk_on_first_save_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(fileio.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "best.pth", _model(1.0), META)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ kill -9 while writing

_PAYLOAD = 1 << 20  # floats per checkpoint: 4 MB, so a write takes long enough to be interrupted


def _saver(target: str, ready, block_in_fsync: bool) -> None:  # runs in a forked child
    if block_in_fsync:
        real = os.fsync

        def slow_fsync(fd):
            real(fd)
            ready.set()  # data written, not yet renamed: the parent kills us now
            time.sleep(60)

        fileio.os.fsync = slow_fsync
    n = 0
    while True:
        n += 1
        # numpy, not torch.full: torch's OpenMP pool must not be used in a forked child (it hangs)
        data = torch.from_numpy(np.full(_PAYLOAD, n, np.float32))
        fileio.atomic_torch_save({"n": n, "data": data}, target)
        if not block_in_fsync:
            ready.set()


def _assert_complete(target: Path) -> int:
    """The target holds a whole checkpoint (loadable through the safe loader, self-consistent)."""
    obj = read_checkpoint(str(target))
    n = obj["n"]
    assert obj["data"].shape == (_PAYLOAD,) and bool(torch.all(obj["data"] == float(n)))
    return n


def _kill(proc) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)
    assert proc.exitcode == -signal.SIGKILL


def test_kill_9_between_write_and_rename_keeps_old_file(tmp_path):
    ctx = mp.get_context("fork")
    target = tmp_path / "last.pth"
    fileio.atomic_torch_save({"n": 0, "data": torch.full((_PAYLOAD,), 0.0)}, target)
    before = _sha(target)
    ready = ctx.Event()
    proc = ctx.Process(target=_saver, args=(str(target), ready, True), daemon=True)
    proc.start()
    assert ready.wait(30), "the child never reached the write"
    _kill(proc)
    assert _sha(target) == before and _assert_complete(target) == 0
    # the killed writer leaves its complete-but-unrenamed temporary file: never read, harmless,
    # and ignored by every loader (hidden name, .tmp suffix)
    leftovers = _tmp_files(tmp_path)
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".last.pth.")


def test_kill_9_at_random_moments_never_truncates(tmp_path):
    ctx = mp.get_context("fork")
    target = tmp_path / "last.pth"
    rng = __import__("random").Random(6)
    seen = []
    for trial in range(6):
        ready = ctx.Event()
        proc = ctx.Process(target=_saver, args=(str(target), ready, False), daemon=True)
        proc.start()
        if trial % 3 == 0:  # sometimes before the first save completes: the file may be absent
            time.sleep(rng.uniform(0, 0.05))
        else:
            assert ready.wait(30)
            time.sleep(rng.uniform(0, 0.15))
        _kill(proc)
        if target.exists():
            seen.append(_assert_complete(target))
        else:
            assert trial % 3 == 0, "a completed save disappeared"
            seen.append(None)
    assert any(n is not None for n in seen), seen


def test_remove_stale_temporaries_touches_only_atomic_write_leftovers(tmp_path):
    from poster.fileio import atomic_write_bytes, remove_stale_temporaries

    atomic_write_bytes(tmp_path / "last.pth", b"good")
    leftovers = [tmp_path / ".last.pth.a1b2c3d4.tmp", tmp_path / ".metrics.jsonl.zz_09xyq.tmp"]
    keep = [tmp_path / "last.pth", tmp_path / "notes.tmp", tmp_path / ".hidden.tmp", tmp_path / ".x.toolongname.tmp"]
    for p in leftovers + keep[1:]:
        p.write_bytes(b"half")
    (tmp_path / ".dir.abcdefgh.tmp").mkdir()
    assert remove_stale_temporaries(tmp_path) == sorted(leftovers)
    assert all(p.exists() for p in keep) and (tmp_path / ".dir.abcdefgh.tmp").is_dir()
    assert (tmp_path / "last.pth").read_bytes() == b"good"
    assert remove_stale_temporaries(tmp_path / "absent") == []
