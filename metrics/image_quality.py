"""Pixel metrics of GOAE Tables 1-3: MSE, PSNR and SSIM, as means over images.

Each image pair gets its own score and the metric averages the scores (PSNR and SSIM are reported
per image and averaged in the inversion literature; for MSE the mean of per-image MSEs equals the
MSE over all pixels when the images have one size).

Scale: images arrive in ``[-1, 1]`` and are mapped to ``[0, 1]`` (clipped), so PSNR uses
``data_range = 1`` and SSIM the standard constants ``(0.01 * 1)^2, (0.03 * 1)^2`` with an 11x11
gaussian window, sigma 1.5 (Wang et al. 2004; torchmetrics' defaults). PSNR and SSIM do not depend on
the scale as long as data_range follows it. MSE does: on ``[-1, 1]`` it is 4x the ``[0, 1]`` value.
GOAE's tables look like ``[-1, 1]`` MSEs (Table 2 pairs PSNR 20.87 with MSE 0.0424: on ``[0, 1]`` that
MSE would give a PSNR of at most 13.7 dB, on ``[-1, 1]`` at most 19.7 dB, below the mean of per-image
PSNRs as Jensen's inequality requires), so :class:`MeanSquaredError` offers both scales.
"""

from __future__ import annotations

from enum import Enum

import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from metrics.base import MeanOverImages, check_image_pair, clip_signed, to_unit_range

SSIM_KERNEL_SIZE = 11
SSIM_SIGMA = 1.5


class PixelScale(str, Enum):
    """Value range that MSE is reported in."""

    UNIT = "unit"  # [0, 1]: our default, like PSNR/SSIM
    SIGNED = "signed"  # [-1, 1]: pSp's F.mse_loss on network outputs; compare with GOAE's tables


def mse_per_image(prediction: torch.Tensor, target: torch.Tensor, scale: PixelScale = PixelScale.UNIT) -> torch.Tensor:
    """Mean squared error of each pair ``[N]`` (images in ``[-1, 1]``, clipped, then on ``scale``)."""
    check_image_pair(prediction, target)
    if PixelScale(scale) is PixelScale.UNIT:
        difference = to_unit_range(prediction) - to_unit_range(target)
    else:
        difference = clip_signed(prediction) - clip_signed(target)
    return difference.double().square().flatten(1).mean(dim=1)


def psnr_per_image(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of each pair ``[N]`` on ``[0, 1]``: ``10 log10(1 / MSE)``; identical images give +inf."""
    return 10.0 * torch.log10(1.0 / mse_per_image(prediction, target, PixelScale.UNIT))


def ssim_per_image(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SSIM of each pair ``[N]`` on ``[0, 1]``: gaussian 11x11 window, sigma 1.5, K1 0.01, K2 0.03.

    The mean is over the "valid" window positions only, the pixels at least 5 from the border (as
    scikit-image's ``structural_similarity`` and Wang et al.'s reference code): torchmetrics 1.9 averages
    the full map, whose border comes from reflect-padded input, so we take its map and crop it.
    """
    check_image_pair(prediction, target)
    _, ssim_map = structural_similarity_index_measure(
        to_unit_range(prediction).double(),
        to_unit_range(target).double(),
        gaussian_kernel=True,
        sigma=SSIM_SIGMA,
        kernel_size=SSIM_KERNEL_SIZE,
        reduction="none",
        data_range=1.0,
        return_full_image=True,
    )
    border = SSIM_KERNEL_SIZE // 2
    if min(ssim_map.shape[-2:]) <= 2 * border:
        raise ValueError(f"SSIM needs images larger than {2 * border}x{2 * border}, got {list(prediction.shape[-2:])}")
    return ssim_map[..., border:-border, border:-border].flatten(1).mean(dim=1)


class MeanSquaredError(MeanOverImages):
    """Mean over images of the per-image MSE (lower is better)."""

    higher_is_better = False

    def __init__(self, scale: PixelScale | str = PixelScale.UNIT, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.scale = PixelScale(scale)

    def per_image(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return mse_per_image(prediction, target, self.scale)


class PeakSignalNoiseRatio(MeanOverImages):
    """Mean over images of the per-image PSNR in dB (higher is better).

    A pixel-identical pair has infinite PSNR and makes the mean infinite; that is reported as is rather
    than hidden by a cap.
    """

    higher_is_better = True

    def per_image(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return psnr_per_image(prediction, target)


class StructuralSimilarity(MeanOverImages):
    """Mean over images of the per-image SSIM (higher is better)."""

    higher_is_better = True

    def per_image(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ssim_per_image(prediction, target)
