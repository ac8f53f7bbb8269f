"""Posed images in the EG3D dataset format (folder or zip + label file) as typed samples."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

import cameras
from datamodules.labeled_index import (
    DatasetError,
    IndexOptions,
    LabeledImage,
    LabeledImageIndex,
    build_index,
    check_image_size,
    decode_rgb_image,
)
from datamodules.sampling import EpochIndex, coin_flip, split_key
from datamodules.samples import ImageSample


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float32 [3, H, W] in [-1, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous() / 127.5 - 1.0


def image_sample_from_pil(
    image: Image.Image, camera: torch.Tensor, identifier: str, image_resolution: int, full_resolution: int
) -> ImageSample:
    """Build the encoder-resolution and full-resolution copies and their mirrored pair."""
    if image.size != (full_resolution, full_resolution):
        image = image.resize((full_resolution, full_resolution), Image.Resampling.LANCZOS)
    # WHY bicubic from the full image: GOAE's 256 copy is PIL resize of the 512 file.
    encoder_image = (
        image
        if image_resolution == full_resolution
        else image.resize((image_resolution, image_resolution), Image.Resampling.BICUBIC)
    )
    image_full = pil_to_tensor(image)
    image_small = pil_to_tensor(encoder_image)
    camera = camera.to(torch.float32)
    return ImageSample(
        image=image_small,
        image_full=image_full,
        camera=camera,
        image_mirrored=image_small.flip(-1),
        image_full_mirrored=image_full.flip(-1),
        camera_mirrored=cameras.mirror_label(camera[None])[0],
        identifier=identifier,
    )


def swap_mirrored(sample: ImageSample) -> ImageSample:
    """The x-flip augmentation: the mirrored pair becomes the sample and vice versa."""
    return ImageSample(
        image=sample.image_mirrored,
        image_full=sample.image_full_mirrored,
        camera=sample.camera_mirrored,
        image_mirrored=sample.image,
        image_full_mirrored=sample.image_full,
        camera_mirrored=sample.camera,
        identifier=sample.identifier,
    )


class ImagePoseDataset(Dataset[ImageSample]):
    """EG3D-format images with cameras. Keys are int indices or EpochIndex (from our samplers).

    With ``xflip`` each (epoch, index) is mirrored with probability 0.5, decided by
    (xflip_seed, epoch, index) alone, so it is reproducible in any worker process and on any rank.
    """

    def __init__(
        self,
        index: LabeledImageIndex,
        image_resolution: int = 256,
        full_resolution: int = 512,
        xflip: bool = False,
        xflip_seed: int = 0,
        entries: list[LabeledImage] | None = None,
    ) -> None:
        self.index = index
        self.entries = list(index.entries if entries is None else entries)
        self.image_resolution = image_resolution
        self.full_resolution = full_resolution
        self.xflip = xflip
        self.xflip_seed = xflip_seed
        self._size_options = IndexOptions(full_resolution=full_resolution, resize_other_sizes=True)

    @classmethod
    def from_path(
        cls,
        root: str,
        options: IndexOptions,
        image_resolution: int = 256,
        xflip: bool = False,
        xflip_seed: int = 0,
    ) -> ImagePoseDataset:
        return cls(
            build_index(root, options),
            image_resolution=image_resolution,
            full_resolution=options.full_resolution,
            xflip=xflip,
            xflip_seed=xflip_seed,
        )

    @property
    def identifiers(self) -> list[str]:
        return [entry.identifier for entry in self.entries]

    def __len__(self) -> int:
        return len(self.entries)

    def load(self, entry: LabeledImage) -> ImageSample:
        """Decode one entry (no augmentation). A file that fails here (e.g. truncated, which a header
        scan cannot see) raises DatasetError whatever on_bad_sample says; run check_dataset first."""
        image = decode_rgb_image(self.index.store, entry.identifier)
        # WHY re-check: the header scan may have been skipped for entries restricted by a split file.
        check_image_size(image.size, self.index.store.describe(entry.identifier), self._size_options)
        camera = torch.tensor(entry.camera, dtype=torch.float32)
        return image_sample_from_pil(
            image, camera, entry.identifier, self.image_resolution, self.full_resolution
        )

    def __getitem__(self, key: int | EpochIndex) -> ImageSample:
        index, epoch = split_key(key)
        if not 0 <= index < len(self.entries):
            raise IndexError(f"index {index} out of range for a dataset of {len(self.entries)} images")
        sample = self.load(self.entries[index])
        if self.xflip and coin_flip(self.xflip_seed, epoch, index):
            return swap_mirrored(sample)
        return sample


__all__ = ["DatasetError", "ImagePoseDataset", "image_sample_from_pil", "pil_to_tensor", "swap_mirrored"]
