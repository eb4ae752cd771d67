"""Training losses of the POSTER recipes (docs/faithfulness.md#training).

* V1: ``CE + 2 * LSCE(eps=0.2)`` where ``LSCE = (1 - eps) * NLL(target) + eps * mean_c(-log p_c)``,
  i.e. ``(1 + 2(1-eps)) * NLL + 2 eps * mean_c(-log p_c) = 2.6 * NLL + 0.4 * mean_c(-log p_c)``.
  ``LSCE`` is exactly torch's ``cross_entropy(..., label_smoothing=eps)`` (the smoothed target puts
  ``1 - eps + eps/C`` on the true class and ``eps/C`` elsewhere); ``tests/test_losses.py`` checks it.
* V2: plain cross entropy.

All losses take raw logits ``[B, C]`` and integer targets ``[B]`` and average over the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LabelSmoothingCrossEntropy", "CEPlusLSCE", "build_loss", "LOSS_NAMES"]


class LabelSmoothingCrossEntropy(nn.Module):
    """``(1 - eps) * NLL(target) + eps * mean_c(-log softmax(x)_c)``, averaged over the batch."""

    def __init__(self, eps: float = 0.2) -> None:
        super().__init__()
        if not 0.0 <= eps <= 1.0:
            raise ValueError(f"label smoothing eps must be in [0, 1], got {eps}")
        self.eps = float(eps)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits, dim=-1)
        nll = -logp.gather(-1, target.long().unsqueeze(-1)).squeeze(-1)
        smooth = -logp.mean(dim=-1)
        return ((1.0 - self.eps) * nll + self.eps * smooth).mean()

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


class CEPlusLSCE(nn.Module):
    """POSTER V1 loss: ``CE + lsce_weight * LSCE(eps)`` with the defaults ``lsce_weight=2, eps=0.2``.

    Computed from one log-softmax: ``(1 + w(1-eps)) * NLL + w * eps * mean_c(-log p_c)``.
    """

    def __init__(self, lsce_weight: float = 2.0, eps: float = 0.2) -> None:
        super().__init__()
        self.lsce_weight = float(lsce_weight)
        self.eps = float(eps)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits, dim=-1)
        nll = -logp.gather(-1, target.long().unsqueeze(-1)).squeeze(-1)
        smooth = -logp.mean(dim=-1)
        w, e = self.lsce_weight, self.eps
        return ((1.0 + w * (1.0 - e)) * nll + (w * e) * smooth).mean()

    def extra_repr(self) -> str:
        return f"lsce_weight={self.lsce_weight}, eps={self.eps}"


LOSS_NAMES = ("ce", "ce+2lsce")


def build_loss(name: str) -> nn.Module:
    """``'ce'`` (V2) or ``'ce+2lsce'`` (V1)."""
    key = name.strip().lower()
    if key == "ce":
        return nn.CrossEntropyLoss()
    if key == "ce+2lsce":
        return CEPlusLSCE(lsce_weight=2.0, eps=0.2)
    raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSS_NAMES)}")
