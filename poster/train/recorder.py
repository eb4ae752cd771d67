"""What a run leaves in its folder besides checkpoints: ``config.json``, ``metrics.jsonl`` and
``curves.png`` after every epoch, optional TensorBoard scalars, and at the end ``report.json`` and
``confusion_matrix.png``.  Every file is written atomically; only the main process records."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

from ..errors import PosterError, option
from ..fileio import atomic_write_text

log = logging.getLogger(__name__)

_SCALARS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s")


class RunRecorder:
    def __init__(self, out: Path, title: str, epochs: int, tensorboard: bool = False):
        self.out = Path(out)
        self.title = title
        self.epochs = epochs
        self._writer = self._tensorboard() if tensorboard else None

    def _tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise PosterError(f"{option('tensorboard', True)} needs the tensorboard package (pip install tensorboard)") from e
        return SummaryWriter(str(self.out / "tensorboard"))

    def config(self, config: dict[str, Any]) -> None:
        atomic_write_text(self.out / "config.json", json.dumps(config, indent=2))

    def epoch(self, entry: dict[str, Any], history: Sequence[dict[str, Any]]) -> None:
        """One finished epoch: the log line, the metrics file and curves, TensorBoard."""
        self._print(entry)
        atomic_write_text(self.out / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))
        from ..evaluation.plots import plot_training_curves

        plot_training_curves(history, self.out / "curves.png", title=self.title)
        if self._writer is not None:
            for key in _SCALARS:
                self._writer.add_scalar(key, entry[key], entry["epoch"])

    def _print(self, s: dict[str, Any]) -> None:
        test = f" test acc {s['test_acc']:.4f}" if s.get("test_acc") is not None else ""
        log.info("[epoch %d/%d] train loss %.4f acc %.4f | val loss %.4f acc %.4f F1 %.4f%s | lr %.3g | "
                 "%.1f img/s, %.1fs%s", s["epoch"], self.epochs, s["train_loss"], s["train_acc"], s["val_loss"],
                 s["val_acc"], s["val_f1"], test, s["lr"], s["images_per_s"], s["seconds"],
                 "  *best*" if s["best"] else "")

    def report(self, result: dict[str, Any], confusion_matrix: Any, class_names: Sequence[str], caption: str) -> None:
        """The final report and confusion matrix."""
        from ..data import abbreviate
        from ..evaluation.plots import plot_confusion_matrix

        plot_confusion_matrix(confusion_matrix, [abbreviate(c) for c in class_names], f"{self.title} ({caption})",
                              self.out / "confusion_matrix.png")
        atomic_write_text(self.out / "report.json", json.dumps(result, indent=2))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
