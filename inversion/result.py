"""The common result of inverting images, shared by every stage module, evaluate.py and the invert CLI.

A stage module (stage 1 encoder, stage 2 AFA, or a peer method) implements the ``Inverter`` protocol:
``invert(image, image_full, camera) -> InversionResult``. Everything downstream (metrics protocols,
multi-view rendering, meshes, editing) only talks to this dataclass and renders THROUGH it: with
``result.render_*`` or with ``result.generator_for(frozen)``, which is the frozen generator itself for
encoders and the image's own tuned generator for optimisation methods (PTI, Pose Opt.).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from inversion.tuned_generator import TunedGeneratorTensors
from networks.eg3d.generator import TriPlaneGenerator
from networks.eg3d.outputs import BackboneFeatures, RenderOutput, RendererDraws


@dataclass
class InversionResult:
    """ws: the inverted w+ [N, num_ws, w_dim] (w_avg included); input_view_planes: tri-planes that render
    the input view; novel_view_planes: tri-planes for other views (the occlusion-aware mix in GOAE's
    stage 2; identical to ``input_view_planes`` for w+-only methods); refined_features: F* when a
    feature-space method refined the backbone; visibility_masks: the mix masks [N, 3, 1, H, W] if any;
    tuned_generator: each image's tuned generator tensors when the method tuned the generator (PTI);
    input_camera: the camera the method found for each input image [N, 25] (pose optimisation), used
    for the input view instead of the image's label."""

    ws: torch.Tensor
    input_view_planes: torch.Tensor
    novel_view_planes: torch.Tensor
    refined_features: BackboneFeatures | None = None
    visibility_masks: torch.Tensor | None = None
    tuned_generator: TunedGeneratorTensors | None = None
    input_camera: torch.Tensor | None = None

    def generator_for(self, frozen: TriPlaneGenerator) -> TriPlaneGenerator:
        """The generator that renders this (batch-of-one) result: ``frozen`` itself, or a copy of it
        with the result's tuned tensors (``frozen`` is never changed)."""
        return frozen if self.tuned_generator is None else self.tuned_generator.generator_from(frozen)

    def input_view_camera(self, camera: torch.Tensor) -> torch.Tensor:
        """The input view's camera: the one the method found, else the image's label ``camera``."""
        return camera if self.input_camera is None else self.input_camera.to(camera.device, camera.dtype)

    def render_input_view(
        self, generator: TriPlaneGenerator, camera: torch.Tensor, draws: RendererDraws | None = None
    ) -> RenderOutput:
        return self._render(self.input_view_planes, generator, self.input_view_camera(camera), draws)

    def render_novel_view(
        self, generator: TriPlaneGenerator, camera: torch.Tensor, draws: RendererDraws | None = None
    ) -> RenderOutput:
        return self._render(self.novel_view_planes, generator, camera, draws)

    def _render(
        self, planes: torch.Tensor, generator: TriPlaneGenerator, camera: torch.Tensor, draws: RendererDraws | None
    ) -> RenderOutput:
        if self.tuned_generator is None:
            return generator.render_planes(planes, self.ws, camera, draws=draws)
        renders = []  # one generator per image
        for index in range(planes.shape[0]):
            image_generator = self.tuned_generator.sample(index).generator_from(generator)
            pick = slice(index, index + 1)
            renders.append(image_generator.render_planes(
                planes[pick], self.ws[pick], camera[pick], draws=None if draws is None else draws.sample(index)
            ))
        return RenderOutput.concatenate(renders)


class Inverter(Protocol):
    """What evaluate.py and the invert CLI need from a trained stage."""

    generator: TriPlaneGenerator

    def invert(self, image: torch.Tensor, image_full: torch.Tensor, camera: torch.Tensor) -> InversionResult:
        """image: encoder input [N, 3, S, S] in [-1, 1]; image_full: the full-resolution image
        [N, 3, H, W] (residual-based refinements use it); camera: the input view's 25-float label."""
        ...
