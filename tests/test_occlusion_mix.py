"""Occlusion-aware mixed tri-plane: texel rule, blur, masks on a closed-form scene, mixing."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cameras import FOCAL_LENGTH, canonical_camera_label, pixel_grid_rays
from networks.eg3d.outputs import RenderOutput
from networks.eg3d.renderer import project_onto_planes
from networks.occlusion_mix import (
    OcclusionMixConfig,
    gaussian_blur,
    gaussian_kernel_1d,
    mix_triplanes,
    morphological_closing,
    occlusion_aware_mix,
    scatter_points,
    texel_indices,
    visibility_masks,
    visible_surface_points,
)

RAYS = 128  # the released neural-rendering resolution
PLANE_RES = 256
BOX_WARP = 1.0
FRONT_Z = 0.1  # a plane z = FRONT_Z facing the canonical camera at (0, 0, 2.7)
BACK_Z = -0.2  # a larger plane behind it, completely occluded
CAMERA_Z = 2.7


# ------------------------------------------------------------------------------------------ texel rule
@pytest.mark.parametrize("projection", ["eg3d", "orthogonal"])
@pytest.mark.parametrize("box_warp", [1.0, 0.8])
def test_texel_rule_is_the_texel_grid_sample_reads(projection: str, box_warp: float) -> None:
    """The scatter index is the texel a nearest grid_sample (align_corners=False) of the renderer reads.

    A non-square grid (H != W) would catch swapped row/column axes.
    """
    height, width = 12, 16
    generator = torch.Generator().manual_seed(0)
    points = (torch.rand(1, 500, 3, generator=generator) - 0.5) * box_warp * 0.999
    texel_ids = torch.arange(height * width, dtype=torch.float32).reshape(1, 1, height, width)
    # The renderer's own projection and scaling (sample_from_planes), nearest instead of bilinear.
    coords = project_onto_planes((2.0 / box_warp) * points, projection)  # [1, 3, P, 2]
    for plane in range(3):
        read = F.grid_sample(texel_ids, coords[:, plane : plane + 1], mode="nearest", align_corners=False)
        plane_coords = coords[:, plane] * (box_warp / 2.0)  # back to world units
        cols = texel_indices(plane_coords[..., 0], width, box_warp)
        rows = texel_indices(plane_coords[..., 1], height, box_warp)
        assert torch.equal(read.reshape(-1).long(), (rows * width + cols).reshape(-1))


def test_texel_indices_clamp_and_floor() -> None:
    coords = torch.tensor([-0.9, -0.5, -0.49, 0.0, 0.49, 0.5, 3.0])
    # floor((c + 0.5) * 4): -1.6 -> 0 (clamped), 0, 0.04 -> 0, 2, 3.96 -> 3, 4 -> 3 (clamped), 3.
    assert texel_indices(coords, 4, 1.0).tolist() == [0, 0, 0, 2, 3, 3, 3]


def test_scatter_marks_exactly_the_hit_texels() -> None:
    coords = torch.tensor([[[-0.5, -0.5], [0.26, -0.01], [0.26, -0.01]]])  # (width axis, height axis)
    occupancy = scatter_points(coords, height=4, width=4, box_warp=1.0)
    expected = torch.zeros(1, 1, 4, 4)
    expected[0, 0, 0, 0] = 1.0  # (-0.5, -0.5) -> col 0, row 0
    expected[0, 0, 1, 3] = 1.0  # x 0.26 -> col floor(3.04) = 3, y -0.01 -> row floor(1.96) = 1
    assert torch.equal(occupancy, expected)


@pytest.mark.numerics
# ------------------------------------------------------------------------------------------ blur / closing
def test_gaussian_kernel_closed_form() -> None:
    kernel = gaussian_kernel_1d(9, 1.5)
    raw = torch.tensor([math.exp(-(x * x) / (2 * 1.5**2)) for x in range(-4, 5)])
    torch.testing.assert_close(kernel, raw / raw.sum())


@pytest.mark.numerics
def test_blur_of_a_delta_is_the_outer_product_kernel() -> None:
    delta = torch.zeros(1, 1, 21, 21)
    delta[0, 0, 10, 10] = 1.0
    blurred = gaussian_blur(delta, 9, 1.5)
    kernel = gaussian_kernel_1d(9, 1.5)
    expected = torch.zeros(21, 21)
    expected[6:15, 6:15] = torch.outer(kernel, kernel)
    torch.testing.assert_close(blurred[0, 0], expected)


@pytest.mark.numerics
def test_blur_matches_torchvision_gaussian_blur_including_borders() -> None:
    """The authors blur with torchvision's GaussianBlur (reflect padding); ours agrees for a fixed sigma."""
    from torchvision.transforms.functional import gaussian_blur as tv_gaussian_blur

    maps = torch.rand(2, 1, 30, 30, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(gaussian_blur(maps, 9, 1.5), tv_gaussian_blur(maps, [9, 9], [1.5, 1.5]))


def test_closing_fills_one_texel_holes_and_keeps_a_thin_line() -> None:
    line = torch.zeros(1, 1, 9, 12)
    line[0, 0, 4, 2:10:2] = 1.0  # every other texel of row 4, columns 2..8
    closed = morphological_closing(line, 3)
    expected = torch.zeros(1, 1, 9, 12)
    expected[0, 0, 4, 2:9] = 1.0
    assert torch.equal(closed, expected)


# ------------------------------------------------------------------------------------------ closed-form scene
def _frontal_scene_render() -> RenderOutput:
    """Rays of the canonical camera; depth = first hit of {z = FRONT_Z (full view), z = BACK_Z (behind)}."""
    label = canonical_camera_label()
    rays = pixel_grid_rays(label, RAYS)
    dz = rays.directions[..., 2]
    distance_front = (FRONT_Z - CAMERA_Z) / dz
    distance_back = (BACK_Z - CAMERA_Z) / dz
    depth = torch.minimum(distance_front, distance_back)  # the front plane: the back one is occluded
    zeros = torch.zeros(1, 1, RAYS, RAYS)
    return RenderOutput(
        image=torch.zeros(1, 3, 4 * RAYS, 4 * RAYS),
        image_raw=torch.zeros(1, 3, RAYS, RAYS),
        image_depth=depth.reshape(1, 1, RAYS, RAYS),
        feature_image=torch.zeros(1, 32, RAYS, RAYS),
        ray_origins=rays.origins,
        ray_directions=rays.directions,
        weights_sum=zeros + 1,
    )


def _texel_centres() -> torch.Tensor:
    return (torch.arange(PLANE_RES, dtype=torch.float64) + 0.5) / PLANE_RES * BOX_WARP - BOX_WARP / 2


# Half-width of the camera frustum on z = FRONT_Z: distance * (0.5 / focal) (principal point at 0.5).
FRONT_HALF_WIDTH = (CAMERA_Z - FRONT_Z) * 0.5 / FOCAL_LENGTH  # 0.3048
BACK_HALF_WIDTH = (CAMERA_Z - BACK_Z) * 0.5 / FOCAL_LENGTH  # 0.3400: what a wrong (far) depth would mark


@pytest.mark.numerics
def test_visible_points_lie_on_the_front_plane() -> None:
    points = visible_surface_points(_frontal_scene_render())
    assert points.shape == (1, RAYS * RAYS, 3)
    torch.testing.assert_close(points[..., 2], torch.full_like(points[..., 2], FRONT_Z), atol=1e-5, rtol=0)
    assert points[..., :2].abs().max() < FRONT_HALF_WIDTH


def test_paper_masks_on_a_frontal_plane() -> None:
    border = 3.0 / PLANE_RES
    assert FRONT_HALF_WIDTH + border < BACK_HALF_WIDTH  # the test can tell the two planes apart
    render = _frontal_scene_render()
    config = OcclusionMixConfig(variant="paper_binary_triplane")
    masks = visibility_masks(visible_surface_points(render), PLANE_RES, BOX_WARP, "eg3d", config)
    assert masks.shape == (1, 3, 1, PLANE_RES, PLANE_RES)
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    centre = _texel_centres()
    inside = centre.abs() < FRONT_HALF_WIDTH - border
    outside = centre.abs() > FRONT_HALF_WIDTH + border

    xy = masks[0, 0, 0].double()  # rows = y, cols = x
    assert xy[inside][:, inside].min() == 1.0
    assert xy[outside].max() == 0.0 and xy[:, outside].max() == 0.0

    front_texel = int((FRONT_Z + BOX_WARP / 2) / BOX_WARP * PLANE_RES)  # 153
    back_texel = int((BACK_Z + BOX_WARP / 2) / BOX_WARP * PLANE_RES)  # 76
    xz = masks[0, 1, 0]  # eg3d plane 1 = (x, z): rows = z, cols = x
    assert xz[front_texel, inside].min() == 1.0 and xz[front_texel, outside].max() == 0.0
    other_rows = torch.ones(PLANE_RES, dtype=torch.bool)
    other_rows[front_texel] = False
    assert xz[other_rows].max() == 0.0  # in particular the occluded plane's row is not marked
    assert xz[back_texel].max() == 0.0
    zx = masks[0, 2, 0]  # eg3d plane 2 = (z, x): rows = x, cols = z
    torch.testing.assert_close(zx, xz.T)


def test_released_mask_on_a_frontal_plane() -> None:
    border = 6.0 / PLANE_RES  # closing + second blur reach about kernel radius (4) + 1 texels
    render = _frontal_scene_render()
    masks = visibility_masks(
        visible_surface_points(render), PLANE_RES, BOX_WARP, "eg3d", OcclusionMixConfig()
    )
    centre = _texel_centres()
    inside = centre.abs() < FRONT_HALF_WIDTH - border
    outside = centre.abs() > FRONT_HALF_WIDTH + border
    xy = masks[0, 0, 0].double()
    assert xy[inside][:, inside].min() > 1.0 - 1e-5
    assert xy[outside].max() < 1e-6 and xy[:, outside].max() < 1e-6
    assert 0.0 < xy.min() + 1e-9 and xy.max() <= 1.0 + 1e-6
    assert ((xy > 0.01) & (xy < 0.99)).any()  # soft edges
    assert torch.equal(masks[0, 1:], torch.ones_like(masks[0, 1:]))  # planes 1, 2: take refined


def test_released_mask_is_deterministic_and_uses_the_configured_sigma() -> None:
    points = visible_surface_points(_frontal_scene_render())
    first = visibility_masks(points, PLANE_RES, BOX_WARP, "eg3d", OcclusionMixConfig(blur_sigma=1.5))
    second = visibility_masks(points, PLANE_RES, BOX_WARP, "eg3d", OcclusionMixConfig(blur_sigma=1.5))
    wider = visibility_masks(points, PLANE_RES, BOX_WARP, "eg3d", OcclusionMixConfig(blur_sigma=2.0))
    assert torch.equal(first, second)
    assert not torch.equal(first, wider)


def test_disabled_variant_takes_refined_everywhere() -> None:
    points = visible_surface_points(_frontal_scene_render())
    masks = visibility_masks(points, 16, BOX_WARP, "eg3d", OcclusionMixConfig(variant="disabled"))
    assert torch.equal(masks, torch.ones(1, 3, 1, 16, 16))


def test_no_gradient_flows_into_the_masks() -> None:
    render = _frontal_scene_render()
    render.image_depth.requires_grad_(True)
    for variant in ("released_xy_soft", "paper_binary_triplane"):
        masks = visibility_masks(
            visible_surface_points(render), 32, BOX_WARP, "eg3d", OcclusionMixConfig(variant=variant)
        )
        assert not masks.requires_grad


# ------------------------------------------------------------------------------------------ mixing
def _planes(seed: int) -> torch.Tensor:
    return torch.randn(2, 3, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_mix_with_all_ones_is_refined_and_all_zeros_is_wplus() -> None:
    refined, wplus = _planes(0), _planes(1)
    assert torch.equal(mix_triplanes(refined, wplus, torch.ones(2, 3, 1, 8, 8)), refined)
    assert torch.equal(mix_triplanes(refined, wplus, torch.zeros(2, 3, 1, 8, 8)), wplus)


@pytest.mark.numerics
def test_mix_blends_per_texel_and_gradients_follow_the_mask() -> None:
    refined, wplus = _planes(0).requires_grad_(True), _planes(1)
    masks = torch.ones(2, 3, 1, 8, 8)
    masks[:, 0] = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(2))  # released-style
    mixed = mix_triplanes(refined, wplus, masks)
    expected_xy = masks[:, 0] * refined[:, 0] + (1 - masks[:, 0]) * wplus[:, 0]
    torch.testing.assert_close(mixed[:, 0], expected_xy)
    assert torch.equal(mixed[:, 1:], refined[:, 1:])
    mixed.sum().backward()
    torch.testing.assert_close(refined.grad, masks.expand_as(refined))


def test_mix_rejects_masks_of_the_wrong_shape() -> None:
    with pytest.raises(ValueError, match="masks must have shape"):
        mix_triplanes(_planes(0), _planes(1), torch.ones(2, 1, 1, 8, 8))


@pytest.mark.parametrize("source", ["refined", "mixed"])
def test_occlusion_aware_mix_routes_the_input_view(source: str) -> None:
    render = _frontal_scene_render()
    refined = torch.randn(1, 3, 2, 32, 32)
    wplus = torch.randn(1, 3, 2, 32, 32)
    result = occlusion_aware_mix(
        refined, wplus, render, BOX_WARP, "eg3d", OcclusionMixConfig(input_view_source=source)
    )
    torch.testing.assert_close(result.novel_view_planes, mix_triplanes(refined, wplus, result.masks))
    expected_input = refined if source == "refined" else result.novel_view_planes
    assert result.input_view_planes is expected_input
    assert result.masks.shape == (1, 3, 1, 32, 32)
    assert result.visible_points.shape == (1, RAYS * RAYS, 3)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="variant"):
        OcclusionMixConfig(variant="xy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="kernel_size"):
        OcclusionMixConfig(kernel_size=8)
