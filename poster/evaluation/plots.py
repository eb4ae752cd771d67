"""PNG plots: the reference confusion-matrix figure (docs/faithfulness.md#evaluation) and training curves.

Figures are built with matplotlib's object-oriented API on an Agg canvas (no pyplot, no global
backend switch, never ``show()``), rendered into memory and written atomically.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..fileio import atomic_write_bytes

__all__ = ["normalize_rows", "plot_confusion_matrix", "plot_training_curves"]


def _new_figure(figsize: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig: Any, path: str | os.PathLike, dpi: int) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return atomic_write_bytes(path, buf.getvalue())


def normalize_rows(cm: Any) -> np.ndarray:
    """Divide every row by its sum (rows with no samples stay 0)."""
    cm = np.asarray(cm, dtype=np.float64)
    sums = cm.sum(axis=1, keepdims=True)
    out = np.zeros_like(cm)
    np.divide(cm, sums, out=out, where=sums != 0)
    return out


def plot_confusion_matrix(cm: Any, labels: Sequence[str], title: str, path: str | os.PathLike,
                          normalize: bool = True, dpi: int = 100) -> Path:
    """Save the confusion matrix ``cm`` (rows = truth) as a PNG in the reference style.

    Row-normalized (unless ``normalize=False``), Blues colormap with colour bar, each cell's value
    with 2 decimals (white where it exceeds half the maximum), x axis "Prediction" with ticks
    rotated 90 degrees, y axis "Target", ``title`` on top.  Returns the written path.
    """
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] == 0:
        raise ValueError(f"confusion matrix must be square [C, C], got shape {cm.shape}")
    labels = [str(l) for l in labels]
    if len(labels) != cm.shape[0]:
        raise ValueError(f"{len(labels)} labels for a {cm.shape[0]}x{cm.shape[0]} confusion matrix")
    values = normalize_rows(cm) if normalize else cm.astype(np.float64)
    n = cm.shape[0]
    side = max(4.0, 0.6 * n + 2.5)
    fig = _new_figure((side + 1.0, side))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(values, interpolation="nearest", cmap="Blues")
    fig.colorbar(im, ax=ax)
    ax.set_title(title)
    ticks = np.arange(n)
    ax.set_xticks(ticks)
    ax.set_xticklabels(labels, rotation=90)
    ax.set_yticks(ticks)
    ax.set_yticklabels(labels)
    thresh = values.max() / 2.0
    for i in range(n):
        for j in range(n):
            v = values[i, j]
            ax.text(j, i, f"{v:.2f}", horizontalalignment="center", verticalalignment="center",
                    color="white" if v > thresh else "black")
    ax.set_ylabel("Target")
    ax.set_xlabel("Prediction")
    fig.tight_layout()
    return _save_png(fig, path, dpi)


def _series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs: list[float] = []
    ys: list[float] = []
    for i, row in enumerate(history):
        v = row.get(key)
        if v is None:
            continue
        try:
            v = float(v)
        except (TypeError, ValueError):
            continue
        if math.isnan(v):
            continue
        x = row.get("epoch", i + 1)
        xs.append(float(x) if x is not None else float(i + 1))
        ys.append(v)
    return xs, ys


def plot_training_curves(history: Sequence[Mapping[str, Any]], path: str | os.PathLike,
                         title: str | None = None, dpi: int = 100) -> Path:
    """Save loss and accuracy curves (two panels) from per-epoch dicts as a PNG.

    Each dict may hold ``epoch``, ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc``; missing,
    ``None`` or NaN values are skipped (a row without ``epoch`` is placed at its 1-based position).
    """
    fig = _new_figure((10.0, 4.0))
    panels = (("Loss", ("train_loss", "val_loss")), ("Accuracy", ("train_acc", "val_acc")))
    for k, (name, keys) in enumerate(panels):
        ax = fig.add_subplot(1, 2, k + 1)
        plotted = False
        for key in keys:
            xs, ys = _series(history, key)
            if xs:
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3,
                        label=key.replace("_", " "))
                plotted = True
        if plotted:
            ax.legend()
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("epoch")
        ax.set_ylabel(name.lower())
        ax.set_title(name)
        ax.grid(True, alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save_png(fig, path, dpi)
