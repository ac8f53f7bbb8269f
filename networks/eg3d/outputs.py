"""Typed results of the EG3D generator's stages (no positional tuples, no return-type flags)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class BackboneFeatures:
    """State of the StyleGAN2 tri-plane backbone after a named block (e.g. ``b32``).

    ``features`` is the block's output feature map x (GOAE's F, [N, C, R, R]); ``skip_image`` is
    the skip-accumulated 96-channel tri-plane image at the same resolution ([N, 96, R, R]).
    ``block`` names the block the state was taken after, so synthesis can resume from it.
    """

    block: str
    features: torch.Tensor
    skip_image: torch.Tensor


@dataclass
class RendererDraws:
    """The volume renderer's two uniform draws, injectable so outputs can be compared exactly.

    ``stratified``: jitter in [0, 1) of the coarse depths, [N, R*R, D, 1];
    ``importance``: inverse-CDF uniforms of the importance pass, [N*R*R, D_importance].
    """

    stratified: torch.Tensor
    importance: torch.Tensor

    @classmethod
    def uniform(
        cls,
        batch_size: int,
        num_rays: int,
        depth_resolution: int,
        importance_resolution: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> "RendererDraws":
        """U[0, 1) draws in the official order (stratified, then importance)."""
        stratified = torch.rand([batch_size, num_rays, depth_resolution, 1], generator=generator, device=device)
        importance = torch.rand([batch_size * num_rays, importance_resolution], generator=generator, device=device)
        return cls(stratified=stratified, importance=importance)

    @classmethod
    def deterministic(
        cls,
        batch_size: int,
        num_rays: int,
        depth_resolution: int,
        importance_resolution: int,
        device: torch.device | str | None = None,
    ) -> "RendererDraws":
        """No jitter and evenly spaced importance uniforms (the official code's unused ``det=True`` path)."""
        stratified = torch.zeros([batch_size, num_rays, depth_resolution, 1], device=device)
        importance = torch.linspace(0, 1, importance_resolution, device=device).expand(batch_size * num_rays, -1)
        return cls(stratified=stratified, importance=importance.contiguous())

    def sample(self, index: int) -> "RendererDraws":
        """The draws of batch item ``index`` alone (a batch of one)."""
        num_rays = self.stratified.shape[1]
        return RendererDraws(
            stratified=self.stratified[index : index + 1],
            importance=self.importance[index * num_rays : (index + 1) * num_rays],
        )

    def check_shape(self, batch_size: int, num_rays: int, depth_resolution: int, importance_resolution: int) -> None:
        want_s = [batch_size, num_rays, depth_resolution, 1]
        want_i = [batch_size * num_rays, importance_resolution]
        if list(self.stratified.shape) != want_s or list(self.importance.shape) != want_i:
            raise ValueError(
                f"renderer draws have shapes {list(self.stratified.shape)} / {list(self.importance.shape)}, "
                f"expected {want_s} / {want_i}"
            )


@dataclass
class RenderOutput:
    """What rendering tri-planes at a camera gives.

    image: super-resolved image [N, 3, H, W] (≈[-1, 1]); image_raw: first three channels of the
    neural feature image [N, 3, R, R]; image_depth: expected depth along each unit ray [N, 1, R, R];
    feature_image: all 32 rendered channels (the super-resolution input) [N, 32, R, R];
    ray_origins / ray_directions: [N, R*R, 3] in world units (row-major pixel order);
    weights_sum: accumulated opacity per ray [N, 1, R, R].
    """

    image: torch.Tensor
    image_raw: torch.Tensor
    image_depth: torch.Tensor
    feature_image: torch.Tensor
    ray_origins: torch.Tensor
    ray_directions: torch.Tensor
    weights_sum: torch.Tensor

    @classmethod
    def concatenate(cls, renders: list["RenderOutput"]) -> "RenderOutput":
        """One batch from several renders (e.g. of images rendered by different generators)."""
        return cls(**{name: torch.cat([getattr(render, name) for render in renders])
                      for name in cls.__dataclass_fields__})


@dataclass
class SynthesisOutput(RenderOutput):
    """A full synthesis: the rendering plus the tri-planes it came from ([N, 3, 32, 256, 256])."""

    planes: torch.Tensor
