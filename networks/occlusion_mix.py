"""Occlusion-aware mixed tri-plane (GOAE Sec. 4.3, Appendix A eq. 12) and the authors' released variant.

The refined tri-planes (from F*) carry detail seen in the input view only; elsewhere they may be distorted.
So texels "seen" by the input camera take the refined planes and the rest keep the w+ planes:

    mixed = mask * refined + (1 - mask) * wplus          (per plane, mask in [0, 1], [N, 3, 1, H, W])

Visible points: p = ray_origin + expected_depth * ray_direction from the REFINED rendering at the input
camera (`RenderOutput.image_depth` flattened row-major, the order of the rays). No gradient flows through
any mask.

Variants (`OcclusionMixConfig.variant`):
* "released_xy_soft" (default; `Net.mix_fusion` of jiangyzy/GOAE): only plane 0 (x, y) is mixed. Points
  are scattered at the plane resolution, blurred (Gaussian, kernel 9), thresholded at 0.35 and blurred
  again: a soft mask. Planes 1 and 2 take the refined planes (mask 1). The authors draw sigma uniformly in
  [1, 2] on every call; we use one fixed, configurable sigma (default 1.5) so inference is deterministic.
* "paper_binary_triplane" (the paper's tri-Mask): the points are projected orthogonally onto all three
  planes with the generator's own plane projection; each mask is binary. Scattering 128^2 rays onto 256^2
  texels leaves one-texel holes, so each scatter gets a morphological closing (dilate then erode with a
  `closing_kernel_size` square, default 3). Not the released blur + threshold: a surface seen edge-on
  projects to a one-texel line on the xz / zx planes, which a blur + threshold at 0.35 would erase.
* "disabled" (ablation "w/o occlusion-aware", paper Table 2): all masks 1, so mixed == refined.

Texel rule: col = floor((u + b/2) / b * W), row = floor((v + b/2) / b * H), clamped to the grid, where
(u, v) are the plane's (width, height) world coordinates and b = box_warp. Under grid_sample with
align_corners=False, texel j has its centre at (j + 0.5) / W of the box, so this is exactly the texel
whose centre is nearest to the point (the one a nearest-neighbour lookup returns), as the authors intend.
Points outside the box are clamped onto the border texels (as released).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from networks.eg3d.outputs import RenderOutput
from networks.eg3d.renderer import PLANE_PROJECTIONS

MixVariant = Literal["released_xy_soft", "paper_binary_triplane", "disabled"]
ViewSource = Literal["refined", "mixed"]
MIX_VARIANTS: tuple[str, ...] = ("released_xy_soft", "paper_binary_triplane", "disabled")
NUM_PLANES = 3
XY_PLANE = 0


@dataclass(frozen=True)
class OcclusionMixConfig:
    """How the visibility masks are built and which planes render the input view.

    input_view_source: "refined" (released: the input view renders the F* planes unmixed, so the
    reconstruction loss sees every refined texel) or "mixed". Novel views always render the mixed planes.
    """

    variant: MixVariant = "released_xy_soft"
    blur_sigma: float = 1.5
    kernel_size: int = 9
    threshold: float = 0.35
    closing_kernel_size: int = 3
    input_view_source: ViewSource = "refined"

    def __post_init__(self) -> None:
        if self.variant not in MIX_VARIANTS:
            raise ValueError(
                f"OcclusionMixConfig: variant must be one of {MIX_VARIANTS}, got {self.variant!r}"
            )
        if self.input_view_source not in ("refined", "mixed"):
            raise ValueError(
                "OcclusionMixConfig: input_view_source must be 'refined' or 'mixed', "
                f"got {self.input_view_source!r}"
            )
        if self.kernel_size < 1 or self.kernel_size % 2 != 1:
            raise ValueError(
                f"OcclusionMixConfig: kernel_size must be a positive odd int, got {self.kernel_size}"
            )
        if self.closing_kernel_size < 1 or self.closing_kernel_size % 2 != 1:
            raise ValueError(
                "OcclusionMixConfig: closing_kernel_size must be a positive odd int, "
                f"got {self.closing_kernel_size}"
            )
        if self.blur_sigma <= 0:
            raise ValueError(f"OcclusionMixConfig: blur_sigma must be > 0, got {self.blur_sigma}")


@dataclass
class MixedTriplanes:
    """Result of the occlusion-aware mix.

    input_view_planes: what renders the input camera (refined or mixed, per config);
    novel_view_planes: the mixed planes, for every other camera;
    masks: [N, 3, 1, H, W] weights of the refined planes; visible_points: [N, P, 3] world points.
    """

    input_view_planes: torch.Tensor
    novel_view_planes: torch.Tensor
    masks: torch.Tensor
    visible_points: torch.Tensor


# --------------------------------------------------------------------------------------- visible points
def visible_surface_points(render: RenderOutput) -> torch.Tensor:
    """[N, R*R, 3] expected surface points o + depth * d of a rendering (detached: masks take no gradient)."""
    depth = render.image_depth.detach().flatten(start_dim=1).unsqueeze(-1)  # row-major, like the rays
    origins, directions = render.ray_origins.detach(), render.ray_directions.detach()
    if depth.shape[1] != directions.shape[1]:
        raise ValueError(f"depth has {depth.shape[1]} pixels but there are {directions.shape[1]} rays")
    return origins + depth * directions


# --------------------------------------------------------------------------------------- mask building
def texel_indices(coordinates: torch.Tensor, resolution: int, box_warp: float) -> torch.Tensor:
    """World coordinates along one plane axis -> texel indices floor((c + b/2)/b * R), clamped to [0, R-1]."""
    continuous = (coordinates + 0.5 * box_warp) / box_warp * resolution
    return continuous.floor().clamp(0, resolution - 1).long()


def scatter_points(plane_coordinates: torch.Tensor, height: int, width: int, box_warp: float) -> torch.Tensor:
    """[N, P, 2] (width axis, height axis) world coordinates -> binary occupancy [N, 1, H, W]."""
    cols = texel_indices(plane_coordinates[..., 0], width, box_warp)
    rows = texel_indices(plane_coordinates[..., 1], height, box_warp)
    occupancy = plane_coordinates.new_zeros(plane_coordinates.shape[0], height * width)
    occupancy.scatter_(1, rows * width + cols, 1.0)
    return occupancy.reshape(-1, 1, height, width)


def gaussian_kernel_1d(kernel_size: int, sigma: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Normalised samples of exp(-x^2 / (2 sigma^2)) at x = -(k-1)/2 .. (k-1)/2 (torchvision's kernel)."""
    half = (kernel_size - 1) / 2
    positions = torch.linspace(-half, half, kernel_size, dtype=dtype)
    weights = torch.exp(-0.5 * (positions / sigma).square())
    return weights / weights.sum()


