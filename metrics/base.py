"""Shared pieces of the evaluation metrics: image conventions, per-image means, frozen networks.

Conventions (every metric in this package):

* images are float tensors ``[N, 3, H, W]`` in ``[-1, 1]`` (the generator's and the datamodule's range);
  metrics that need ``[0, 1]`` map them with :func:`to_unit_range`, which also clips: a rendered
  value outside ``[-1, 1]`` would be clipped when saved as an 8-bit image, and the paper's numbers
  come from such images;
* a per-image score is computed for every image and the metric is the mean over images (so a batch
  of 3 and a batch of 1 weigh 3:1, and the result does not depend on how images are split into
  batches or ranks);
* states are ``add_state(..., dist_reduce_fx="sum")`` sums and counts in float64/int64, never
  persistent (``add_state``'s default): nothing of a metric ends up in a LightningModule checkpoint;
* ``compute()`` syncs states across ranks, so it must be called on EVERY rank (never inside a
  ``rank_zero_only`` hook: the all-gather would wait forever for the other ranks).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torchmetrics import Metric


class EmptyMetricError(RuntimeError):
    """``compute()`` was called on a metric that has seen no (valid) image on any rank."""


def check_image_pair(prediction: torch.Tensor, target: torch.Tensor) -> None:
    """Both ``[N, 3, H, W]`` float tensors of the same shape."""
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {list(prediction.shape)} and target {list(target.shape)} differ in shape")
    check_images(prediction)


def check_images(images: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected RGB images [N, 3, H, W], got {list(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"expected float images in [-1, 1], got dtype {images.dtype}")


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """``[-1, 1]`` -> ``[0, 1]``, clipped."""
    return ((images + 1.0) / 2.0).clamp(0.0, 1.0)


def clip_signed(images: torch.Tensor) -> torch.Tensor:
    """Clip to ``[-1, 1]`` (what saving as an 8-bit image does)."""
    return images.clamp(-1.0, 1.0)


class FrozenNetworksMetric(Metric):
    """A metric that owns pretrained networks which are never trained nor saved.

    The networks are kept in a tuple, so ``nn.Module`` does not register them as children: they are
    absent from ``state_dict()`` (a checkpoint of a LightningModule holding this metric stays small and
    loads without them), from ``parameters()`` (no optimiser or DDP bucket sees them), and ``.train()``
    cannot switch them out of eval mode. ``.to(device)`` still moves them (``_apply`` is forwarded).
    """

    def _freeze(self, *networks: nn.Module) -> None:
        for network in networks:
            network.requires_grad_(False)
            network.eval()
        self._frozen_networks: tuple[nn.Module, ...] = tuple(networks)

    @property
    def frozen_networks(self) -> tuple[nn.Module, ...]:
        return getattr(self, "_frozen_networks", ())

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], exclude_state: Sequence[str] = "") -> nn.Module:
        this = super()._apply(fn, exclude_state)
        for network in self.frozen_networks:
            network._apply(fn)
        return this

    def train(self, mode: bool = True) -> FrozenNetworksMetric:
        super().train(mode)
        for network in self.frozen_networks:
            network.eval()
        return self


class MeanOverImages(Metric):
    """Mean over images of a per-image score; subclasses define :meth:`per_image`."""

    is_differentiable = False
    full_state_update = False

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.add_state("score_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("image_count", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    @abstractmethod
    def per_image(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The score of each pair, ``[N]`` (images in ``[-1, 1]``)."""

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        scores = self.per_image(prediction, target).detach()
        self.score_sum += scores.double().sum()
        self.image_count += scores.numel()

    def compute(self) -> torch.Tensor:
        if int(self.image_count) == 0:
            raise EmptyMetricError(f"{type(self).__name__}: no image was evaluated on any rank")
        return (self.score_sum / self.image_count).float()
