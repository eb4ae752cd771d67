"""The last/best checkpoint pair stays consistent through crashes and full disks; finished runs extend.

Validation accuracy is scripted per epoch (0.5, 0.9, 0.7) so that epoch 2 is the best and epoch 3 is
not: a ``best.pth`` left at epoch 1 by an interrupted save would then survive to the end of the run,
which is the bug these tests guard against.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch

from poster.checkpoint.formats import read_weight_file
from poster.errors import CheckpointError, PosterError
from poster.train import runfiles
from poster.train import trainer as trainer_mod
from poster.train.recipes import get_recipe
from poster.train.trainer import Trainer, TrainOptions
from train_helpers import make_stripes_dataset

SCRIPTED_VAL_ACC = {1: 0.5, 2: 0.9, 3: 0.7}


class Crash(BaseException):
    """Stands for kill -9: nothing after it runs (BaseException, so no handler turns it into an error)."""


@pytest.fixture(scope="module")
def stripes(tmp_path_factory):
    return make_stripes_dataset(tmp_path_factory.mktemp("stripes"), per_class=4)


def _trainer(stripes, out: Path, monkeypatch, epochs: int = 3, resume: bool = False) -> Trainer:
    recipe = get_recipe("fer2013_small", ["batch_size=4", f"epochs={epochs}"])
    options = TrainOptions(dataset="folder", data=str(stripes), output_dir=str(out), val_fraction=0.25, workers=0,
                           eval_batch_size=8, progress=False, test_split=None, resume=resume)
    trainer = Trainer(recipe, options)
    real = trainer.evaluate_split

    def scripted(split, model=None):
        metrics, report = real(split, model)
        if split == "val" and model is None and len(trainer.state.history) < 3:
            metrics = {**metrics, "acc": SCRIPTED_VAL_ACC[len(trainer.state.history) + 1]}
        return metrics, report

    monkeypatch.setattr(trainer, "evaluate_split", scripted)
    return trainer


def _epoch(path: Path):
    return runfiles.best_epoch_of(read_weight_file(path))


def _assert_consistent(out: Path, result: dict) -> None:
    assert result["best_epoch"] == 2
    assert _epoch(out / "last.pth") == 2 and _epoch(out / "best.pth") == 2
    assert not (out / runfiles.PENDING).exists()
    assert json.loads((out / "report.json").read_text())["best_epoch"] == 2


def _fail_on(monkeypatch, name: str, nth: int, exc: BaseException) -> list:
    """Make the ``nth`` checkpoint write to a file called ``name`` raise ``exc``."""
    seen = []
    real = trainer_mod.save_checkpoint

    def save(path, *args, **kwargs):
        if Path(path).name == name:
            seen.append(path)
            if len(seen) == nth:
                raise exc
        return real(path, *args, **kwargs)

    monkeypatch.setattr(trainer_mod, "save_checkpoint", save)
    return seen


def test_uninterrupted_run_keeps_the_best_epoch(stripes, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _assert_consistent(out, _trainer(stripes, out, monkeypatch).fit())


def test_full_disk_while_writing_the_new_best_then_resume(stripes, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _fail_on(monkeypatch, runfiles.PENDING, 2, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(PosterError, match="No space left.*intact and agree.*resume=True"):
        _trainer(stripes, out, monkeypatch).fit()
    assert _epoch(out / "last.pth") == 1 and _epoch(out / "best.pth") == 1  # the pair still agrees
    monkeypatch.undo()
    _assert_consistent(out, _trainer(stripes, out, monkeypatch, resume=True).fit())


def test_crash_after_pending_before_last_rolls_back(stripes, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _fail_on(monkeypatch, "last.pth", 2, Crash())
    with pytest.raises(Crash):
        _trainer(stripes, out, monkeypatch).fit()
    assert _epoch(out / runfiles.PENDING) == 2 and _epoch(out / "last.pth") == 1  # epoch 2 was never committed
    monkeypatch.undo()
    _assert_consistent(out, _trainer(stripes, out, monkeypatch, resume=True).fit())


def test_crash_after_last_before_rename_rolls_forward(stripes, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_replace = runfiles.os.replace
    calls = []

    def replace(src, dst):  # os.replace is shared with every atomic write: count only the publishing rename
        if Path(src).name == runfiles.PENDING:
            calls.append(src)
            if len(calls) == 2:
                raise Crash()
        return real_replace(src, dst)

    monkeypatch.setattr(runfiles.os, "replace", replace)
    with pytest.raises(Crash):
        _trainer(stripes, out, monkeypatch).fit()
    # last.pth already says epoch 2 is the best; best.pth still holds epoch 1
    assert _epoch(out / "last.pth") == 2 and _epoch(out / "best.pth") == 1 and _epoch(out / runfiles.PENDING) == 2
    monkeypatch.undo()
    _assert_consistent(out, _trainer(stripes, out, monkeypatch, resume=True).fit())


def test_best_file_that_disagrees_is_refused(stripes, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _trainer(stripes, out, monkeypatch, epochs=2).fit()
    wf = read_weight_file(out / "last.pth")
    torch.save({"format": "poster-fer", "format_version": 1, "meta": wf.meta.to_dict(), "state_dict": wf.state_dict,
                "training": {**wf.info["training"], "best": {"metric": 0.1, "epoch": 1}}}, out / "best.pth")
    with pytest.raises(CheckpointError, match="best.pth holds epoch 1 but .*last.pth records epoch 2"):
        runfiles.check_best(out, 2)


def test_resume_extends_a_finished_run(stripes, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _trainer(stripes, out, monkeypatch, epochs=1).fit()
    result = _trainer(stripes, out, monkeypatch, epochs=3, resume=True).fit()
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3] and result["epochs"] == 3
    _assert_consistent(out, result)
    with pytest.raises(PosterError, match="already done 3 epochs"):
        _trainer(stripes, out, monkeypatch, epochs=2, resume=True).fit()
    recipe = get_recipe("fer2013_small", ["batch_size=4", "epochs=4", "lr=1e-2"])
    options = TrainOptions(dataset="folder", data=str(stripes), output_dir=str(out), val_fraction=0.25, workers=0,
                           eval_batch_size=8, progress=False, test_split=None, resume=True)
    with pytest.raises(PosterError, match=r"differs .* in \['epochs', 'lr'\].*only epochs may change"):
        Trainer(recipe, options).fit()
