"""Small layers and helpers shared by POSTER V1 and V2."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


def init_weights(module: nn.Module) -> None:
    """The reference's initialisation of transformer parts: truncated-normal Linear weights, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def freeze_landmark_net(net: nn.Module) -> None:
    """Freeze the landmark backbone: no gradients, eval mode (its BN keeps its running statistics)."""
    net.requires_grad_(False)
    net.eval()


def check_rate(name: str, value: float) -> float:
    """A stochastic-depth rate is a probability below 1 (1 would drop every branch always)."""
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{name} must be in [0, 1), got {value}")
    return float(value)


def resize_to_112(x: torch.Tensor) -> torch.Tensor:
    """The reference's ``F.interpolate(x, size=112)`` (nearest) that both backbones apply.

    For the usual 224 input this is exactly ``x[:, :, ::2, ::2]`` (source index 2*i), which
    is cheaper than the interpolation kernel; other sizes use the kernel itself.
    """
    h, w = x.shape[-2:]
    if h == 224 and w == 224:
        return x[:, :, ::2, ::2]
    if h == 112 and w == 112:
        return x
    return F.interpolate(x, size=112)


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample, in training only."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    """Linear -> exact GELU -> Linear (keys ``fc1``, ``fc2``)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SEBlock(nn.Module):
    """Squeeze-excitation on a vector: ``v * sigmoid(W2 relu(W1 v + b1) + b2)``."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear1 = nn.Linear(dim, dim)
        self.relu = nn.ReLU(inplace=True)
        self.linear2 = nn.Linear(dim, dim)
        self.sigmoid = nn.Sigmoid()

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return v * self.sigmoid(self.linear2(self.relu(self.linear1(v))))


class ClassifierHead(nn.Module):
    """The classifier, wrapped so its key is ``head.linear`` like the reference."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.linear = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)
