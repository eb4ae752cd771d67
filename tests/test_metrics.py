"""Metrics against hand-computed examples, and the PNG plots."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from poster.evaluation.metrics import ClassificationReport, classification_report, confusion_matrix
from poster.evaluation.plots import normalize_rows, plot_confusion_matrix, plot_training_curves

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# 3 classes, 8 samples
TARGETS = [0, 0, 0, 1, 1, 2, 2, 2]
PREDS = [0, 0, 1, 1, 2, 2, 2, 0]
#        rows = truth        cols = prediction
CM = [[2, 1, 0],
      [0, 1, 1],
      [1, 0, 2]]


def test_confusion_matrix_hand_example():
    cm = confusion_matrix(PREDS, TARGETS, 3)
    assert cm.dtype == np.int64
    assert cm.tolist() == CM
    # torch and numpy inputs give the same
    assert confusion_matrix(torch.tensor(PREDS), torch.tensor(TARGETS), 3).tolist() == CM
    assert confusion_matrix(np.array(PREDS, np.uint8), np.array(TARGETS), 3).tolist() == CM
    assert confusion_matrix(np.array(PREDS, float), TARGETS, 3).tolist() == CM
    # rows are the truth: swapping arguments transposes
    assert confusion_matrix(TARGETS, PREDS, 3).tolist() == np.array(CM).T.tolist()


def test_report_hand_example():
    r = classification_report(PREDS, TARGETS, 3, class_names=["a", "b", "c"])
    assert r.num_samples == 8 and r.correct == 5 and r.num_classes == 3
    assert r.accuracy == pytest.approx(5 / 8)
    # recalls 2/3, 1/2, 2/3
    assert r.recall == pytest.approx((2 / 3, 1 / 2, 2 / 3))
    assert r.mean_class_accuracy == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    # precisions: col sums 3, 2, 3 -> 2/3, 1/2, 2/3
    assert r.precision == pytest.approx((2 / 3, 1 / 2, 2 / 3))
    # F1 = 2TP/(2TP+FP+FN): 4/6, 2/4, 4/6
    assert r.f1 == pytest.approx((2 / 3, 1 / 2, 2 / 3))
    assert r.macro_f1 == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    assert r.macro_f1_present == pytest.approx(r.macro_f1)
    assert r.support == (3, 2, 3)
    d = r.to_dict()
    json.dumps(d)  # plain types only
    assert d["confusion_matrix"] == CM and d["class_names"] == ["a", "b", "c"]
    assert d["per_class"]["support"] == [3, 2, 3] and d["accuracy"] == pytest.approx(0.625)
    assert "accuracy 0.6250 (5/8)" in r.summary()


def test_absent_classes_and_zero_division():
    # 4 classes; class 3 never occurs nor is predicted, class 2 is predicted but never true
    t = [0, 0, 1, 1]
    p = [0, 2, 1, 1]
    r = classification_report(p, t, 4)
    assert r.accuracy == pytest.approx(3 / 4)
    # mean class accuracy over classes with support only (0 and 1): (1/2 + 1) / 2
    assert r.mean_class_accuracy == pytest.approx(0.75)
    # F1: class0 2*1/(2+0+1)=2/3, class1 2*2/(4+0+0)=1, class2 0 (FP only), class3 0/0 -> 0
    assert r.f1 == pytest.approx((2 / 3, 1.0, 0.0, 0.0))
    assert r.precision == pytest.approx((1.0, 1.0, 0.0, 0.0))
    assert r.macro_f1 == pytest.approx((2 / 3 + 1) / 4)  # averaged over all 4 classes
    assert r.macro_f1_present == pytest.approx((2 / 3 + 1 + 0) / 3)  # sklearn without labels=
    assert r.support == (2, 2, 0, 0)


def test_perfect_and_all_wrong():
    r = classification_report([1, 0, 1], [1, 0, 1], 2)
    assert (r.accuracy, r.mean_class_accuracy, r.macro_f1) == (1.0, 1.0, 1.0)
    r = classification_report([1, 1], [0, 0], 2)
    assert (r.accuracy, r.mean_class_accuracy, r.macro_f1, r.macro_f1_present) == (0.0, 0.0, 0.0, 0.0)


def test_input_validation():
    with pytest.raises(ValueError, match="differ in length"):
        confusion_matrix([0, 1], [0], 2)
    with pytest.raises(ValueError, match="outside 0..1"):
        confusion_matrix([0, 2], [0, 1], 2)
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix([0, 1], [-1, 1], 2)
    with pytest.raises(ValueError, match="argmax"):
        confusion_matrix(np.zeros((2, 3)), [0, 1], 3)
    with pytest.raises(ValueError, match="non-integer"):
        confusion_matrix([0.5, 1.0], [0, 1], 2)
    with pytest.raises(ValueError):
        confusion_matrix([0], [0], 0)
    assert confusion_matrix([], [], 3).tolist() == [[0] * 3] * 3
    with pytest.raises(ValueError, match="no samples"):
        classification_report([], [], 3)
    with pytest.raises(ValueError):
        ClassificationReport.from_confusion_matrix([[1, 2, 3]])
    with pytest.raises(ValueError):
        classification_report([0], [0], 2, class_names=["only one"])


def _reference_metrics(p, t, c):
    """Straightforward per-sample loops, independent of the vectorised implementation."""
    cm = [[0] * c for _ in range(c)]
    for pi, ti in zip(p, t):
        cm[ti][pi] += 1
    f1s, recalls = [], []
    for k in range(c):
        tp = sum(1 for pi, ti in zip(p, t) if pi == k and ti == k)
        fp = sum(1 for pi, ti in zip(p, t) if pi == k and ti != k)
        fn = sum(1 for pi, ti in zip(p, t) if pi != k and ti == k)
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        f1s.append(2 * prec * rec / (prec + rec) if prec + rec else 0.0)
        if tp + fn:
            recalls.append(rec)
    return cm, sum(f1s) / c, sum(recalls) / len(recalls)


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 6).flatmap(lambda c: st.tuples(
    st.just(c), st.lists(st.tuples(st.integers(0, c - 1), st.integers(0, c - 1)), min_size=1, max_size=40))))
def test_against_loop_reference(case):
    c, pairs = case
    p = [a for a, _ in pairs]
    t = [b for _, b in pairs]
    cm, f1, mca = _reference_metrics(p, t, c)
    r = classification_report(np.array(p), torch.tensor(t), c)
    assert r.confusion_matrix.tolist() == cm
    assert r.accuracy == pytest.approx(sum(a == b for a, b in pairs) / len(pairs))
    assert r.macro_f1 == pytest.approx(f1)
    assert r.mean_class_accuracy == pytest.approx(mca)


def test_matches_sklearn():
    import sklearn.metrics as sk  # in the dev extra: this cross-check always runs
    rng = np.random.default_rng(0)
    t = rng.integers(0, 5, 200)
    p = np.where(rng.random(200) < 0.6, t, rng.integers(0, 5, 200))
    p[p == 4] = 3  # class 4 never predicted
    r = classification_report(p, t, 5)
    assert np.array_equal(r.confusion_matrix, sk.confusion_matrix(t, p, labels=range(5)))
    assert r.macro_f1 == pytest.approx(sk.f1_score(t, p, labels=range(5), average="macro", zero_division=0))
    assert r.macro_f1_present == pytest.approx(sk.f1_score(t, p, average="macro", zero_division=0))
    assert r.mean_class_accuracy == pytest.approx(sk.balanced_accuracy_score(t, p))


# ------------------------------------------------------------------------------ plots

def _assert_png(path, min_size=2000):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > min_size
    return data


def test_normalize_rows():
    out = normalize_rows([[1, 3], [0, 0]])
    assert out.tolist() == [[0.25, 0.75], [0.0, 0.0]]


def test_plot_confusion_matrix_writes_png(tmp_path):
    cm = np.array(CM)
    path = tmp_path / "Confusion_matrix" / "RAF-DB" / "acc0.6250.png"
    out = plot_confusion_matrix(cm, ["SU", "FE", "DI"], "RAF-DB", path)
    assert out == path
    _assert_png(path)
    # nothing left behind but the png (atomic write through a temp file)
    assert [p.name for p in path.parent.iterdir()] == ["acc0.6250.png"]
    # larger matrix with an empty row still works; sizes differ
    cm8 = np.random.default_rng(1).integers(0, 50, (8, 8))
    cm8[3] = 0
    p8 = tmp_path / "cm8.png"
    plot_confusion_matrix(cm8, list("ABCDEFGH"), "AffectNet_8class", p8)
    _assert_png(p8)
    with pytest.raises(ValueError):
        plot_confusion_matrix(cm, ["a", "b"], "t", tmp_path / "x.png")


def test_plot_confusion_matrix_pixels_follow_values(tmp_path):
    # diagonal matrix -> dark diagonal, white off-diagonal cells; compare two renders
    from PIL import Image

    a, b = tmp_path / "a.png", tmp_path / "b.png"
    plot_confusion_matrix(np.eye(3, dtype=int) * 10, ["x", "y", "z"], "diag", a)
    plot_confusion_matrix(np.ones((3, 3), dtype=int), ["x", "y", "z"], "flat", b)
    ia = np.asarray(Image.open(a).convert("RGB"))
    ib = np.asarray(Image.open(b).convert("RGB"))
    assert ia.shape == ib.shape
    assert not np.array_equal(ia, ib)


def test_plot_training_curves(tmp_path):
    history = [
        {"epoch": 1, "train_loss": 1.9, "train_acc": 0.3, "val_loss": 1.7, "val_acc": 0.35},
        {"epoch": 2, "train_loss": 1.5, "train_acc": 0.45},  # no validation this epoch
        {"epoch": 3, "train_loss": 1.2, "train_acc": 0.55, "val_loss": 1.3, "val_acc": float("nan")},
    ]
    p = plot_training_curves(history, tmp_path / "curves.png", title="run")
    _assert_png(p)
    p2 = plot_training_curves([], tmp_path / "empty.png")
    _assert_png(p2, min_size=1000)
