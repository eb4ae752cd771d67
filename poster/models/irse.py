"""IR-50 trunk (ArcFace "improved residual" units), first three stages only (docs/faithfulness.md#ir-50-trunk).

POSTER V1 names the 21 units ``body.0-20`` and uses the stage-3 map; V2 names the
stages ``body1/body2/body3`` and uses all three stage outputs.  ``output_layer``
is never executed but exists in every official file, so it is kept for loading.
"""

from __future__ import annotations

import torch
from torch import nn

class BottleneckIR(nn.Module):
    """``res_layer(x) + shortcut_layer(x)``, no activation after the sum."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        if in_channels == out_channels:
            # A 1x1 max-pool with stride s: simply every s-th pixel.
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False),
            nn.PReLU(out_channels),
            nn.Conv2d(out_channels, out_channels, 3, stride, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


def _stage_units(in_channels: int, out_channels: int, count: int) -> list[nn.Module]:
    return [BottleneckIR(in_channels, out_channels, 2)] + [
        BottleneckIR(out_channels, out_channels, 1) for _ in range(count - 1)
    ]


class IR50Trunk(nn.Module):
    """Three IR-50 stages on a 112x112 input.

    The defaults are the official trunk; ``units``/``widths`` give smaller trunks of the same
    design (compact models), and ``keep_dead_layers=False`` omits the never-run ``output_layer``.

    ``split_stages=False`` (V1): one ``body`` sequence, ``forward`` returns the
    [B,256,14,14] stage-3 map.  ``split_stages=True`` (V2): ``body1/2/3``,
    ``forward`` returns the three stage outputs.
    """

    def __init__(self, split_stages: bool = False, units: tuple[int, int, int] = (3, 4, 14),
                 widths: tuple[int, int, int] = (64, 128, 256), keep_dead_layers: bool = True):
        super().__init__()
        self.split_stages = split_stages
        self.out_channels = widths[-1]
        stem = widths[0]
        self.input_layer = nn.Sequential(
            nn.Conv2d(3, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem), nn.PReLU(stem)
        )
        if keep_dead_layers:
            # Dead in POSTER (never run), kept so official files round-trip.
            self.output_layer = nn.Sequential(
                nn.BatchNorm2d(512),
                nn.Dropout(0.0),
                nn.Flatten(),
                nn.Linear(512 * 7 * 7, 512),
                nn.BatchNorm1d(512),
            )
        ins = (stem,) + tuple(widths[:-1])
        stages = [_stage_units(cin, cout, n) for cin, cout, n in zip(ins, widths, units)]
        if split_stages:
            self.body1 = nn.Sequential(*stages[0])
            self.body2 = nn.Sequential(*stages[1])
            self.body3 = nn.Sequential(*stages[2])
        else:
            self.body = nn.Sequential(*(unit for stage in stages for unit in stage))

    def forward(self, x112: torch.Tensor):
        x = self.input_layer(x112)
        if not self.split_stages:
            return self.body(x)
        s1 = self.body1(x)
        s2 = self.body2(s1)
        s3 = self.body3(s2)
        return s1, s2, s3
