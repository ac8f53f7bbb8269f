"""Geometry error (Geo. Err., lower is better): normalised depth against a reference ("pseudo-GT") depth.

GOAE Sec. 5.2 (following EG3D and Shi et al.): a reference depth of the source image, the depth of the
inversion, both "normalised to zero mean and unit variance", then the "average L2 distance".

Our definition, per image i, over the pixels P_i of its face/foreground mask:

    d_hat = (d - mean_P(d)) / std_P(d)          (population std; the same for the reference r)
    error_i = mean_{p in P_i} (d_hat_p - r_hat_p)^2

i.e. the mean squared difference per pixel (EG3D's "MSE against pseudo-GT depth"); the metric is the
mean of error_i over images. Under this normalisation error_i = 2 (1 - corr(d, r)) over the mask, so
it lies in [0, 4] and ignores the depth's scale and offset (camera radius, reference units).
The mask is where the reference is meaningful (a 3D face reconstruction only covers the face); without
a mask every pixel counts. If the prediction's resolution differs from the reference's (EG3D depth is
rendered at 128x128), the prediction is resized bilinearly to the reference's size.

An image whose mask has fewer than 2 pixels, or whose depth is constant or not finite inside the mask,
cannot be normalised: it is counted in ``failures``, not averaged.

Reference depth comes from a :class:`ReferenceDepthProvider`: the dataset (a depth map in the batch),
the generator (synthetic data with known w+: :class:`GeneratorReferenceDepth`), or a 3D face
reconstruction model (Deep3DFaceRecon in the paper), which is not available offline
(:class:`FaceReconstructionReferenceDepth` raises a clear error).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from torchmetrics import Metric

from metrics.base import EmptyMetricError

MIN_STD = 1e-8


def _as_maps(depth: torch.Tensor, name: str) -> torch.Tensor:
    """[N, H, W] or [N, 1, H, W] -> [N, 1, H, W] float."""
    if depth.ndim == 3:
        depth = depth.unsqueeze(1)
    if depth.ndim != 4 or depth.shape[1] != 1:
        raise ValueError(f"{name} must be [N, H, W] or [N, 1, H, W], got {list(depth.shape)}")
    return depth.float()


@dataclass(frozen=True)
class GeometryPerImage:
    error: torch.Tensor  # [N] mean squared difference of the normalised depths; NaN where invalid
    valid: torch.Tensor  # [N] bool


def normalised_depth_error(
    predicted_depth: torch.Tensor, reference_depth: torch.Tensor, mask: torch.Tensor | None = None
) -> GeometryPerImage:
    """Per-image geometry error (see the module docstring) of depths ``[N, (1,) H, W]``; mask bool, same H, W
    as the reference (True = face/foreground)."""
    reference = _as_maps(reference_depth, "reference_depth")
    predicted = _as_maps(predicted_depth, "predicted_depth")
    if predicted.shape[0] != reference.shape[0]:
        raise ValueError(f"{predicted.shape[0]} predicted and {reference.shape[0]} reference depths")
    if predicted.shape[-2:] != reference.shape[-2:]:
        predicted = F.interpolate(predicted, size=reference.shape[-2:], mode="bilinear", align_corners=False)
    region = torch.ones_like(reference, dtype=torch.bool) if mask is None else _as_maps(mask, "mask").bool()
    if region.shape != reference.shape:
        raise ValueError(f"mask {list(region.shape)} must match the reference depth {list(reference.shape)}")
    region = region & torch.isfinite(reference) & torch.isfinite(predicted)
    weights = region.double().flatten(1)
    count = weights.sum(dim=1)

    def normalise(depth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        values = torch.nan_to_num(depth.double().flatten(1)) * weights
        mean = values.sum(dim=1) / count.clamp(min=1)
        centred = (values - mean[:, None]) * weights
        std = (centred.square().sum(dim=1) / count.clamp(min=1)).sqrt()
        return centred / std.clamp(min=MIN_STD)[:, None], std

    predicted_normalised, predicted_std = normalise(predicted)
    reference_normalised, reference_std = normalise(reference)
    error = ((predicted_normalised - reference_normalised).square() * weights).sum(dim=1) / count.clamp(min=1)
    valid = (count >= 2) & (predicted_std > MIN_STD) & (reference_std > MIN_STD)
    return GeometryPerImage(error=torch.where(valid, error, torch.full_like(error, float("nan"))), valid=valid)


class GeometryError(Metric):
    """Mean over valid images of :func:`normalised_depth_error`; invalid images counted in ``failures``."""

    higher_is_better = False
    is_differentiable = False
    full_state_update = False

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.add_state("error_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("evaluated", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("failures", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def per_image(
        self, predicted_depth: torch.Tensor, reference_depth: torch.Tensor, mask: torch.Tensor | None = None
    ) -> GeometryPerImage:
        return normalised_depth_error(predicted_depth, reference_depth, mask)

    def update(
        self, predicted_depth: torch.Tensor, reference_depth: torch.Tensor, mask: torch.Tensor | None = None
    ) -> None:
        scores = self.per_image(predicted_depth.detach(), reference_depth.detach(), mask)
        self.error_sum += scores.error[scores.valid].sum()
        self.evaluated += int(scores.valid.sum())
        self.failures += int((~scores.valid).sum())

    def compute(self) -> torch.Tensor:
        if int(self.evaluated) == 0:
            raise EmptyMetricError(f"GeometryError: no valid depth pair ({int(self.failures)} failed)")
        return (self.error_sum / self.evaluated).float()

    def report(self) -> GeometryReport:
        """Mean and counts over all ranks (collective: call on every rank)."""
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=self._to_sync):
            evaluated = int(self.evaluated)
            return GeometryReport(
                mean_error=float(self.error_sum / evaluated) if evaluated else float("nan"),
                evaluated=evaluated, failures=int(self.failures),
            )


@dataclass(frozen=True)
class GeometryReport:
    mean_error: float  # NaN when no image was valid
    evaluated: int
    failures: int

    def scalars(self, prefix: str = "geometry") -> dict[str, float]:
        return {prefix: self.mean_error, f"{prefix}/evaluated": float(self.evaluated),
                f"{prefix}/failures": float(self.failures)}


# ---------------------------------------------------------------------------------------------
# Where the reference depth comes from


@dataclass(frozen=True)
class ReferenceDepth:
    depth: torch.Tensor  # [N, 1, H, W]
    mask: torch.Tensor | None  # [N, 1, H, W] bool (face/foreground), or None for every pixel


class ReferenceDepthProvider(Protocol):
    def reference_depth(self, batch: object) -> ReferenceDepth:
        """The reference depth (and region) of the batch's source images."""
        ...


