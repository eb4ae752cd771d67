"""Evaluation: run a model over a dataset and compute the reference's metrics."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..device import resolve_device
from .metrics import ClassificationReport, classification_report


@dataclass
class EvalResult:
    logits: torch.Tensor  # [N, C], float32 on CPU
    targets: np.ndarray  # [N]
    report: ClassificationReport
    seconds: float

    @property
    def predictions(self) -> np.ndarray:
        return self.logits.argmax(dim=1).numpy()


@torch.inference_mode()
def predict_logits(model: Callable[[torch.Tensor], torch.Tensor], loader: DataLoader, device: torch.device,
                   progress: bool = False, description: str = "eval") -> tuple[torch.Tensor, np.ndarray]:
    """Logits and targets over a loader, in the loader's order (``model``: a module or a backend)."""
    from tqdm.auto import tqdm

    if isinstance(model, nn.Module):
        model.eval()
    logits, targets = [], []
    for images, labels in tqdm(loader, desc=description, disable=None if progress else True, unit="batch",
                               leave=False):  # None: no bar when stderr is not a terminal (captured output)
        out = model(images.to(device, non_blocking=True))
        logits.append(out.float().cpu())
        targets.append(torch.as_tensor(labels))
    if not logits:
        return torch.empty(0, 0), np.empty(0, dtype=np.int64)
    return torch.cat(logits), torch.cat(targets).numpy()


def evaluate(model: Callable[[torch.Tensor], torch.Tensor], dataset: Dataset, *, batch_size: int = 32,
             device: str | torch.device = "auto", workers: int = 2, progress: bool = False,
             class_mapping=None) -> EvalResult:
    """Accuracy, mean class accuracy, macro F1 and the confusion matrix of ``model`` on ``dataset``.

    ``model``: an ``nn.Module`` (moved to ``device``) or a backend of ``poster.inference.runtime``
    (``open_backend(...).backend``), which places its inputs itself.

    ``class_mapping`` (``poster.data.classmap.map_classes``): the dataset's labels are translated
    to the model's classes and the report is over the model's classes (a class the dataset lacks
    has support 0); without it, label ``i`` is taken to be the model's class ``i``."""
    device = resolve_device(device)
    if isinstance(model, nn.Module):
        model = model.to(device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda", persistent_workers=False)
    start = time.perf_counter()
    logits, targets = predict_logits(model, loader, device, progress=progress)
    seconds = time.perf_counter() - start
    names = dataset.class_names
    if class_mapping is not None:
        targets, names = class_mapping.map_targets(targets), class_mapping.model_classes
    report = classification_report(logits.argmax(dim=1).numpy(), targets, len(names), names)
    return EvalResult(logits=logits, targets=targets, report=report, seconds=seconds)
