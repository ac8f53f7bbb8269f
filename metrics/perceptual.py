"""LPIPS metric: mean over images of the lpips package's v0.1 AlexNet distance (lower is better).

The network is the one the LPIPS loss uses (:class:`losses.reconstruction.LPIPSLoss`): the lpips
package built with ``pnet_rand=True`` (no download), its linear heads from the wheel, and the ImageNet
AlexNet backbone loaded from the configured ``alexnet-owt-7be5be79.pth``. ``"random"`` keeps a random
backbone (tests only: the values then mean nothing). Images in ``[-1, 1]`` (lpips' own convention)
are clipped to that range first.
"""

from __future__ import annotations

from pathlib import Path

import torch

from losses.reconstruction import LPIPSLoss
from metrics.base import FrozenNetworksMetric, MeanOverImages, check_image_pair, clip_signed


class LearnedPerceptualSimilarity(FrozenNetworksMetric, MeanOverImages):
    """LPIPS (AlexNet, v0.1) averaged over images; the network is frozen and never in ``state_dict``."""

    higher_is_better = False

    def __init__(self, backbone_weights: str | Path, **kwargs: object) -> None:
        """:param backbone_weights: path to torchvision's ``alexnet-owt-7be5be79.pth``, or ``"random"``."""
        super().__init__(**kwargs)
        self._freeze(LPIPSLoss(backbone_weights))

    @property
    def lpips(self) -> LPIPSLoss:
        return self.frozen_networks[0]  # type: ignore[return-value]

    @torch.no_grad()
    def per_image(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_image_pair(prediction, target)
        return self.lpips.per_sample(clip_signed(prediction), clip_signed(target))
