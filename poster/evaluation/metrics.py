"""Classification metrics from integer predictions and targets (no scikit-learn needed).

Definitions (C = ``num_classes``, cm = confusion matrix with rows = truth, columns = prediction):

* ``accuracy`` = trace(cm) / N.
* ``mean_class_accuracy`` = recall averaged over the classes that occur in the targets
  (classes with no support are left out, not counted as 0).
* ``macro_f1`` = F1 per class averaged over ALL C classes, F1_c = 2 TP / (2 TP + FP + FN); a
  class with no support and no prediction has 0/0 and counts as **0**.  This equals
  ``sklearn.metrics.f1_score(t, p, labels=range(C), average='macro', zero_division=0)``.
* ``macro_f1_present`` = the same average over only the classes that occur in the targets OR the
  predictions.  This is what ``f1_score(t, p, average='macro')`` returns when called without
  ``labels`` (as the V1 training script did), because scikit-learn then averages over the labels it
  sees.  Both agree whenever every class occurs.
* precision of a class that is never predicted is 0 (scikit-learn's ``zero_division=0``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

__all__ = ["confusion_matrix", "ClassificationReport", "classification_report"]


def _as_int_array(x: Any, what: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, on any device
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be 1-D (one class index per sample), got shape {arr.shape}"
                         + (" (take argmax of logits first)" if arr.ndim == 2 else ""))
    if arr.size == 0:
        return arr.astype(np.int64)
    if arr.dtype.kind == "b" or arr.dtype.kind not in "iuf":
        raise ValueError(f"{what} must hold integer class indices, got dtype {arr.dtype}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(f"{what} must hold integer class indices, got non-integer values")
    return arr.astype(np.int64)


def confusion_matrix(preds: Any, targets: Any, num_classes: int) -> np.ndarray:
    """``cm[t, p]`` = number of samples of true class t predicted as p (int64, [C, C])."""
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    c = int(num_classes)
    p = _as_int_array(preds, "preds")
    t = _as_int_array(targets, "targets")
    if p.shape != t.shape:
        raise ValueError(f"preds and targets differ in length: {p.shape[0]} vs {t.shape[0]}")
    for arr, what in ((p, "preds"), (t, "targets")):
        if arr.size and (arr.min() < 0 or arr.max() >= c):
            bad = arr[(arr < 0) | (arr >= c)][0]
            raise ValueError(f"{what} contains class index {bad}, outside 0..{c - 1}")
    return np.bincount(t * c + p, minlength=c * c).reshape(c, c).astype(np.int64)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros(num.shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


@dataclass(frozen=True, eq=False)  # eq=False: the ndarray field has no plain ==
class ClassificationReport:
    """Metrics of one evaluation; build with ``classification_report`` or ``from_confusion_matrix``."""

    confusion_matrix: np.ndarray  # [C, C] int64, rows = truth
    accuracy: float
    mean_class_accuracy: float
    macro_f1: float
    macro_f1_present: float
    precision: tuple[float, ...]
    recall: tuple[float, ...]
    f1: tuple[float, ...]
    support: tuple[int, ...]
    class_names: tuple[str, ...] = field(default=())

    @property
    def num_classes(self) -> int:
        return int(self.confusion_matrix.shape[0])

    @property
    def num_samples(self) -> int:
        return int(self.confusion_matrix.sum())

    @property
    def correct(self) -> int:
        return int(np.trace(self.confusion_matrix))

    @property
    def present_classes(self) -> tuple[int, ...]:
        """Indices of the classes that have examples (support > 0)."""
        return tuple(i for i, n in enumerate(self.support) if n > 0)

    @property
    def macro_f1_supported(self) -> float:
        """F1 averaged over the classes that have examples only: the macro F1 of a dataset that
        lacks some of the model's classes (their F1 is 0 by definition, not a measurement)."""
        return float(np.mean([self.f1[i] for i in self.present_classes]))

    @classmethod
    def from_confusion_matrix(cls, cm: Any, class_names: Sequence[str] | None = None) -> "ClassificationReport":
        cm = np.asarray(cm)
        if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] == 0:
            raise ValueError(f"confusion matrix must be square [C, C], got shape {cm.shape}")
        if cm.dtype.kind not in "iu" or (cm.size and cm.min() < 0):
            raise ValueError("confusion matrix must hold non-negative integer counts")
        cm = cm.astype(np.int64)
        names = tuple(str(n) for n in class_names) if class_names is not None else ()
        if names and len(names) != cm.shape[0]:
            raise ValueError(f"{len(names)} class names for {cm.shape[0]} classes")
        n = int(cm.sum())
        if n == 0:
            raise ValueError("no samples: metrics are undefined")
        tp = np.diag(cm).astype(np.float64)
        support = cm.sum(axis=1)
        predicted = cm.sum(axis=0)
        recall = _safe_div(tp, support.astype(np.float64))
        precision = _safe_div(tp, predicted.astype(np.float64))
        f1 = _safe_div(2 * tp, (support + predicted).astype(np.float64))  # 2TP / (2TP + FP + FN)
        present = support > 0
        seen = present | (predicted > 0)
        return cls(
            confusion_matrix=cm,
            accuracy=float(tp.sum() / n),
            mean_class_accuracy=float(recall[present].mean()),
            macro_f1=float(f1.mean()),
            macro_f1_present=float(f1[seen].mean()),
            precision=tuple(float(v) for v in precision),
            recall=tuple(float(v) for v in recall),
            f1=tuple(float(v) for v in f1),
            support=tuple(int(v) for v in support),
            class_names=names,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (lists, ints and floats only)."""
        return {
            "num_samples": self.num_samples,
            "num_classes": self.num_classes,
            "correct": self.correct,
            "accuracy": self.accuracy,
            "mean_class_accuracy": self.mean_class_accuracy,
            "macro_f1": self.macro_f1,
            "macro_f1_present": self.macro_f1_present,
            "class_names": list(self.class_names),
            "per_class": {
                "precision": list(self.precision),
                "recall": list(self.recall),
                "f1": list(self.f1),
                "support": list(self.support),
            },
            "confusion_matrix": self.confusion_matrix.tolist(),
        }

    def summary(self) -> str:
        """Short human-readable block, per-class lines included."""
        lines = [f"accuracy {self.accuracy:.4f} ({self.correct}/{self.num_samples})  "
                 f"mean class accuracy {self.mean_class_accuracy:.4f}  macro F1 {self.macro_f1:.4f}"]
        names = self.class_names or tuple(str(i) for i in range(self.num_classes))
        width = max(len(n) for n in names)
        for i, name in enumerate(names):
            lines.append(f"  {name:<{width}}  recall {self.recall[i]:.4f}  precision {self.precision[i]:.4f}  "
                         f"F1 {self.f1[i]:.4f}  support {self.support[i]}")
        return "\n".join(lines)


def classification_report(preds: Any, targets: Any, num_classes: int,
                          class_names: Sequence[str] | None = None) -> ClassificationReport:
    """All metrics from integer predictions and targets (numpy, torch or lists)."""
    return ClassificationReport.from_confusion_matrix(confusion_matrix(preds, targets, num_classes), class_names)
