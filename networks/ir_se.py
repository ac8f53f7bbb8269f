"""The improved-residual unit with squeeze-excitation (ArcFace IR-SE) and the IR-SE50 trunk built from
it, shared by the IR-SE50 identity network, GOAE's AFA residual encoder and every pSp-family encoder
(pSp, e4e, TriPlaneNet's branches). Module names follow pSp's released files (``input_layer``, ``body``,
``res_layer``, ``shortcut_layer``, SE ``fc1``/``fc2``), so ``model_ir_se50.pth`` and ``afa_FFHQ.pt`` map
onto them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SE_REDUCTION = 16

# (input channels, output channels, number of units) of the four IR-50 stages; the first unit of each
# stage has stride 2 (TreB1eN's get_blocks(50)). 24 units in all: body.0 .. body.23.
IR50_STAGES: tuple[tuple[int, int, int], ...] = ((64, 64, 3), (64, 128, 4), (128, 256, 14), (256, 512, 3))


class SqueezeExcitation(nn.Module):
    """Channel gating x * sigmoid(fc2(relu(fc1(avgpool(x))))) with bias-free 1x1 convs ``fc1``, ``fc2``."""

    def __init__(self, channels: int, reduction: int = SE_REDUCTION) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)  # tiny test widths would otherwise give a zero-width layer
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1, bias=False)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))


class StridedSubsample(nn.Module):
    """Identity shortcut of a (possibly strided) unit: keeps every ``stride``-th pixel (no parameters)."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :: self.stride, :: self.stride]


class BottleneckIRSE(nn.Module):
    """res_layer(x) + shortcut_layer(x).

    res_layer = BN -> conv3x3 -> PReLU -> conv3x3(stride) -> BN -> SE (indices 0..5, as in the released
    files); shortcut_layer = conv1x1(stride) -> BN when the width changes, otherwise a strided subsample.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, se_reduction: int = SE_REDUCTION) -> None:
        super().__init__()
        if in_channels == out_channels:
            self.shortcut_layer: nn.Module = StridedSubsample(stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False),
            nn.PReLU(out_channels),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            SqueezeExcitation(out_channels, se_reduction),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


def ir_se_input_layer(in_channels: int = 3, out_channels: int = 64) -> nn.Sequential:
    """The stem of every IR-SE network: conv3x3 (no bias) -> BN -> PReLU (keys ``0``, ``1``, ``2``)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.PReLU(out_channels),
    )


def ir_se_body(
    stages: tuple[tuple[int, int, int], ...] = IR50_STAGES, se_reduction: int = SE_REDUCTION
) -> nn.Sequential:
    """The IR-SE trunk: for each (in, out, units) stage one stride-2 unit then ``units - 1`` stride-1 units.

    With the default :data:`IR50_STAGES` this is the 24-unit body of IR-SE50 (``model_ir_se50.pth``'s
    ``body.*``); tests pass narrower stages. Each stage halves the side (IR-SE50: 256 -> 16).
    """
    units: list[nn.Module] = []
    for in_channels, out_channels, num_units in stages:
        units.append(BottleneckIRSE(in_channels, out_channels, stride=2, se_reduction=se_reduction))
        units.extend(
            BottleneckIRSE(out_channels, out_channels, stride=1, se_reduction=se_reduction)
            for _ in range(num_units - 1)
        )
    return nn.Sequential(*units)