class DatasetReferenceDepth:
    """A depth map (and optionally a mask) stored in the batch, e.g. ``SyntheticBatch.depth_true``."""

    def __init__(self, depth_field: str = "depth_true", mask_field: str | None = None) -> None:
        self.depth_field = depth_field
        self.mask_field = mask_field

    def reference_depth(self, batch: object) -> ReferenceDepth:
        if not hasattr(batch, self.depth_field):
            raise AttributeError(f"{type(batch).__name__} has no reference depth field {self.depth_field!r}")
        mask = getattr(batch, self.mask_field) if self.mask_field else None
        return ReferenceDepth(depth=_as_maps(getattr(batch, self.depth_field), self.depth_field),
                              mask=None if mask is None else _as_maps(mask, self.mask_field or "mask").bool())


class GeneratorReferenceDepth:
    """Synthetic data: render the true w+ (``ws_field``) at the batch camera (``camera_field``) with the
    frozen generator and take its depth (``image_depth``, at the neural rendering resolution).

    :param foreground_threshold: if given, the mask keeps pixels whose rendered depth is below it
        (the face in front of the far background); otherwise every pixel counts.
    """

    def __init__(self, generator: nn.Module, ws_field: str = "ws_true", camera_field: str = "camera",
                 foreground_threshold: float | None = None) -> None:
        self._generator = (generator,)  # not registered: it is the model's generator, not ours to save
        self.ws_field = ws_field
        self.camera_field = camera_field
        self.foreground_threshold = foreground_threshold

    @torch.no_grad()
    def reference_depth(self, batch: object) -> ReferenceDepth:
        generator = self._generator[0]
        output = generator.synthesis(getattr(batch, self.ws_field), getattr(batch, self.camera_field),
                                     noise_mode="const")
        depth = _as_maps(output.image_depth, "image_depth")
        mask = None if self.foreground_threshold is None else depth < self.foreground_threshold
        return ReferenceDepth(depth=depth, mask=mask)


class FaceReconstructionUnavailableError(RuntimeError):
    """No 3D face reconstruction model (Deep3DFaceRecon) is available for pseudo-GT depth."""


class FaceReconstructionReferenceDepth:
    """Pseudo-GT depth from a 3D face reconstruction model (GOAE/EG3D use Deep3DFaceRecon).

    Not implemented: no such model ships in any package, so nothing offline can produce it. The class
    exists so that a config asking for it fails at construction with what is missing.
    """

    def __init__(self, model_path: str | Path | None = None) -> None:
        where = f" (configured: {model_path})" if model_path else ""
        raise FaceReconstructionUnavailableError(
            "pseudo-GT depth from a 3D face reconstruction model is not available" + where + ": GOAE and EG3D use "
            "Deep3DFaceRecon_pytorch (BFM 3DMM, https://github.com/sicxu/Deep3DFaceRecon_pytorch), which needs "
            "the BFM model files and its checkpoint and is not part of this project. Use the dataset's depth "
            "(DatasetReferenceDepth) or, for synthetic data, the generator's (GeneratorReferenceDepth)."
        )

    def reference_depth(self, batch: object) -> ReferenceDepth:  # pragma: no cover - never constructed
        raise FaceReconstructionUnavailableError("unreachable")
