"""MobileFaceNet 68-point landmark network, used frozen as POSTER's landmark stream
(docs/faithfulness.md#landmark-network)."""

from __future__ import annotations

import torch
from torch import nn


class ConvBlock(nn.Module):
    """conv (no bias) + BN + PReLU."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, padding: int = 0, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.prelu = nn.PReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prelu(self.bn(self.conv(x)))


class LinearBlock(nn.Module):
    """conv (no bias) + BN, no activation."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, padding: int = 0, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class DepthWise(nn.Module):
    """Inverted bottleneck: 1x1 expand -> 3x3 depthwise -> 1x1 project (+ input if residual)."""

    def __init__(self, cin: int, cout: int, expansion: int, stride: int, residual: bool = False):
        super().__init__()
        self.residual = residual
        self.conv = ConvBlock(cin, expansion, 1)
        self.conv_dw = ConvBlock(expansion, expansion, 3, stride, 1, groups=expansion)
        self.project = LinearBlock(expansion, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.conv_dw(self.conv(x)))
        return x + y if self.residual else y


class ResidualStack(nn.Module):
    """``count`` residual DepthWise units (keys ``model.N``)."""

    def __init__(self, channels: int, count: int, expansion: int):
        super().__init__()
        self.model = nn.Sequential(
            *(DepthWise(channels, channels, expansion, 1, residual=True) for _ in range(count))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class GDCHead(nn.Module):
    """Global depthwise conv head producing the 136 landmark coordinates (unused by POSTER)."""

    def __init__(self, channels: int = 512, outputs: int = 136):
        super().__init__()
        self.conv_6_dw = LinearBlock(channels, channels, 7, 1, 0, groups=channels)
        self.conv_6_flatten = nn.Flatten()
        self.linear = nn.Linear(channels, outputs, bias=False)
        self.bn = nn.BatchNorm1d(outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.linear(self.conv_6_flatten(self.conv_6_dw(x))))


class MobileFaceNet(nn.Module):
    """MobileFaceNet([112,112], 136).

    ``forward(x112)`` returns the three feature maps POSTER uses:
    ``conv_3`` [B,64,28,28], ``conv_4`` [B,128,14,14] and ``conv_6_sep`` [B,512,7,7].
    ``landmarks(x112)`` runs the GDC head (136 values), which POSTER discards.
    """

    def __init__(self, num_landmark_values: int = 136):
        super().__init__()
        self.conv1 = ConvBlock(3, 64, 3, 2, 1)
        self.conv2_dw = ConvBlock(64, 64, 3, 1, 1, groups=64)
        self.conv_23 = DepthWise(64, 64, 128, 2)
        self.conv_3 = ResidualStack(64, 4, 128)
        self.conv_34 = DepthWise(64, 128, 256, 2)
        self.conv_4 = ResidualStack(128, 6, 256)
        self.conv_45 = DepthWise(128, 128, 512, 2)
        self.conv_5 = ResidualStack(128, 2, 256)
        self.conv_6_sep = ConvBlock(128, 512, 1)
        self.output_layer = GDCHead(512, num_landmark_values)

    def forward(self, x112: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.conv2_dw(self.conv1(x112))
        out3 = self.conv_3(self.conv_23(x))
        out4 = self.conv_4(self.conv_34(out3))
        features = self.conv_6_sep(self.conv_5(self.conv_45(out4)))
        return out3, out4, features

    def landmarks(self, x112: torch.Tensor) -> torch.Tensor:
        return self.output_layer(self.forward(x112)[2])
