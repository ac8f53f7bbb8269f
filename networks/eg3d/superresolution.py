"""EG3D's ``SuperresolutionHybrid8XDC``: neural feature image (128²) -> final image (512²) in two blocks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from networks.eg3d.layers import SynthesisBlock


class SuperresolutionHybrid8XDC(nn.Module):
    """Two StyleGAN2 skip blocks (x2 each) driven by the last w only.

    The feature image is first resized to ``img_resolution / 4`` (bilinear, antialiased) when the
    neural rendering resolution differs. Both blocks clamp activations at ±256 when the official
    code would run them in fp16 (``sr_num_fp16_res > 0``), independent of the precision we use.
    ``block_channels`` is ours: the released models use (256, 128); the tiny test config shrinks it.
    Noise is never used (the official ``superresolution_noise_mode`` is 'none').
    """

    def __init__(
        self,
        channels: int,
        img_resolution: int,
        sr_num_fp16_res: int,
        sr_antialias: bool,
        w_dim: int = 512,
        block_channels: tuple[int, int] | list[int] = (256, 128),
        fused_modconv_default: bool | str = True,
        **_unused,
    ) -> None:
        super().__init__()
        if img_resolution % 4:
            raise ValueError(f"img_resolution must be divisible by 4, got {img_resolution}")
        conv_clamp = 256 if sr_num_fp16_res > 0 else None
        self.input_resolution = img_resolution // 4
        self.sr_antialias = sr_antialias
        c0, c1 = block_channels
        self.block0 = SynthesisBlock(
            channels, c0, w_dim=w_dim, resolution=img_resolution // 2, img_channels=3, is_last=False,
            conv_clamp=conv_clamp, fused_modconv_default=fused_modconv_default,
        )
        self.block1 = SynthesisBlock(
            c0, c1, w_dim=w_dim, resolution=img_resolution, img_channels=3, is_last=True,
            conv_clamp=conv_clamp, fused_modconv_default=fused_modconv_default,
        )

    def forward(self, rgb: torch.Tensor, features: torch.Tensor, ws: torch.Tensor) -> torch.Tensor:
        ws = ws[:, -1:, :].expand(-1, 3, -1)
        if features.shape[-1] != self.input_resolution:
            size = (self.input_resolution, self.input_resolution)
            features = F.interpolate(features, size=size, mode="bilinear", align_corners=False, antialias=self.sr_antialias)
            rgb = F.interpolate(rgb, size=size, mode="bilinear", align_corners=False, antialias=self.sr_antialias)
        x, rgb = self.block0(features, rgb, ws, noise_mode="none")
        x, rgb = self.block1(x, rgb, ws, noise_mode="none")
        return rgb
