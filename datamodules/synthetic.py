"""Synthetic posed images rendered by the frozen generator, with exact ground truth (w+, depth).

Per (seed, split, index) one torch.Generator draws, in this order: z, the rendering camera (from
the pose distribution), the renderer's stratified and importance uniforms. ws = G.mapping(z,
canonical camera); image and depth = G.synthesis(ws, camera, draws). So a sample depends only on
(seed, split, index): identical every time, in every worker and on every rank; ranks get disjoint
indices from the samplers. No x-flip: a mirrored image is not rendered by ws_true.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

import cameras
from cameras.sampling import FFHQ_LIKE_POSES, PoseDistribution
from datamodules.sampling import EpochIndex, split_key
from datamodules.samples import SyntheticSample

_SPLIT_CODES = {"train": 0, "val": 1, "test": 2, "predict": 3}


@dataclass(frozen=True)
class GeneratorSource:
    """How to build the frozen generator (networks.eg3d.configs.generator_from_config); cheap to
    pickle, so each worker process builds its own generator instead of receiving a big one."""

    name: str = "tiny"
    checkpoint: str | None = None
    random_init: bool = True
    seed: int = 0

    def build(self) -> torch.nn.Module:
        from networks.eg3d.configs import generator_from_config

        generator = generator_from_config(
            self.name, checkpoint=self.checkpoint, random_init=self.random_init, seed=self.seed
        )
        return generator.eval().requires_grad_(False)


@dataclass
class SyntheticDraw:
    """Everything random about one synthetic sample."""

    z: torch.Tensor  # [1, z_dim]
    camera: torch.Tensor  # [1, 25] rendering camera
    draws: object  # networks.eg3d.outputs.RendererDraws


def split_code(split: str) -> int:
    return _SPLIT_CODES.get(split, zlib.crc32(split.encode("utf-8")))


def sample_seed(seed: int, split: str, index: int) -> int:
    """A 63-bit torch seed that depends only on (seed, split, index)."""
    state = np.random.SeedSequence([seed, split_code(split), index]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def resize_image(image: torch.Tensor, resolution: int) -> torch.Tensor:
    """[N,3,H,W] -> [N,3,r,r] (antialiased when shrinking), clamped to [-1, 1]."""
    if image.shape[-1] != resolution or image.shape[-2] != resolution:
        image = F.interpolate(image, size=(resolution, resolution), mode="bilinear", antialias=True,
                              align_corners=False)
    return image.clamp(-1.0, 1.0)


class SyntheticDataset(Dataset[SyntheticSample]):
    """``length`` generator samples for one split. Pass ``source`` (built lazily, per process) or an
    already built ``generator`` (in-process use; it is then pickled into DataLoader workers)."""

    def __init__(
        self,
        length: int,
        split: str = "train",
        seed: int = 0,
        source: GeneratorSource | None = None,
        generator: torch.nn.Module | None = None,
        pose: PoseDistribution = FFHQ_LIKE_POSES,
        image_resolution: int = 256,
        full_resolution: int = 512,
        truncation_psi: float = 1.0,
    ) -> None:
        if length < 0:
            raise ValueError(f"synthetic split {split!r}: length must be >= 0, got {length}")
        if (source is None) == (generator is None):
            raise ValueError("SyntheticDataset needs exactly one of `source` and `generator`")
        self.length = length
        self.split = split
        self.seed = seed
        self.source = source
        self._generator = generator
        self.pose = pose
        self.image_resolution = image_resolution
        self.full_resolution = full_resolution
        self.truncation_psi = truncation_psi

    @property
    def generator(self) -> torch.nn.Module:
        if self._generator is None:
            assert self.source is not None
            self._generator = self.source.build()
        return self._generator

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        if self.source is not None:
            state["_generator"] = None  # WHY: workers rebuild it from the small source config
        return state

    def __len__(self) -> int:
        return self.length

    @property
    def identifiers(self) -> list[str]:
        return [self.identifier(index) for index in range(self.length)]

    def identifier(self, index: int) -> str:
        return f"synthetic/{self.split}/{index}"

    def draw(self, index: int) -> SyntheticDraw:
        """The random inputs of sample ``index`` (public so tests and tools can re-render it)."""
        from networks.eg3d.outputs import RendererDraws

        generator = self.generator
        rng = torch.Generator().manual_seed(sample_seed(self.seed, self.split, index))
        z = torch.randn(1, generator.z_dim, generator=rng)
        camera = cameras.sample_cameras(1, rng, self.pose)
        rays = generator.neural_rendering_resolution**2
        depth_samples = generator.rendering_kwargs["depth_resolution"]
        importance_samples = generator.rendering_kwargs["depth_resolution_importance"]
        draws = RendererDraws(
            stratified=torch.rand(1, rays, depth_samples, 1, generator=rng),
            importance=torch.rand(rays, importance_samples, generator=rng),
        )
        return SyntheticDraw(z=z, camera=camera, draws=draws)

    @torch.no_grad()
    def __getitem__(self, key: int | EpochIndex) -> SyntheticSample:
        index, _ = split_key(key)
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for synthetic split {self.split!r} of {self.length}")
        generator = self.generator
        draw = self.draw(index)
        canonical = cameras.canonical_camera_label(1)
        ws = generator.mapping(draw.z, canonical, truncation_psi=self.truncation_psi)
        output = generator.synthesis(ws, draw.camera, noise_mode="const", draws=draw.draws)
        image_full = resize_image(output.image.float(), self.full_resolution)[0]
        image = resize_image(output.image.float(), self.image_resolution)[0]
        camera = draw.camera[0].float()
        return SyntheticSample(
            image=image,
            image_full=image_full,
            camera=camera,
            image_mirrored=image.flip(-1),
            image_full_mirrored=image_full.flip(-1),
            camera_mirrored=cameras.mirror_label(draw.camera)[0].float(),
            identifier=self.identifier(index),
            ws_true=ws[0].float(),
            depth_true=output.image_depth[0].float(),
        )
