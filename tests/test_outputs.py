"""Outputs a user can trust (issue 10 items 5-7, 10, 11; issue 13 item 3): reproductions as tests.

Every test works in throw-away folders.  The model is a random-weight ``poster_v1_tiny`` with
``--detector none`` (each image is one face), which makes a CLI run take about a second.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import poster
from poster.cli import main
from poster.data.transforms import load_image
from poster.errors import DatasetError
from poster.fileio import atomic_write_bytes
from poster.inference.inputs import RUN_MARKER
from poster.runlock import LOCK_NAME, RunFolderBusy, RunLock

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
# Control characters in class names are refused when the checkpoint loads (tests/test_hostile_files.py);
# what a checkpoint can still carry is text that spreadsheets would run as a formula.
EVIL_CLASSES = ["red", "=HYPERLINK(\"http://x\")", "+plus", "-minus", "@at", "plain", "evil"]


def _checkpoint(path: Path, class_names: list[str]) -> Path:
    model = poster.create_model("poster_v1_tiny", num_classes=len(class_names))
    meta = poster.ModelMeta(arch="poster_v1_tiny", num_classes=len(class_names), class_names=class_names,
                            arch_options={"token_mixing": False})
    return poster.save_checkpoint(path, model, meta)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pth", [f"c{i}" for i in range(7)])


@pytest.fixture(scope="module")
def evil_ckpt(tmp_path_factory) -> Path:
    # Fixed weights: which class wins (and so whether a top_k cell starts with a formula prefix)
    # must not depend on how much of the global random stream earlier imports and tests used.
    torch.manual_seed(0)
    return _checkpoint(tmp_path_factory.mktemp("evil") / "evil.pth", EVIL_CLASSES)


def _faces(folder: Path, count: int, size: tuple[int, int] = (48, 48)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        cv2.imwrite(str(folder / f"face{i}.png"), rng.integers(0, 255, (*size, 3), dtype=np.uint8))
    return folder


def _predict(*args: str) -> list[str]:
    return ["predict", *args, "--detector", "none", "--device", "cpu", "-q"]


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _poster(*args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "poster", *args], env=ENV, capture_output=True, text=True,
                          timeout=timeout, **kw)


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr, stderr
    return lines[0]


# -- item 5: special files ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_named_jpg_is_skipped_and_the_run_finishes(ckpt, tmp_path):
    folder = _faces(tmp_path / "in", 2)
    os.mkfifo(folder / "face1b.jpg")  # between the two good images in sorted order
    out = tmp_path / "out"
    proc = _poster(*_predict(str(folder), "-c", str(ckpt), "-o", str(out)), timeout=120)
    assert proc.returncode == 0, proc.stderr
    records = _records(out / "results.jsonl")
    assert sorted(Path(r["source"]).name for r in records if "error" not in r) == ["face0.png", "face1.png"]
    assert [r["error"] for r in records if "error" in r] == ["not a regular file"]
    assert "not a regular file" in proc.stderr and "face1b.jpg" in proc.stderr


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_load_image_refuses_a_fifo_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    start = time.monotonic()
    with pytest.raises(DatasetError, match="not a regular file"):
        load_image(fifo)
    assert time.monotonic() - start < 5


# -- item 10: pixel budget and file size -------------------------------------------------------


def _png_claiming(width: int, height: int) -> bytes:
    ok, data = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))
    data = bytearray(data.tobytes())
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")  # IHDR
    return bytes(data)


def test_huge_png_is_refused_from_its_header_at_once(tmp_path):
    path = tmp_path / "zeros.png"
    path.write_bytes(_png_claiming(32_000, 32_000))
    start = time.monotonic()
    with pytest.raises(DatasetError, match=r"image too large to decode \(32000 x 32000 = 1024 MP, over the pixel "
                                           r"budget of 537 MP.*POSTER_MAX_IMAGE_PIXELS.*zeros\.png"):
        load_image(path)
    assert time.monotonic() - start < 1


def test_pixel_budget_is_configurable(tmp_path, monkeypatch):
    path = tmp_path / "small.png"
    cv2.imwrite(str(path), np.zeros((100, 100, 3), np.uint8))
    assert load_image(path).shape == (100, 100, 3)
    monkeypatch.setenv("POSTER_MAX_IMAGE_PIXELS", "5000")
    with pytest.raises(DatasetError, match="over the pixel budget"):
        load_image(path)


def test_large_sparse_file_named_jpg_is_not_read(tmp_path):
    path = tmp_path / "sparse.jpg"
    with open(path, "wb") as f:
        f.truncate(2 << 30)  # 2 GiB of holes: reading it would cost 2 GiB (and its copy more)
    start = time.monotonic()
    with pytest.raises(DatasetError, match="no known image header"):
        load_image(path)
    assert time.monotonic() - start < 2


def test_file_much_larger_than_its_header_claims_is_refused(tmp_path):
    ok, data = cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))
    path = tmp_path / "padded.jpg"
    with open(path, "wb") as f:
        f.write(data.tobytes())
        f.truncate(100 << 20)
    with pytest.raises(DatasetError, match="file too large for the 16 x 16 image"):
        load_image(path)


# -- item 6: links under -o --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["results.jsonl.partial", "results.jsonl", "annotated"])
def test_run_folder_with_planted_links_is_refused(ckpt, tmp_path, capsys, name):
    folder = _faces(tmp_path / "in", 1)
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (out / name).symlink_to(victim)
    assert main(_predict(str(folder), "-c", str(ckpt), "-o", str(out), "--exist-ok")) == 1
    assert "symbolic link" in _one_error_line(capsys.readouterr().err)
    assert victim.read_text() == "precious\n"


def test_streamed_and_atomic_writes_replace_links_instead_of_following_them(tmp_path):
    from poster.fileio import create_new_file

    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    for name in ("stream.partial", "atomic.json"):
        (tmp_path / name).symlink_to(victim)
    with create_new_file(tmp_path / "stream.partial", "w") as f:
        f.write("mine\n")
    atomic_write_bytes(tmp_path / "atomic.json", b"{}")
    assert victim.read_text() == "precious\n"
    assert (tmp_path / "stream.partial").read_text() == "mine\n" and not (tmp_path / "stream.partial").is_symlink()
    assert (tmp_path / "atomic.json").read_bytes() == b"{}" and not (tmp_path / "atomic.json").is_symlink()


@pytest.mark.parametrize("earlier_run", [True, False])
def test_annotated_subfolder_link_is_never_followed(ckpt, tmp_path, capsys, earlier_run):
    folder = _faces(tmp_path / "in", 1)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    (out / "annotated").mkdir(parents=True)
    (out / "annotated" / "in").symlink_to(elsewhere)  # where in/face0.png's annotated copy would go
    if earlier_run:  # --exist-ok clears an earlier run's annotated/: the link itself is removed
        (out / RUN_MARKER).write_text("an earlier run\n")
    code = main(_predict(str(folder), "-c", str(ckpt), "-o", str(out), "--exist-ok"))
    if earlier_run:
        assert code == 0 and (out / "annotated" / "in" / "face0.png").is_file()
        assert not (out / "annotated" / "in").is_symlink()
    else:  # an annotated/ no predict run made is not ours to clear
        assert code == 1 and "no poster predict run made it" in _one_error_line(capsys.readouterr().err)
    assert list(elsewhere.iterdir()) == []


# -- item 7: run-folder locks ------------------------------------------------------------------

_HOLD = ("import sys, time; from poster.runlock import RunLock; RunLock(sys.argv[1], 'holder').acquire(); "
         "print('locked', flush=True); time.sleep(120)")


def _holder(folder: Path) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder)], env=ENV, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "locked"
    return child


@pytest.mark.slow
def test_second_run_in_a_locked_folder_is_refused_with_one_line(ckpt, tmp_path):
    folder = _faces(tmp_path / "in", 1)
    out = tmp_path / "out"
    out.mkdir()
    child = _holder(out)
    try:
        proc = _poster(*_predict(str(folder), "-c", str(ckpt), "-o", str(out), "--exist-ok"))
        assert proc.returncode == 1
        line = _one_error_line(proc.stderr)
        assert f"is in use by holder (pid {child.pid}" in line
        assert not (out / "results.jsonl").exists()

        data = tmp_path / "data"
        (data / "train" / "a").mkdir(parents=True)
        proc = _poster("train", "--recipe", "fer2013_small", "--dataset", "folder", "--data", str(data),
                       "-o", str(out), "--no-progress")
        assert proc.returncode == 1 and "is in use by holder" in _one_error_line(proc.stderr)
    finally:
        child.kill()
        child.wait()


def test_stale_lock_of_a_killed_process_is_taken_over(tmp_path):
    child = _holder(tmp_path)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert (tmp_path / LOCK_NAME).exists()  # left behind by kill -9
    with RunLock(tmp_path, "me"):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
        with pytest.raises(RunFolderBusy, match=r"in use by me \(pid"):
            RunLock(tmp_path, "other").acquire()
    assert not (tmp_path / LOCK_NAME).exists()


@pytest.mark.slow
def test_two_concurrent_predicts_get_two_complete_folders(ckpt, tmp_path):
    folder = _faces(tmp_path / "in", 2)
    out = tmp_path / "runs" / "predict"
    cmd = [sys.executable, "-m", "poster", *_predict(str(folder), "-c", str(ckpt), "-o", str(out), "--no-annotate")]
    procs = [subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    for run in (out, out.with_name("predict2")):
        assert len(_records(run / "results.jsonl")) == 2
        assert not (run / LOCK_NAME).exists()


# -- issue 13 item 3: fresh folders, permissions, inputs and outputs ---------------------------


def test_each_run_gets_a_fresh_folder_unless_exist_ok(ckpt, tmp_path, monkeypatch, capsys):
    folder = _faces(tmp_path / "in", 1)
    monkeypatch.chdir(tmp_path)
    for expected in ("runs/predict", "runs/predict2"):
        assert main(_predict(str(folder), "-c", str(ckpt))) == 0
        assert f"results: {expected}/results.jsonl" in capsys.readouterr().out
    assert main(_predict(str(folder), "-c", str(ckpt), "-o", "runs/predict", "--exist-ok")) == 0
    assert "results: runs/predict/results.jsonl" in capsys.readouterr().out
    assert not Path("runs/predict3").exists()


def test_exist_ok_replaces_the_earlier_runs_outputs(ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_predict(str(_faces(tmp_path / "first", 2)), "-c", str(ckpt), "-o", str(out), "--format", "csv")) == 0
    assert main(_predict(str(_faces(tmp_path / "second", 1)), "-c", str(ckpt), "-o", str(out), "--exist-ok")) == 0
    annotated = sorted(p.relative_to(out).as_posix() for p in (out / "annotated").rglob("*.png"))
    assert annotated == ["annotated/second/face0.png"]  # not the first run's copies beside it
    assert not (out / "results.csv").exists()
    assert [Path(r["source"]).parent.name for r in _records(out / "results.jsonl")] == ["second"]


@pytest.mark.parametrize("inputs", [["missing.png"], ["empty"], ["empty", "missing.png"]])
def test_a_run_of_nothing_is_refused_before_a_run_folder_is_made(ckpt, tmp_path, monkeypatch, capsys, inputs):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("not a picture")
    assert main(_predict(*inputs, "-c", str(ckpt))) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith("error: nothing to predict: ")
    for name in inputs:
        assert (f"no images or videos found in {name}" if name == "empty" else f"no such file or folder: {name}") in line
    assert not (tmp_path / "runs").exists()


def test_an_empty_folder_beside_usable_inputs_is_named(ckpt, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    assert main(_predict("empty", str(_faces(tmp_path / "in", 1)), "-c", str(ckpt))) == 0
    assert "note: no images or videos found in empty" in capsys.readouterr().err


def test_a_model_that_cannot_be_fetched_leaves_no_run_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("POSTER_WEIGHTS", str(tmp_path / "cache"))
    monkeypatch.setenv("POSTER_OFFLINE", "1")
    folder = _faces(tmp_path / "in", 1)
    for _ in range(2):  # the second run would otherwise take the empty folder the first left
        assert main(_predict(str(folder), "-c", "poster_v2.rafdb")) == 1
        assert "poster_v2.rafdb" in _one_error_line(capsys.readouterr().err)
        assert list((tmp_path / "runs").iterdir()) == []
    made = tmp_path / "mine"
    made.mkdir()  # a folder the user made stays, empty as it was
    assert main(_predict(str(folder), "-c", "poster_v2.rafdb", "-o", str(made))) == 1
    assert made.is_dir() and list(made.iterdir()) == []


def test_output_files_have_the_umask_permissions(ckpt, tmp_path):
    folder = _faces(tmp_path / "in", 1)
    out = tmp_path / "out"
    old = os.umask(0o022)
    try:
        assert main(_predict(str(folder), "-c", str(ckpt), "-o", str(out))) == 0
        written = atomic_write_bytes(tmp_path / "plain.bin", b"x")
    finally:
        os.umask(old)
    for path in (out / "results.jsonl", out / "annotated" / "in" / "face0.png", written):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_predicting_a_folder_never_reads_its_own_outputs(ckpt, tmp_path, monkeypatch, capsys):
    folder = _faces(tmp_path / "photos", 3)
    monkeypatch.chdir(folder)
    for _ in range(3):  # runs/predict, runs/predict2, runs/predict3 all sit inside the input folder
        assert main(_predict(".", "-c", str(ckpt))) == 0
        assert "Summary: 3 images" in capsys.readouterr().out


def test_dotdot_input_writes_annotations_only_under_annotated(ckpt, tmp_path, monkeypatch):
    photos = _faces(tmp_path / "photos", 2)
    work = photos / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    out = tmp_path / "out"
    assert main(_predict("..", "-c", str(ckpt), "-o", str(out))) == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == ["annotated/photos/face0.png", "annotated/photos/face1.png"]
    outside = [p for p in tmp_path.rglob("*.png") if out not in p.parents and p.parent != photos]
    assert outside == [] and sorted(p.name for p in photos.iterdir()) == ["face0.png", "face1.png", "work"]


@pytest.mark.slow
def test_killed_run_does_not_leave_the_previous_results(ckpt, tmp_path, capsys):
    folder = _faces(tmp_path / "in", 1)
    out = tmp_path / "out"
    assert main(_predict(str(folder), "-c", str(ckpt), "-o", str(out))) == 0
    assert (out / "results.jsonl").exists()
    # a second run in the same folder (--exist-ok) removes the old results before it starts, so a
    # kill leaves only its own results.jsonl.partial, never the previous run's results.jsonl
    child = subprocess.Popen([sys.executable, "-m", "poster",
                              *_predict(str(folder), str(folder), str(folder), "-c", str(ckpt), "-o", str(out),
                                        "--exist-ok", "-b", "1")], env=ENV, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "results.jsonl.partial").exists():
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert not (out / "results.jsonl").exists()


@pytest.mark.parametrize("size", [(75, 101), (76, 100)])
def test_annotated_video_keeps_the_exact_size(tmp_path, size):
    from poster.inference.video import VideoSink

    h, w = size
    sink = VideoSink(tmp_path / "clip.mp4", fps=10)
    frame = np.zeros((h, w, 3), np.uint8)
    frame[-1, :] = 255  # the last row and column, which 4:2:0 encoders drop at odd sizes
    frame[:, -1] = 255
    for _ in range(3):
        sink.write(frame)
    written = sink.close()
    assert written.suffix == (".avi" if h % 2 or w % 2 else ".mp4")
    cap = cv2.VideoCapture(str(written))
    frames = []
    while True:
        ok, back = cap.read()
        if not ok:
            break
        frames.append(back)
    cap.release()
    assert len(frames) == 3 and all(f.shape == (h, w, 3) for f in frames)
    assert frames[0][h - 1, : w - 1].mean() > 200 and frames[0][: h - 1, w - 1].mean() > 200


# -- item 11: terminal and CSV injection -------------------------------------------------------


@pytest.mark.slow
def test_class_names_and_file_names_are_escaped_on_screen_and_in_csv(evil_ckpt, tmp_path):
    folder = tmp_path / "in"
    _faces(folder, 3)
    (folder / "face0.png").rename(folder / "a\nSummary: 99 images.png")
    (folder / "face1.png").rename(folder / "=cmd|calc.png")
    (folder / "face2.png").rename(folder / "\x1b[31mred\u202e.png")
    out = tmp_path / "out"
    proc = _poster("predict", str(folder), "-c", str(evil_ckpt), "--detector", "none", "--device", "cpu",
                   "-o", str(out), "--format", "csv", "-k", "7")
    assert proc.returncode == 0, proc.stderr
    printed = proc.stdout + proc.stderr
    assert "\x1b" not in printed and "\u202e" not in printed
    assert "\\x1b[31mred" in printed
    assert [line for line in proc.stdout.splitlines() if line.startswith("Summary:")] == [
        "Summary: 3 images (0 without a face), 3 faces, 0 unreadable, 0 skipped (not images)"]
    with open(out / "results.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    for row in rows:
        for cell in row:
            assert not cell.startswith(("=", "+", "@")), cell
            assert not (cell.startswith("-") and not _is_number(cell)), cell
    labels = [row[rows[0].index("label")] for row in rows[1:]]
    allowed = {("'" + c if c[0] in "=+-@" else c) for c in EVIL_CLASSES}
    assert len(labels) == 3 and set(labels) <= allowed
    assert any(c.startswith("'") for c in (rows[0] + [r[rows[0].index("top_k")] for r in rows[1:]]))


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False
