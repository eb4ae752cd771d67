"""poster train: DDP equivalence, rank-0-only output, kill -9 + resume, NaN stop, real learning."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import poster
from poster.train import trainer as trainer_mod
from poster.train.recipes import get_recipe
from poster.train.trainer import Trainer, TrainingDiverged, TrainOptions
from train_helpers import make_stripes_dataset

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
ENV = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{TESTS}", "OMP_NUM_THREADS": "1"}
TINY = ["--recipe", "fer2013_small", "--dataset", "folder", "--set", "batch_size=4", "--eval-batch-size", "8",
        "--set", "epochs=3", "--val-fraction", "0.25", "--no-progress", "-j", "0"]


def _poster(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "poster", *args], env=ENV, capture_output=True, text=True,
                          timeout=600, **kw)


def _torchrun(nproc: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
                           "--master-port", "29517", *args], env=ENV, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def stripes(tmp_path_factory):
    return make_stripes_dataset(tmp_path_factory.mktemp("stripes"), per_class=8)


@pytest.mark.slow
def test_ddp_two_processes_equal_one_process_on_the_whole_batch(tmp_path):
    from ddp_step_worker import build, global_batches
    from poster.train.losses import build_loss
    from poster.train.sam import SAM, sam_train_step

    out = tmp_path / "ddp.pt"
    proc = _torchrun(2, str(TESTS / "ddp_step_worker.py"), str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp_params = torch.load(out, weights_only=True)

    model = build()
    opt = SAM(model.parameters(), torch.optim.Adam, rho=0.05, lr=1e-2)
    for x, y in global_batches():
        sam_train_step(model, opt, build_loss("ce+2lsce"), x, y)
    moved = False
    for k, v in model.state_dict().items():
        torch.testing.assert_close(ddp_params[k], v, rtol=1e-5, atol=1e-6, msg=k)
        moved |= not torch.allclose(v, build().state_dict()[k])
    assert moved, "the steps did not change the parameters"


@pytest.mark.slow
def test_torchrun_training_writes_once_from_rank_0(stripes, tmp_path):
    out = tmp_path / "run"
    proc = _torchrun(2, "-m", "poster", "train", *TINY, "--data", str(stripes), "-o", str(out),
                     "--set", "epochs=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert log.count("[epoch 1/1]") == 1, log[-2000:]
    assert json.loads((out / "config.json").read_text())["world_size"] == 2
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["best.pth", "last.pth", "config.json", "metrics.jsonl", "curves.png", "confusion_matrix.png", "report.json"])
    assert poster.load_model(out / "best.pth").meta.class_names == ("horizontal", "vertical")


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def _metrics(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for r in rows:  # wall-clock fields differ between runs by nature
        r.pop("seconds"), r.pop("images_per_s")
    return rows


@pytest.mark.slow
def test_kill_9_then_resume_equals_uninterrupted_run(stripes, tmp_path):
    straight = tmp_path / "straight"
    proc = _poster("train", *TINY, "--data", str(stripes), "-o", str(straight))
    assert proc.returncode == 0, proc.stderr[-3000:]

    killed = tmp_path / "killed"
    child = subprocess.Popen([sys.executable, "-m", "poster", "train", *TINY, "--data", str(stripes), "-o",
                              str(killed)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and child.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 1:
            break
        time.sleep(0.01)
    assert child.poll() is None, "the run ended before it could be killed"
    last_bytes = (killed / "last.pth").read_bytes()
    os.kill(child.pid, signal.SIGKILL)  # a real kill, mid-way through epoch 2
    child.wait()
    assert child.returncode == -signal.SIGKILL
    assert hashlib.sha256((killed / "last.pth").read_bytes()).digest() == hashlib.sha256(last_bytes).digest()
    assert poster.load_model(killed / "last.pth") is not None  # intact and loadable
    assert not (killed / "report.json").exists()

    again = _poster("train", *TINY, "--data", str(stripes), "-o", str(killed))
    assert again.returncode == 1 and "--resume" in again.stderr  # never silently overwrites a run
    # what a kill -9 during a checkpoint write leaves behind (the atomic write's temporary)
    stale = killed / ".last.pth.k9x_2ab7.tmp"
    stale.write_bytes(last_bytes[: len(last_bytes) // 2])
    resumed = _poster("train", *TINY, "--data", str(stripes), "-o", str(killed), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    assert not stale.exists() and "removed 1 unfinished temporary file" in resumed.stderr

    a, b = _state(straight / "last.pth"), _state(killed / "last.pth")
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert _metrics(straight / "metrics.jsonl") == _metrics(killed / "metrics.jsonl")
    ta = torch.load(straight / "last.pth", weights_only=True)["training"]["optimizer"]["state"]
    tb = torch.load(killed / "last.pth", weights_only=True)["training"]["optimizer"]["state"]
    assert all(torch.equal(ta[i]["exp_avg_sq"], tb[i]["exp_avg_sq"]) for i in ta)  # Adam moments resumed


def test_nan_loss_stops_and_keeps_last_good_checkpoint(stripes, tmp_path, monkeypatch):
    recipe = get_recipe("fer2013_small", ["batch_size=4", "epochs=3"])
    options = TrainOptions(dataset="folder", data=str(stripes), output_dir=str(tmp_path / "run"),
                           val_fraction=0.25, workers=0, eval_batch_size=8, progress=False)
    calls = {"n": 0}
    real_step = trainer_mod.sam_train_step

    def step(*args, **kwargs):
        calls["n"] += 1
        loss, logits = real_step(*args, **kwargs)
        return (torch.tensor(float("nan")) if calls["n"] > 4 else loss), logits

    monkeypatch.setattr(trainer_mod, "sam_train_step", step)
    trainer = Trainer(recipe, options)
    saved = {}
    real_save = trainer._save

    def save(epoch_done, is_best):
        real_save(epoch_done, is_best)
        saved["hash"] = hashlib.sha256((tmp_path / "run" / "last.pth").read_bytes()).hexdigest()

    trainer._save = save
    with pytest.raises(TrainingDiverged, match="nan.*epoch 2"):
        trainer.fit()
    assert hashlib.sha256((tmp_path / "run" / "last.pth").read_bytes()).hexdigest() == saved["hash"]
    ckpt = torch.load(tmp_path / "run" / "last.pth", weights_only=True)
    assert ckpt["training"]["epoch"] == 1


def test_compile_option_wraps_the_training_model_and_reports_the_first_step(stripes, tmp_path, monkeypatch, caplog):
    """--compile hands the (DDP-wrapped) model to torch.compile and trains with what it returns,
    timing the first step; checkpoints still come from the plain model.  torch.compile is replaced
    by a recording pass-through here: a real CPU compile of POSTER takes minutes
    (tests/test_accelerate.py compiles a small network for real)."""
    compiled = []

    class Recorded(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.calls = inner, 0

        def forward(self, x):
            self.calls += 1
            return self.inner(x)

    def fake_compile(module, **kwargs):
        compiled.append(Recorded(module))
        return compiled[-1]

    monkeypatch.setattr(trainer_mod.torch, "compile", fake_compile)
    recipe = get_recipe("fer2013_small", ["batch_size=4", "epochs=1"])
    options = TrainOptions(dataset="folder", data=str(stripes), output_dir=str(tmp_path / "run"),
                           val_fraction=0.25, workers=0, eval_batch_size=8, progress=False, test_split=None, compile=True)
    trainer = Trainer(recipe, options)
    with caplog.at_level("INFO"):
        trainer.fit()
    assert len(compiled) == 1 and compiled[0].inner is trainer.ddp and compiled[0].calls == 2 * 3  # SAM: 2 passes
    assert trainer.compile_seconds > 0 and "torch.compile: the first training step took" in caplog.text
    assert poster.load_model(tmp_path / "run" / "last.pth") is not None


def _fer_subset(fer2013_dir: Path, root: Path, classes=("happy", "neutral", "surprise"),
                train_per_class: int = 200, test_per_class: int = 60) -> Path:
    """A class-balanced FER2013 subset in the folder layout (symbolic links, nothing copied)."""
    import random

    rng = random.Random(0)
    for split, dst, n in (("train", "train", train_per_class), ("val", "test", test_per_class)):
        for cls in classes:
            files = sorted((fer2013_dir / split / cls).iterdir())
            rng.shuffle(files)
            (root / dst / cls).mkdir(parents=True)
            for f in files[:n]:
                (root / dst / cls / f.name).symlink_to(f)
    return root


@pytest.mark.slow
def test_learns_real_faces_on_cpu(fer2013_dir, tmp_path):
    """The compact POSTER learns real faces on a CPU within a few minutes.

    Three balanced FER2013 classes (happy, neutral, surprise; 200 training faces each, 20 % of them
    held out for validation, 60 each from PublicTest as the test set): the majority-class rate is
    1/3.  Three epochs of plain Adam (SAM is tested on its own in test_sam.py; here it would only
    double the time), the real landmark weights from ../shared.  Measured with the same settings on
    the 2-core development machine: validation 45.0 / 47.5 / 46.7 % after epochs 1-3, test 48.3 %
    at the selected epoch (docs/results.md).  Required: at least 41 % (majority + 8 points) on
    validation and on test, a falling training loss and a rising training accuracy.
    """
    data = _fer_subset(fer2013_dir, tmp_path / "fer3")
    landmark = fer2013_dir.parents[1] / "weights" / "mobilefacenet_landmark68_from_openvino.pth.tar"
    recipe = get_recipe("fer2013_small", ["epochs=3", "lr=5e-4", "batch_size=8", "sam_rho=0", "erasing_p=0"])
    options = TrainOptions(dataset="folder", data=str(data), output_dir=str(tmp_path / "run"), val_fraction=0.2,
                           landmark=str(landmark), workers=0, progress=False)
    result = Trainer(recipe, options).fit()
    history = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    majority = 1 / 3
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["train_acc"] > history[0]["train_acc"]
    assert result["selected_val_acc"] >= majority + 0.08, result
    assert result["test_acc"] >= majority + 0.08, result


@pytest.mark.slow
def test_cached_pipeline_trains_and_resumes_like_uncached(stripes, tmp_path):
    """--cache: images decoded once at 112 px; a cached run trains, saves and resumes deterministically."""
    straight = tmp_path / "straight"
    args = [*TINY, "--data", str(stripes), "--cache", str(tmp_path / "cache"), "--set", "epochs=2"]
    proc = _poster("train", *args, "-o", str(straight))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cache of 12 images" in proc.stderr and list((tmp_path / "cache").glob("*.npy"))
    halted = tmp_path / "halted"
    first = _poster("train", *[a if a != "epochs=2" else "epochs=1" for a in args], "-o", str(halted))
    assert first.returncode == 0 and "reused" in first.stderr
    # Extend the finished 1-epoch run to 2 epochs: the same weights as the straight 2-epoch run.
    again = _poster("train", *args, "-o", str(halted), "--resume")
    assert again.returncode == 0 and "extending the run from 1 to 2 epochs" in again.stderr, again.stderr[-3000:]
    extended, uninterrupted = (torch.load(d / "last.pth", weights_only=True)["state_dict"] for d in (halted, straight))
    assert all(torch.equal(extended[k], uninterrupted[k]) for k in uninterrupted)
    model = poster.load_model(straight / "best.pth")
    assert model.meta.arch == "poster_v1_tiny" and len(_metrics(straight / "metrics.jsonl")) == 2


def test_select_on_test_reports_both_numbers(stripes, tmp_path):
    """--select-on test (the papers' protocol) picks by test accuracy and also reports the honest number."""
    recipe = get_recipe("fer2013_small", ["batch_size=4", "epochs=2"])
    options = TrainOptions(dataset="folder", data=str(stripes), output_dir=str(tmp_path / "run"),
                           val_fraction=0.25, workers=0, eval_batch_size=8, progress=False, select_on="test")
    result = Trainer(recipe, options).fit()
    history = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(h["test_acc"] is not None and h["val_acc"] is not None for h in history)
    best_test = max(h["test_acc"] for h in history)
    assert result["test_acc_selected_on_test"] == pytest.approx(best_test)
    by_val = max(history, key=lambda h: (h["val_acc"], -h["epoch"]))
    assert result["test_acc_selected_on_val"] == pytest.approx(by_val["test_acc"])
    assert "TEST accuracy" in result["note"]
    with pytest.raises(poster.PosterError, match="needs a test split"):
        Trainer(recipe, TrainOptions(dataset="folder", data=str(stripes), output_dir=str(tmp_path / "r2"),
                                     test_split=None, select_on="test", workers=0, progress=False)).fit()


@pytest.mark.slow
def test_dying_rank_stops_the_run_keeps_the_checkpoint_and_resume_matches(stripes, tmp_path):
    """torchrun, 2 processes; rank 1 is SIGKILLed in epoch 2.  The launcher stops the whole run and
    names the dead rank; last.pth (epoch 1) is intact; a resumed run equals an uninterrupted one."""
    straight = tmp_path / "straight"
    proc = _torchrun(2, "-m", "poster", "train", *TINY, "--data", str(stripes), "-o", str(straight))
    assert proc.returncode == 0, proc.stderr[-3000:]

    faulty = tmp_path / "faulty"
    proc = _torchrun(2, str(TESTS / "ddp_fault_worker.py"), "train", *TINY, "--data", str(stripes),
                     "-o", str(faulty))
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "[epoch 1/3]" in log and "[epoch 2/3]" not in log, log[-3000:]
    assert "rank: 1" in log and "exitcode" in log and "SIGKILL" in log, log[-3000:]  # the user is told which
    state = torch.load(faulty / "last.pth", weights_only=True)
    assert state["training"]["epoch"] == 1 and poster.load_model(faulty / "last.pth") is not None
    assert not (faulty / "report.json").exists()

    resumed = _torchrun(2, "-m", "poster", "train", *TINY, "--data", str(stripes), "-o", str(faulty), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    a, b = _state(straight / "last.pth"), _state(faulty / "last.pth")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert _metrics(straight / "metrics.jsonl") == _metrics(faulty / "metrics.jsonl")
