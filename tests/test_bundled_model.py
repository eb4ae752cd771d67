"""The model shipped inside the package (issue 5, item 7): small, self-describing, the default of
``poster predict``, and trained for real: on held-out FER2013 faces fed as whole images
(``--detector none``) ``poster predict`` gives ``poster test``'s predictions, well above chance."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import poster
from poster.cli import main
from poster.inference.recognizer import default_checkpoint
from poster.data import FER2013_CLASSES
from poster.checkpoint.releases import BUNDLED_MODEL, BUNDLED_RELEASE

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "examples" / "astronaut.jpg"


def test_bundled_model_is_small_and_self_describing():
    assert BUNDLED_MODEL.is_file(), f"{BUNDLED_MODEL} is missing"
    assert BUNDLED_MODEL.stat().st_size <= 25 * 2**20
    model = poster.load_model(BUNDLED_RELEASE)
    meta = model.meta
    assert meta.arch == "poster_v1_tiny" and meta.class_names == FER2013_CLASSES and meta.dataset == "fer2013"
    assert meta.input.grayscale and meta.input.channel_order == "RGB" and meta.input.input_size == 224
    assert next(model.parameters()).dtype == torch.float32  # stored in float16, computed in float32
    stored = torch.load(BUNDLED_MODEL, weights_only=True)
    assert {v.dtype for v in stored["state_dict"].values() if v.is_floating_point()} == {torch.float16}
    assert stored["provenance"]["recipe"]["arch"] == "poster_v1_tiny" and stored["provenance"]["history"]
    assert default_checkpoint() == str(BUNDLED_MODEL)


def test_first_readme_command_works_offline(tmp_path, capsys):
    """`poster predict examples/astronaut.jpg`, no checkpoint: one face, a label, probabilities."""
    code = main(["predict", str(SAMPLE), "-o", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "face 0 at" in out and "Summary: 1 images (0 without a face), 1 faces" in out
    (record,) = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert record["label"] in FER2013_CLASSES and record["score"] > 0.6
    assert abs(sum(record["probabilities"].values()) - 1) < 1e-5
    assert (tmp_path / "out" / "annotated" / "astronaut.jpg").is_file()


@pytest.fixture(scope="module")
def heldout_faces(fer2013_dir, tmp_path_factory) -> Path:
    """20 PublicTest faces per class, in the folder layout (a temporary copy of 140 small files)."""
    root = tmp_path_factory.mktemp("fer_heldout")
    for cls in FER2013_CLASSES:
        target = root / "val" / cls
        target.mkdir(parents=True)
        for path in sorted((fer2013_dir / "val" / cls).glob("*.jpg"))[:20]:
            shutil.copy(path, target / path.name)
    return root


def test_predict_detector_none_matches_poster_test_on_heldout_fer2013(heldout_faces, tmp_path, capsys):
    code = main(["test", "-c", BUNDLED_RELEASE, "--dataset", "folder", "--data", str(heldout_faces),
                 "--split", "val", "-o", str(tmp_path / "test"), "--device", "cpu", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    with open(tmp_path / "test" / "predictions.csv", newline="") as f:
        tested = {row["path"]: int(row["prediction"]) for row in csv.DictReader(f)}
    report = json.loads((tmp_path / "test" / "report.json").read_text())
    assert len(tested) == 140
    # trained, not random: chance on this balanced set is 1/7 = 14 %
    assert report["accuracy"] > 0.35, report["accuracy"]

    code = main(["predict", str(heldout_faces / "val"), "--detector", "none", "-o", str(tmp_path / "pred"),
                 "--no-annotate", "-q", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    records = [json.loads(line) for line in (tmp_path / "pred" / "results.jsonl").read_text().splitlines()]
    predicted = {r["source"]: FER2013_CLASSES.index(r["label"]) for r in records}
    assert predicted == tested
    probs = np.array([[r["probabilities"][c] for c in FER2013_CLASSES] for r in records])
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
