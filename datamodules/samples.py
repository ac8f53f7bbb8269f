"""Typed samples and batches (no positional tuples), and the collate functions between them.

Batches are plain (non-frozen) dataclasses of tensors and strings: Lightning's
``move_data_to_device`` walks dataclass fields, so ``trainer`` moves them to the device as-is.
Images are float32 in [-1, 1], channels first; cameras are 25-float EG3D labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class ImageSample:
    """One posed image. ``image`` is at the encoder's input resolution, ``image_full`` at full
    resolution; the mirrored pair is the x-flipped image and ``cameras.mirror_label`` of the camera."""

    image: torch.Tensor  # [3, h, h]
    image_full: torch.Tensor  # [3, H, H]
    camera: torch.Tensor  # [25]
    image_mirrored: torch.Tensor  # [3, h, h]
    image_full_mirrored: torch.Tensor  # [3, H, H]
    camera_mirrored: torch.Tensor  # [25]
    identifier: str  # relative path inside the dataset (or "synthetic/<split>/<index>")


@dataclass
class SyntheticSample(ImageSample):
    """A generator sample with its exact ground truth."""

    ws_true: torch.Tensor  # [num_ws, w_dim], the w+ that rendered the image
    depth_true: torch.Tensor  # [1, R, R], the renderer's depth at the neural rendering resolution


@dataclass
class MultiViewSample:
    """One person and frame seen from several cameras: an input view and the target views."""

    input: ImageSample
    input_view: str
    target_image: torch.Tensor  # [V, 3, h, h]
    target_image_full: torch.Tensor  # [V, 3, H, H]
    target_camera: torch.Tensor  # [V, 25]
    target_views: list[str]
    identifier: str  # "<person>/<frame>"


@dataclass
class ImageBatch:
    """A collated batch of ImageSample: every tensor gains a leading batch dimension."""

    image: torch.Tensor  # [B, 3, h, h]
    image_full: torch.Tensor  # [B, 3, H, H]
    camera: torch.Tensor  # [B, 25]
    image_mirrored: torch.Tensor
    image_full_mirrored: torch.Tensor
    camera_mirrored: torch.Tensor
    identifiers: list[str]

    def __len__(self) -> int:
        return self.image.shape[0]


@dataclass
class SyntheticBatch(ImageBatch):
    ws_true: torch.Tensor  # [B, num_ws, w_dim]
    depth_true: torch.Tensor  # [B, 1, R, R]


@dataclass
class MultiViewBatch:
    input: ImageBatch
    input_views: list[str]
    target_image: torch.Tensor  # [B, V, 3, h, h]
    target_image_full: torch.Tensor  # [B, V, 3, H, H]
    target_camera: torch.Tensor  # [B, V, 25]
    target_views: list[list[str]]
    identifiers: list[str]

    def __len__(self) -> int:
        return self.target_image.shape[0]


def _stack(samples: Sequence[object], field: str) -> torch.Tensor:
    return torch.stack([getattr(sample, field) for sample in samples])


def _image_fields(samples: Sequence[ImageSample]) -> dict[str, object]:
    return {
        "image": _stack(samples, "image"),
        "image_full": _stack(samples, "image_full"),
        "camera": _stack(samples, "camera"),
        "image_mirrored": _stack(samples, "image_mirrored"),
        "image_full_mirrored": _stack(samples, "image_full_mirrored"),
        "camera_mirrored": _stack(samples, "camera_mirrored"),
        "identifiers": [sample.identifier for sample in samples],
    }


def collate_image_samples(samples: Sequence[ImageSample]) -> ImageBatch:
    return ImageBatch(**_image_fields(samples))


def collate_synthetic_samples(samples: Sequence[SyntheticSample]) -> SyntheticBatch:
    return SyntheticBatch(
        **_image_fields(samples), ws_true=_stack(samples, "ws_true"), depth_true=_stack(samples, "depth_true")
    )


def collate_multiview_samples(samples: Sequence[MultiViewSample]) -> MultiViewBatch:
    return MultiViewBatch(
        input=collate_image_samples([sample.input for sample in samples]),
        input_views=[sample.input_view for sample in samples],
        target_image=_stack(samples, "target_image"),
        target_image_full=_stack(samples, "target_image_full"),
        target_camera=_stack(samples, "target_camera"),
        target_views=[list(sample.target_views) for sample in samples],
        identifiers=[sample.identifier for sample in samples],
    )


def collate_samples(samples: Sequence[ImageSample | MultiViewSample]) -> ImageBatch | MultiViewBatch:
    """Collate a list of samples of one type into the matching batch type."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    kinds = {type(sample) for sample in samples}
    if len(kinds) != 1:
        raise TypeError(f"cannot collate a mix of sample types {sorted(kind.__name__ for kind in kinds)}")
    kind = kinds.pop()
    if issubclass(kind, SyntheticSample):
        return collate_synthetic_samples(samples)  # type: ignore[arg-type]
    if issubclass(kind, ImageSample):
        return collate_image_samples(samples)  # type: ignore[arg-type]
    if issubclass(kind, MultiViewSample):
        return collate_multiview_samples(samples)  # type: ignore[arg-type]
    raise TypeError(f"no collate function for samples of type {kind.__name__}")
