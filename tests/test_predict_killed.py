"""``poster predict`` on a large folder (with hostile files among the images) killed with ``kill -9``
half way, then run again: nothing written is corrupt, and the second run says where it starts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from poster.inference.batch import interrupted_runs
from poster.inference.writer import complete_records

ROOT = Path(__file__).resolve().parents[1]
IMAGES = 1000


def _photo_folder(folder: Path) -> set[str]:
    """``IMAGES`` small pictures and, among them, an empty file, a cut JPEG, a 10,000 MP PNG header,
    a text file and a FIFO, all named like images.  Returns the names of the good ones."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    good = set()
    for i in range(IMAGES):
        name = f"img{i:04d}.png"
        cv2.imwrite(str(folder / name), rng.integers(0, 255, (24, 24, 3), dtype=np.uint8))
        good.add(name)
    jpeg = cv2.imencode(".jpg", rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))[1].tobytes()
    (folder / "img0100a_empty.jpg").write_bytes(b"")
    (folder / "img0200a_cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    header = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + (100_000).to_bytes(4, "big") * 2 + b"\x08\x02\x00\x00\x00"
    (folder / "img0300a_bomb.png").write_bytes(header + b"\x00" * 4)
    (folder / "img0400a_text.jpg").write_text("not a picture\n")
    os.mkfifo(folder / "img0500a_pipe.jpg")
    return good


def _predict(*args: str) -> list[str]:
    return [sys.executable, "-m", "poster", "predict", *args, "--device", "cpu"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.slow
def test_kill_9_half_way_then_run_again(tmp_path):
    photos, out = tmp_path / "photos", tmp_path / "out"
    good = _photo_folder(photos)
    partial = out / "results.jsonl.partial"
    proc = subprocess.Popen(_predict(str(photos), "-o", str(out), "-q"), env=_env(), cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while not (partial.exists() and partial.read_bytes().count(b"\n") >= 150):
            assert proc.poll() is None, "the run ended before it could be killed half way"
            assert time.monotonic() < deadline, "the run wrote too few records in time"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert not (out / "results.jsonl").exists()
    killed = partial.read_bytes()
    lines = killed.decode("utf-8").split("\n")
    complete, rest = lines[:-1], lines[-1]  # only a last line cut by the kill may be incomplete
    records = [json.loads(line) for line in complete]
    assert 150 <= len(records) < IMAGES and all(r["source"].startswith(str(photos)) for r in records)
    assert complete_records(partial) == len(records)
    assert rest == "" or len(rest) < 4096
    pictures = [p for p in (out / "annotated").rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert len(pictures) >= 100
    for picture in (out / "annotated").rglob("*"):
        if picture.is_file() and not picture.name.startswith("."):  # an interrupted write's temporary is hidden
            assert cv2.imread(str(picture)) is not None, f"corrupt annotated copy {picture}"

    again = subprocess.run(_predict(str(photos), "-o", str(out), "-q", "--no-annotate"), env=_env(), cwd=tmp_path,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    fresh = tmp_path / "out2"
    assert (f"note: {out} holds an interrupted run (results.jsonl.partial, {len(records)} complete records), "
            f"kept as it is; this run starts afresh in {fresh}") in again.stdout
    assert partial.read_bytes() == killed  # the killed run's records are left as they were
    _assert_complete(fresh / "results.jsonl", photos, good)

    replaced = subprocess.run(_predict(str(photos), "-o", str(out), "-q", "--exist-ok", "--no-annotate"), env=_env(),
                              cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert replaced.returncode == 0, replaced.stderr
    assert (f"note: {out} holds an interrupted run (results.jsonl.partial, {len(records)} complete records); "
            f"--exist-ok: it is replaced, this run starts afresh there") in replaced.stdout
    assert not partial.exists()
    _assert_complete(out / "results.jsonl", photos, good)


def _assert_complete(results: Path, photos: Path, good: set[str]) -> None:
    records = _records(results)
    sources = {Path(r["source"]).name for r in records}
    assert good <= sources
    errors = {Path(r["source"]).name for r in records if "error" in r}
    assert {"img0100a_empty.jpg", "img0200a_cut.jpg", "img0300a_bomb.png", "img0400a_text.jpg"} <= errors


def test_interrupted_runs_are_found_counted_and_told_from_runs_in_progress(tmp_path):
    runs = tmp_path / "predict"
    for name in ("predict", "predict2", "predict3"):
        (tmp_path / name).mkdir()
    record = json.dumps({"source": "a.jpg", "frame": None, "face": None, "num_faces": 0})
    (runs / "results.jsonl.partial").write_text(f"{record}\n{record}\n{record[:20]}")  # the kill cut the third
    (tmp_path / "predict2" / "results.csv.partial").write_text('source,frame\n"a\nb.jpg",\nc.jpg,\n')
    (tmp_path / "predict3" / "results.jsonl.partial").write_text(f"{record}\n")
    # predict3 is in use by a live process (this one): a run in progress, not a killed one
    (tmp_path / "predict3" / ".poster.lock").write_text(json.dumps({"pid": os.getpid(),
                                                                    "host": os.uname().nodename}))
    fresh = tmp_path / "predict4"
    fresh.mkdir()
    found = interrupted_runs(runs, fresh)
    assert found == [(runs / "results.jsonl.partial", 2), (tmp_path / "predict2" / "results.csv.partial", 2)]
    assert interrupted_runs(runs, runs) == [(runs / "results.jsonl.partial", 2)]  # --exist-ok: only itself
    assert interrupted_runs(tmp_path / "other", tmp_path / "other") == []
