"""Evaluating on data that lacks some of the model's classes (CK+ has no neutral): dataset classes
are mapped to model classes by name, with synonyms and ``--class-map``, and the report covers the
classes present."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch

from poster.cli import main
from poster.data import FER2013_CLASSES, RAFDB_CLASSES, EvalTransform, load_image
from poster.data.classmap import EXCLUDED, canonical_class_name, map_classes, parse_class_map
from poster.errors import DatasetError, flag_wording
from poster.inference.recognizer import default_checkpoint

CKPLUS_CLASSES = ("anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise")


def test_synonyms_and_spelling_are_one_name():
    assert {canonical_class_name(n) for n in ("Anger", "angry", " ANGRY ")} == {"anger"}
    assert canonical_class_name("Happiness") == canonical_class_name("happy") == "happiness"
    assert canonical_class_name("sad") == canonical_class_name("Sadness")
    assert canonical_class_name("Calm_1") == "calm1"  # unknown names: letters and digits only


def test_ckplus_maps_to_rafdb_by_name_except_contempt():
    with pytest.raises(DatasetError, match=r"\['contempt'\].*explicit=\{'contempt': '<model class>'\}"):
        map_classes(CKPLUS_CLASSES, RAFDB_CLASSES)
    with flag_wording(), pytest.raises(DatasetError, match=r"\['contempt'\].*--class-map contempt=<model class> "
                                                         r"\(or contempt= to leave them out\)"):
        map_classes(CKPLUS_CLASSES, RAFDB_CLASSES)  # the command line names its flag
    mapping = map_classes(CKPLUS_CLASSES, RAFDB_CLASSES, {"contempt": None})
    assert [RAFDB_CLASSES[m] if m != EXCLUDED else None for m in mapping.to_model] == [
        "Anger", None, "Disgust", "Fear", "Happiness", "Sadness", "Surprise"]
    assert mapping.excluded == ("contempt",) and mapping.unmapped_model_classes == ("Neutral",)
    assert mapping.map_targets([4, 0, 6]).tolist() == [3, 5, 0]
    merged = map_classes(CKPLUS_CLASSES, RAFDB_CLASSES, {"Contempt": "disgust"})  # names matched loosely
    assert merged.to_model[1] == RAFDB_CLASSES.index("Disgust")


def test_identity_index_fallback_and_bad_maps():
    assert map_classes(FER2013_CLASSES, FER2013_CLASSES).identity
    numbered = map_classes([str(i) for i in range(7)], RAFDB_CLASSES)  # no name matches: legacy order
    assert numbered.by_index and numbered.identity
    with pytest.raises(DatasetError, match="'joyful' is not one of the model classes"):
        map_classes(["a", "b"], ["x", "y"], {"a": "x", "b": "joyful"})
    with pytest.raises(DatasetError, match="'c' is not one of the dataset classes"):
        map_classes(["a", "b"], ["x", "y"], {"c": "x"})
    with pytest.raises(DatasetError, match="every dataset class out"):
        map_classes(["a"], ["x"], {"a": ""})


def test_parse_class_map_text_and_json(tmp_path):
    assert parse_class_map("calm=neutral, joy=Happiness,contempt=") == {
        "calm": "neutral", "joy": "Happiness", "contempt": None}
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"calm": "neutral", "contempt": None}))
    assert parse_class_map(str(path)) == {"calm": "neutral", "contempt": None}
    with pytest.raises(DatasetError, match="DATASET_CLASS=MODEL_CLASS"):
        parse_class_map("calm")
    path.write_text("[1, 2]")
    with pytest.raises(DatasetError, match="one JSON object"):
        parse_class_map(str(path))
    with pytest.raises(DatasetError, match="not found"):
        parse_class_map(str(tmp_path / "missing.json"))


@pytest.fixture(scope="module")
def ckplus_like(fer2013_dir, tmp_path_factory):
    """A CK+-named folder dataset from FER2013 faces: no neutral, contempt present, other names."""
    root = tmp_path_factory.mktemp("ckplus")
    rename = {"anger": "angry", "contempt": "disgust", "happy": "happy", "sadness": "sad", "surprise": "surprise"}
    for ck, fer in rename.items():
        (root / "test" / ck).mkdir(parents=True)
        for src in sorted((fer2013_dir / "val" / fer).glob("*.jpg"))[:4]:
            shutil.copy(src, root / "test" / ck / src.name)
    return root


def _bundled_predictions(paths) -> list[int]:
    """The bundled model's predictions, computed directly (eager fp32, its own transform)."""
    model = __import__("poster").load_model(default_checkpoint())
    transform = EvalTransform(model.meta.input)
    batch = torch.stack([transform(load_image(p, model.meta.input.channel_order)) for p in paths])
    with torch.inference_mode():
        return model(batch).argmax(1).tolist()


