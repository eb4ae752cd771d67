"""Prediction over a large folder streams: memory stays flat (issue 6, item 4)."""

from __future__ import annotations

import cv2
import numpy as np

import poster


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def test_predict_many_over_a_large_folder_runs_in_flat_memory(tmp_path):
    """1,500 images through Recognizer.predict_many: after warm-up, resident memory grows < 40 MB.

    (A run that kept every decoded image or result tensor would grow by hundreds of MB: each image
    becomes a 3x224x224 float32 tensor of 0.6 MB.)
    """
    rng = np.random.default_rng(0)
    folder = tmp_path / "faces"
    folder.mkdir()
    paths = []
    for i in range(1500):
        path = folder / f"{i:05d}.png"
        cv2.imwrite(str(path), rng.integers(0, 255, (48, 48), dtype=np.uint8))
        paths.append(path)
    model = poster.create_model("poster_v1_tiny", num_classes=7).eval()
    model.meta = poster.ModelMeta(arch="poster_v1_tiny", num_classes=7, class_names=[f"c{i}" for i in range(7)],
                                  arch_options={"token_mixing": False})
    rec = poster.Recognizer(model, detector="none", batch_size=64)
    samples = {}
    count = 0
    for result in rec.predict_many(str(p) for p in paths):
        assert result.error is None and len(result.faces) == 1
        count += 1
        if count in (300, 1500):
            samples[count] = _rss_mb()
    assert count == 1500
    growth = samples[1500] - samples[300]
    assert growth < 40, f"resident memory grew by {growth:.0f} MB between image 300 and 1500"
