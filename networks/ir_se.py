"""The improved-residual unit with squeeze-excitation (ArcFace IR-SE), shared by the IR-SE50 identity
network and GOAE's AFA residual encoder. Module names follow pSp's released files (``res_layer``,
``shortcut_layer``, SE ``fc1``/``fc2``), so ``model_ir_se50.pth`` and ``afa_FFHQ.pt`` map onto them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SE_REDUCTION = 16


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