def test_poster_test_on_a_dataset_without_neutral(ckplus_like, tmp_path, capsys):
    base = ["test", "-c", default_checkpoint(), "--dataset", "folder", "--data", str(ckplus_like), "-j", "0",
            "--no-progress", "--device", "cpu", "-p"]
    assert main(base + ["-o", str(tmp_path / "refused")]) == 1
    assert "--class-map contempt=" in capsys.readouterr().err

    out = tmp_path / "out"
    assert main(base + ["--class-map", "contempt=", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["num_images"] == 16  # contempt's 4 images left out
    assert report["class_mapping"] == {"anger": "angry", "contempt": None, "happy": "happy", "sadness": "sad",
                                       "surprise": "surprise"}
    assert report["classes_without_examples"] == ["disgust", "fear", "neutral"]
    assert report["class_names"] == list(FER2013_CLASSES)
    support = dict(zip(report["class_names"], report["per_class"]["support"]))
    assert support == {"angry": 4, "disgust": 0, "fear": 0, "happy": 4, "neutral": 0, "sad": 4, "surprise": 4}
    for name in ("angry", "happy", "sad", "surprise"):
        assert f"  {name}" in printed
    assert "no examples of: disgust, fear, neutral" in printed and "4 classes with examples" in printed
    # Per-class results recomputed independently from the model's own predictions.
    with open(out / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    preds = _bundled_predictions([r["path"] for r in rows])
    assert [int(r["prediction"]) for r in rows] == preds
    targets = [FER2013_CLASSES.index({"anger": "angry", "happy": "happy", "sadness": "sad",
                                      "surprise": "surprise"}[r["path"].split("/")[-2]]) for r in rows]
    assert [int(r["target"]) for r in rows] == targets
    for c, name in enumerate(FER2013_CLASSES):
        if support[name]:
            recall = np.mean([p == c for p, t in zip(preds, targets) if t == c])
            assert report["per_class"]["recall"][c] == pytest.approx(recall)
    assert report["macro_f1_classes_with_examples"] == pytest.approx(
        np.mean([report["per_class"]["f1"][c] for c in range(7) if report["per_class"]["support"][c]]))
    assert list(out.glob("confusion_matrix_acc*.png"))


def test_fer2013_layout_without_the_neutral_folder(fer2013_dir, tmp_path, capsys):
    root = tmp_path / "fer"
    for cls in ("happy", "sad"):
        (root / "test" / cls).mkdir(parents=True)
        for src in sorted((fer2013_dir / "val" / cls).glob("*.jpg"))[:3]:
            shutil.copy(src, root / "test" / cls / src.name)
    assert main(["test", "-c", default_checkpoint(), "--dataset", "fer2013", "--data", str(root), "-j", "0",
                 "--no-progress", "--device", "cpu", "-o", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["num_images"] == 6
    assert report["classes_without_examples"] == ["angry", "disgust", "fear", "neutral", "surprise"]
