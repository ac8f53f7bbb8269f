"""Pixels <-> rays <-> world points, consistent with EG3D's ray sampler (BEHAVIOUR.md section 7).

Pixel coordinates are continuous (x, y) = (column, row) in pixels: pixel (row i, column j)
covers [j, j+1) x [i, i+1) and its centre is (j + 0.5, i + 0.5). Normalised image coordinates
are (u, v) = (x, y) / image_size, the units of the label's intrinsics. Square images only,
as in EG3D. Ray directions are unit vectors, so a rendered depth is the distance along the ray.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cameras.label import unpack_label


@dataclass(frozen=True)
class Rays:
    """Rays in world coordinates."""

    origins: torch.Tensor  # [N, P, 3] camera centres
    directions: torch.Tensor  # [N, P, 3] unit vectors


def pixel_centres(
    image_size: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """[R*R, 2] pixel-centre coordinates (x, y) in EG3D's raster order (row i outer, column j inner)."""
    _require_image_size(image_size)
    centres = torch.arange(image_size, device=device, dtype=dtype) + 0.5
    rows, columns = torch.meshgrid(centres, centres, indexing="ij")
    return torch.stack([columns.reshape(-1), rows.reshape(-1)], dim=-1)


def pixels_to_rays(pixels: torch.Tensor, label: torch.Tensor, image_size: int) -> Rays:
    """Rays through continuous pixel coordinates `pixels` [N,P,2] of cameras `label` [N,25]."""
    _require_points(pixels, 2, "pixels")
    _require_image_size(image_size)
    camera = unpack_label(label)
    intrinsics = camera.intrinsics
    fx, skew, cx = (intrinsics[:, 0, k, None] for k in range(3))
    fy, cy = intrinsics[:, 1, 1, None], intrinsics[:, 1, 2, None]
    u = pixels[..., 0] / image_size
    v = pixels[..., 1] / image_size
    # Inverse of u = fx*x + skew*y + cx, v = fy*y + cy at camera depth z = 1.
    y_camera = (v - cy) / fy
    x_camera = (u - cx - skew * y_camera) / fx
    camera_points = torch.stack([x_camera, y_camera, torch.ones_like(x_camera)], dim=-1)
    directions = camera_points @ camera.rotation.transpose(1, 2)
    directions = directions / directions.norm(dim=-1, keepdim=True)
    origins = camera.camera_centre[:, None, :].expand_as(directions)
    return Rays(origins=origins, directions=directions)


def pixel_grid_rays(label: torch.Tensor, image_size: int) -> Rays:
    """[N, R*R] rays through every pixel centre, in the order EG3D's ray sampler produces them."""
    centres = pixel_centres(image_size, device=label.device, dtype=label.dtype)
    return pixels_to_rays(centres.expand(label.shape[0], -1, -1), label, image_size)


def points_along_rays(rays: Rays, distance: torch.Tensor) -> torch.Tensor:
    """[N,P,3] points origin + distance * direction; `distance` is [N,P] or [N,P,1] (e.g. EG3D depth)."""
    if distance.ndim == rays.directions.ndim - 1:
        distance = distance.unsqueeze(-1)
    return rays.origins + distance * rays.directions


def world_to_camera(points: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """[N,P,3] world points -> OpenCV camera coordinates; z > 0 means in front of the camera."""
    _require_points(points, 3, "points")
    camera = unpack_label(label)
    return (points - camera.camera_centre[:, None, :]) @ camera.rotation


def project_points(points: torch.Tensor, label: torch.Tensor, image_size: int) -> torch.Tensor:
    """[N,P,3] world points -> [N,P,2] continuous pixel coordinates (x = column, y = row).

    Points behind the camera project too (mirrored); check world_to_camera(...)[..., 2] > 0.
    """
    _require_image_size(image_size)
    camera_points = world_to_camera(points, label)
    intrinsics = unpack_label(label).intrinsics
    x = camera_points[..., 0] / camera_points[..., 2]
    y = camera_points[..., 1] / camera_points[..., 2]
    u = intrinsics[:, 0, 0, None] * x + intrinsics[:, 0, 1, None] * y + intrinsics[:, 0, 2, None]
    v = intrinsics[:, 1, 1, None] * y + intrinsics[:, 1, 2, None]
    return torch.stack([u, v], dim=-1) * image_size


def _require_points(points: torch.Tensor, width: int, name: str) -> None:
    if points.ndim != 3 or points.shape[-1] != width:
        raise ValueError(f"{name} must have shape [N, P, {width}], got {list(points.shape)}")


def _require_image_size(image_size: int) -> None:
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int (square images), got {image_size!r}")
