"""The common result of inverting images, shared by every stage module, evaluate.py and the invert CLI.

A stage module (stage 1 encoder, stage 2 AFA, or a peer method) implements the ``Inverter`` protocol:
``invert(image, image_full, camera) -> InversionResult``. Everything downstream (metrics protocols,
multi-view rendering, meshes, editing) only talks to this dataclass and the frozen generator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from networks.eg3d.generator import TriPlaneGenerator
from networks.eg3d.outputs import BackboneFeatures, RenderOutput, RendererDraws


@dataclass
class InversionResult:
    """ws: the inverted w+ [N, num_ws, w_dim] (w_avg included); input_view_planes: tri-planes that render
    the input view; novel_view_planes: tri-planes for other views (the occlusion-aware mix in GOAE's
    stage 2; identical to ``input_view_planes`` for w+-only methods); refined_features: F* when a
    feature-space method refined the backbone; visibility_masks: the mix masks [N, 3, 1, H, W] if any."""

    ws: torch.Tensor
    input_view_planes: torch.Tensor
    novel_view_planes: torch.Tensor
    refined_features: BackboneFeatures | None = None
    visibility_masks: torch.Tensor | None = None

    def render_input_view(
        self, generator: TriPlaneGenerator, camera: torch.Tensor, draws: RendererDraws | None = None
    ) -> RenderOutput:
        return generator.render_planes(self.input_view_planes, self.ws, camera, draws=draws)

    def render_novel_view(
        self, generator: TriPlaneGenerator, camera: torch.Tensor, draws: RendererDraws | None = None
    ) -> RenderOutput:
        return generator.render_planes(self.novel_view_planes, self.ws, camera, draws=draws)


class Inverter(Protocol):
    """What evaluate.py and the invert CLI need from a trained stage."""

    generator: TriPlaneGenerator

    def invert(self, image: torch.Tensor, image_full: torch.Tensor, camera: torch.Tensor) -> InversionResult:
        """image: encoder input [N, 3, S, S] in [-1, 1]; image_full: the full-resolution image
        [N, 3, H, W] (residual-based refinements use it); camera: the input view's 25-float label."""
        ...