def gaussian_blur(maps: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of [N, 1, H, W] with reflect padding (torchvision GaussianBlur's padding)."""
    kernel = gaussian_kernel_1d(kernel_size, sigma, maps.dtype).to(maps.device)
    pad = kernel_size // 2
    padded = F.pad(maps, (pad, pad, pad, pad), mode="reflect")
    blurred = F.conv2d(padded, kernel.reshape(1, 1, 1, -1))
    return F.conv2d(blurred, kernel.reshape(1, 1, -1, 1))


def soft_mask(occupancy: torch.Tensor, config: OcclusionMixConfig) -> torch.Tensor:
    """The released mask: blur, threshold (fills the scatter's holes), blur again (soft edges)."""
    binary = (gaussian_blur(occupancy, config.kernel_size, config.blur_sigma) > config.threshold).to(
        occupancy.dtype
    )
    return gaussian_blur(binary, config.kernel_size, config.blur_sigma)


def morphological_closing(occupancy: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Binary closing of [N, 1, H, W]: dilation then erosion with a square; fills holes, keeps thin lines."""
    pad = kernel_size // 2
    dilated = F.max_pool2d(occupancy, kernel_size, stride=1, padding=pad)
    # Erosion = -dilation(-x); max_pool pads with -inf, so the grid border does not erode the mask.
    return -F.max_pool2d(-dilated, kernel_size, stride=1, padding=pad)


@torch.no_grad()
def visibility_masks(
    points: torch.Tensor, plane_resolution: int, box_warp: float, projection: str, config: OcclusionMixConfig
) -> torch.Tensor:
    """Visible points [N, P, 3] -> per-plane weights of the refined planes [N, 3, 1, R, R].

    projection: the generator's plane projection name (`G.renderer.plane_projection`, 'eg3d' for released
    weights); plane k's (width, height) axes are PLANE_PROJECTIONS[projection][k].
    """
    if projection not in PLANE_PROJECTIONS:
        raise ValueError(
            f"unknown plane projection {projection!r}; expected one of {sorted(PLANE_PROJECTIONS)}"
        )
    points = points.detach()
    batch, resolution = points.shape[0], plane_resolution
    ones = points.new_ones(batch, 1, resolution, resolution)
    axes = PLANE_PROJECTIONS[projection]
    if config.variant == "disabled":
        return torch.stack([ones] * NUM_PLANES, dim=1)
    if config.variant == "released_xy_soft":
        xy = scatter_points(points[..., list(axes[XY_PLANE])], resolution, resolution, box_warp)
        return torch.stack([soft_mask(xy, config), ones, ones], dim=1)
    occupancies = [scatter_points(points[..., list(pair)], resolution, resolution, box_warp) for pair in axes]
    return torch.stack(
        [morphological_closing(occupancy, config.closing_kernel_size) for occupancy in occupancies], dim=1
    )


# --------------------------------------------------------------------------------------- mixing
def mix_triplanes(refined: torch.Tensor, wplus: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """mask * refined + (1 - mask) * wplus; planes [N, 3, C, H, W], masks [N, 3, 1, H, W] (no grad)."""
    if refined.shape != wplus.shape:
        raise ValueError(f"refined {list(refined.shape)} and w+ planes {list(wplus.shape)} differ in shape")
    expected = [refined.shape[0], refined.shape[1], 1, *refined.shape[-2:]]
    if list(masks.shape) != expected:
        raise ValueError(f"masks must have shape {expected}, got {list(masks.shape)}")
    masks = masks.detach().to(refined.dtype)
    return masks * refined + (1.0 - masks) * wplus


def occlusion_aware_mix(
    refined_planes: torch.Tensor,
    wplus_planes: torch.Tensor,
    refined_render: RenderOutput,
    box_warp: float,
    projection: str,
    config: OcclusionMixConfig,
) -> MixedTriplanes:
    """The whole step: visible points of the refined rendering at the input camera -> masks -> mixed planes.

    box_warp: `G.rendering_kwargs['box_warp']`; projection: `G.renderer.plane_projection`.
    """
    points = visible_surface_points(refined_render)
    masks = visibility_masks(points, refined_planes.shape[-1], box_warp, projection, config)
    mixed = mix_triplanes(refined_planes, wplus_planes, masks)
    input_view = refined_planes if config.input_view_source == "refined" else mixed
    return MixedTriplanes(
        input_view_planes=input_view, novel_view_planes=mixed, masks=masks, visible_points=points
    )


__all__ = [
    "MIX_VARIANTS",
    "MixedTriplanes",
    "OcclusionMixConfig",
    "gaussian_blur",
    "gaussian_kernel_1d",
    "mix_triplanes",
    "morphological_closing",
    "occlusion_aware_mix",
    "scatter_points",
    "soft_mask",
    "texel_indices",
    "visibility_masks",
    "visible_surface_points",
]
