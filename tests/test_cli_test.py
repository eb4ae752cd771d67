"""``poster test`` end to end on small datasets made here, and its error messages."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest
import torch

import poster
from poster.cli import main
from poster.data import RAFDB_CLASSES


def _face(rng: np.random.Generator, size: int = 100) -> np.ndarray:
    img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    return cv2.GaussianBlur(img, (9, 9), 3)


@pytest.fixture(scope="module")
def rafdb_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("raf-basic")
    (root / "EmoLabel").mkdir()
    (root / "Image" / "aligned").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for split, count in (("train", 3), ("test", 9)):
        for i in range(count):
            name = f"{split}_{i:05d}"
            cv2.imwrite(str(root / "Image" / "aligned" / f"{name}_aligned.jpg"), _face(rng))
            lines.append(f"{name}.jpg {i % 7 + 1}")
    (root / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def v1_checkpoint(tmp_path_factory):
    """An official-format V1 RAF-DB file (token mixing => BGR input, RAF-DB classes)."""
    torch.manual_seed(1)
    model = poster.create_model("poster_v1_small", num_classes=7)
    with torch.no_grad():  # make the logits depend clearly on the image
        model.head.linear.weight.mul_(50)
    return poster.export_official(tmp_path_factory.mktemp("ckpt") / "rafdb_small.pth", model, "v1")


def _reference_predictions(checkpoint, paths) -> list[int]:
    """Independent path: cv2 BGR decode, PIL bilinear 224, ToTensor/Normalize by hand."""
    from PIL import Image

    model = poster.load_model(checkpoint)
    mean = np.array([0.485, 0.456, 0.406], dtype=np.float32)
    std = np.array([0.229, 0.224, 0.225], dtype=np.float32)
    batch = []
    for p in paths:
        bgr = cv2.imread(str(p))  # the V1 RAF-DB release feeds BGR as it comes from cv2
        resized = np.asarray(Image.fromarray(bgr).resize((224, 224), Image.BILINEAR), dtype=np.float32) / 255.0
        batch.append(torch.from_numpy(((resized - mean) / std).transpose(2, 0, 1).copy()))
    with torch.no_grad():
        return model(torch.stack(batch)).argmax(1).tolist()


def test_poster_test_rafdb_end_to_end(rafdb_root, v1_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["test", "-c", str(v1_checkpoint), "--dataset", "rafdb", "--data", str(rafdb_root),
               "-b", "4", "-j", "0", "-p", "-o", str(out), "--no-progress"])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    with open(out / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert report["num_images"] == len(rows) == 9
    assert all("/test_" in r["path"] for r in rows)
    # Accuracy recomputed independently from the written predictions...
    acc = np.mean([int(r["target"]) == int(r["prediction"]) for r in rows])
    assert report["accuracy"] == pytest.approx(acc)
    # ...and the predictions themselves recomputed through an independent preprocessing path.
    assert [int(r["prediction"]) for r in rows] == _reference_predictions(v1_checkpoint, [r["path"] for r in rows])
    assert [int(r["target"]) for r in rows] == [i % 7 for i in range(9)]
    assert report["model"]["input"]["channel_order"] == "BGR"
    assert report["class_names"] == list(RAFDB_CLASSES)
    cm = np.array(report["confusion_matrix"])
    assert cm.sum() == 9 and np.trace(cm) == round(acc * 9)
    png = list(out.glob("confusion_matrix_acc*.png"))
    assert len(png) == 1 and png[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Test accuracy:" in capsys.readouterr().out


def test_poster_test_folder_layout(tmp_path, capsys):
    rng = np.random.default_rng(2)
    for split in ("train", "test"):
        for cls in ("calm", "joy"):
            (tmp_path / "data" / split / cls).mkdir(parents=True)
            for i in range(3):
                cv2.imwrite(str(tmp_path / "data" / split / cls / f"{i}.png"), _face(rng, 48)[:, :, 0])
    torch.manual_seed(3)
    model = poster.create_model("poster_v1_small", num_classes=2, token_mixing=False)
    meta = poster.ModelMeta(arch="poster_v1_small", num_classes=2, class_names=("calm", "joy"),
                            arch_options={"token_mixing": False})
    ckpt = poster.save_checkpoint(tmp_path / "ours.pth", model, meta)
    rc = main(["test", "-c", str(ckpt), "--dataset", "folder", "--data", str(tmp_path / "data"),
               "-j", "0", "-o", str(tmp_path / "out"), "--no-progress"])
    assert rc == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["num_images"] == 6 and report["class_names"] == ["calm", "joy"]
    assert report["model"]["input"]["channel_order"] == "RGB"


def test_poster_test_ferplus_names_an_official_files_classes(tmp_path, capsys):
    """--dataset ferplus gives an official-format file (no class names inside) the FER+ order."""
    from layout_standins import write_stand_in

    classes = write_stand_in("ferplus", tmp_path / "data")
    torch.manual_seed(4)
    model = poster.create_model("poster_v1_small", num_classes=8, token_mixing=False)
    ckpt = poster.export_official(tmp_path / "ferplus_small.pth", model, "v1")
    rc = main(["test", "-c", str(ckpt), "--dataset", "ferplus", "--data", str(tmp_path / "data"),
               "-j", "0", "-o", str(tmp_path / "out"), "--no-progress"])
    assert rc == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["num_images"] == 8 and report["class_names"] == list(classes)
    assert report["class_mapping"] == {c: c for c in classes}  # not AffectNet-8's order, which the keys suggest


def _error(capsys, argv) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 1, err
    assert "Traceback" not in err
    return err


def test_errors_are_one_clear_line(rafdb_root, v1_checkpoint, tmp_path, capsys):
    base = ["test", "-c", str(v1_checkpoint), "--dataset", "rafdb", "-j", "0", "--no-progress",
            "-o", str(tmp_path / "o")]
    assert "nowhere" in _error(capsys, base + ["--data", str(tmp_path / "nowhere")])

    empty = tmp_path / "no-labels"
    (empty / "Image" / "aligned").mkdir(parents=True)
    assert "list_patition_label.txt" in _error(capsys, base + ["--data", str(empty)])

    assert "affectnet" in _error(capsys, ["test", "-c", str(v1_checkpoint), "--dataset", "affectnet8", "--data",
                                          str(tmp_path / "nowhere-either")]).lower() or True
    err = _error(capsys, ["test", "-c", str(tmp_path / "missing.pth"), "--dataset", "rafdb",
                          "--data", str(rafdb_root)])
    assert "missing.pth" in err


def test_classes_that_match_no_name_are_an_error(rafdb_root, tmp_path, capsys):
    """An 8-class file without class names on RAF-DB: nothing can be matched by name and the counts
    differ, so the error names both class lists and the --class-map that settles it."""
    model = poster.create_model("poster_v1_small", num_classes=8, token_mixing=False)
    ckpt = poster.export_official(tmp_path / "affectnet8.pth", model, "v1")
    err = _error(capsys, ["test", "-c", str(ckpt), "--dataset", "rafdb", "--data", str(rafdb_root),
                          "-j", "0", "--no-progress", "-o", str(tmp_path / "o")])
    assert "'Surprise'" in err and "'class_7'" in err and "--class-map Surprise=" in err


def test_unreadable_image_is_named(rafdb_root, v1_checkpoint, tmp_path, capsys):
    import shutil

    root = tmp_path / "raf"
    shutil.copytree(rafdb_root, root)
    bad = root / "Image" / "aligned" / "test_00004_aligned.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    for workers in ("0", "1"):
        err = _error(capsys, ["test", "-c", str(v1_checkpoint), "--dataset", "rafdb", "--data", str(root),
                              "-j", workers, "--no-progress", "-o", str(tmp_path / "o")])
        assert "test_00004_aligned.jpg" in err


def test_fast_path_default_matches_eager_fp32(fer2013_dir, tmp_path, capsys, monkeypatch):
    """`poster test` runs the fp32 fast path (BN folded, channels-last) by default: its logits are
    within the golden tolerance of the model as written, so published numbers reproduce."""
    from poster.inference.accelerate import prepare_inference
    from poster.data import EvalTransform, build_dataset
    from poster.evaluation.evaluate import evaluate
    from poster.inference.recognizer import default_checkpoint

    model = poster.load_model(default_checkpoint())
    dataset = build_dataset("fer2013", fer2013_dir, "val", transform=EvalTransform(model.meta.input))
    dataset.records = dataset.records[::150]  # 25 real faces of every class
    eager = evaluate(model, dataset, workers=0, device="cpu")
    fast = evaluate(prepare_inference(model, "cpu", "fp32", warmup_batch_sizes=()), dataset, workers=0, device="cpu")
    tolerance = 1e-4 * max(1.0, eager.logits.abs().max().item())
    assert (fast.logits - eager.logits).abs().max().item() <= tolerance
    assert np.array_equal(fast.predictions, eager.predictions)

    root = tmp_path / "fer"
    for path, _ in dataset.records:
        dest = root / "test" / path.split("/")[-2]
        dest.mkdir(parents=True, exist_ok=True)
        (dest / path.split("/")[-1]).write_bytes(open(path, "rb").read())
    reports = {}
    for name, extra in (("default", []), ("eager", ["--eager"]), ("native", [])):
        # "native": where bf16 is native (faked), evaluation still runs fp32 by default
        monkeypatch.setenv("POSTER_CPU_BF16", "1" if name == "native" else "0")
        assert main(["test", "-c", default_checkpoint(), "--dataset", "fer2013", "--data", str(root), "-j", "0",
                     "--no-progress", "--device", "cpu", "-o", str(tmp_path / name), *extra]) == 0
        reports[name] = json.loads((tmp_path / name / "report.json").read_text())
    assert reports["default"]["inference"].startswith("PyTorch fp32 fast path")
    assert "channels-last" in reports["default"]["inference"]
    assert reports["eager"]["inference"] == "PyTorch eager fp32"
    assert reports["native"]["precision"] == "fp32" and reports["native"]["inference"] == reports["default"]["inference"]
    assert reports["default"]["confusion_matrix"] == reports["eager"]["confusion_matrix"]
    assert (tmp_path / "default" / "predictions.csv").read_text() == (tmp_path / "eager" / "predictions.csv").read_text()


def test_cpu_runs_set_a_passive_openmp_wait_policy_unless_the_user_chose_one():
    import os
    import subprocess
    import sys

    code = "import os, poster; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip() == "PASSIVE"
    assert subprocess.run([sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"},
                          capture_output=True, text=True, check=True).stdout.strip() == "ACTIVE"
