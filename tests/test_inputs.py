"""Inputs users have: TIFF and the other formats OpenCV reads, in datasets (``poster test`` and
training read them through ``build_dataset``) and in ``poster predict``."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from poster.cli import main
from poster.data import IMAGE_EXTENSIONS, build_dataset, load_image
from poster.inference.recognizer import default_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _faces(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [cv2.GaussianBlur(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8), (7, 7), 2) for _ in range(count)]


def test_opencv_formats_are_image_extensions():
    for ext in (".tif", ".tiff", ".jp2", ".ppm", ".pgm", ".pnm", ".ras", ".hdr", ".jpg", ".png", ".webp"):
        assert ext in IMAGE_EXTENSIONS


def test_tiff_decodes_like_png_also_at_16_bits(tmp_path):
    face = _faces(1)[0]
    cv2.imwrite(str(tmp_path / "face.png"), face)
    cv2.imwrite(str(tmp_path / "face.tif"), face)
    cv2.imwrite(str(tmp_path / "face16.tiff"), face.astype(np.uint16) * 257)  # 16-bit scientific TIFF
    png = load_image(tmp_path / "face.png", "BGR")
    assert np.array_equal(load_image(tmp_path / "face.tif", "BGR"), png)
    assert np.array_equal(load_image(tmp_path / "face16.tiff", "BGR"), png)


def test_folder_dataset_picks_up_tiff_and_other_opencv_formats(tmp_path):
    faces = _faces(6)
    for cls, exts in (("happy", (".tif", ".TIFF", ".png")), ("sad", (".ppm", ".jp2", ".bmp"))):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for i, ext in enumerate(exts):
            cv2.imwrite(str(tmp_path / "train" / cls / f"{i}{ext}"), faces[i])
    ds = build_dataset("folder", tmp_path, "train")  # what `poster train` and `poster test` build
    assert ds.class_counts() == [3, 3]
    assert {Path(p).suffix for p, _ in ds.records} == {".tif", ".TIFF", ".png", ".ppm", ".jp2", ".bmp"}
    assert all(ds.load(i).shape == (48, 48, 3) for i in range(len(ds)))


def test_poster_predict_and_test_read_tiff(tmp_path, capsys):
    astronaut = cv2.imread(str(ROOT / "examples" / "astronaut.jpg"))
    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "astronaut.png"), astronaut)
    cv2.imwrite(str(photos / "astronaut.tif"), astronaut)
    out = tmp_path / "out"
    assert main(["predict", str(photos), "-o", str(out), "--no-annotate", "-q", "--device", "cpu"]) == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(Path(r["source"]).name for r in records) == ["astronaut.png", "astronaut.tif"]
    assert records[0]["probabilities"] == records[1]["probabilities"]  # lossless formats: same pixels
    assert "skipped" not in capsys.readouterr().err

    data = tmp_path / "data" / "test"
    for cls, face in zip(("happy", "sad"), _faces(2)):
        (data / cls).mkdir(parents=True)
        cv2.imwrite(str(data / cls / "0.tiff"), face)
    assert main(["test", "-c", default_checkpoint(), "--dataset", "folder", "--data", str(tmp_path / "data"),
                 "-j", "0", "--no-progress", "--device", "cpu", "-o", str(tmp_path / "test")]) == 0
    assert json.loads((tmp_path / "test" / "report.json").read_text())["num_samples"] == 2
