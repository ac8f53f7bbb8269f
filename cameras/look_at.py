"""Look-at cameras on a sphere around the world origin, as EG3D's LookAtPoseSampler places them.

Two parameterisations:
* raw EG3D (horizontal h, vertical v): h = v = pi/2 is the frontal camera;
* ours (yaw, pitch) = (h - pi/2, v - pi/2): yaw > 0 moves the camera towards world +x,
  pitch > 0 moves it down (world -y), so it looks up at the face.

Yaw is a true azimuth angle. Pitch is NOT the geometric elevation: EG3D maps v through
phi = arccos(1 - 2v/pi) (uniform-on-sphere sampling), so the camera height is
y = -radius * 2 * pitch / pi. Use pitch_to_elevation for the geometric angle.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cameras.label import (
    CAMERA_RADIUS,
    FFHQ_PIVOT,
    FOCAL_LENGTH,
    normalized_intrinsics,
    pack_label,
    unpack_label,
)

# EG3D clamps v to keep the camera off the poles, where "up" is undefined.
_VERTICAL_EPSILON = 1e-5
_WORLD_UP = (0.0, 1.0, 0.0)

AngleLike = float | torch.Tensor
PointLike = Sequence[float] | torch.Tensor


@dataclass(frozen=True)
class CameraAngles:
    """Per-camera angles in radians, each [N]."""

    yaw: torch.Tensor
    pitch: torch.Tensor


@dataclass(frozen=True)
class CameraLabelSummary:
    """Per-label statistics for dataset checks, each [N]."""

    radius: torch.Tensor  # distance of the camera centre from the world origin
    yaw: torch.Tensor  # radians, see module docstring
    pitch: torch.Tensor  # radians, EG3D's vertical parameter minus pi/2


def look_at_cam2world_eg3d(
    horizontal: AngleLike,
    vertical: AngleLike,
    pivot: PointLike = FFHQ_PIVOT,
    radius: float = CAMERA_RADIUS,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """[N,4,4] cam2world of EG3D's LookAtPoseSampler(h, v, pivot, radius) without noise.

    The camera sits on the sphere of `radius` around the WORLD ORIGIN (not around the pivot)
    and looks at `pivot`.
    """
    horizontal_t, vertical_t = _as_angle_batch(horizontal, vertical, device, dtype)
    vertical_t = vertical_t.clamp(_VERTICAL_EPSILON, math.pi - _VERTICAL_EPSILON)
    theta = horizontal_t
    phi = torch.arccos(1.0 - 2.0 * vertical_t / math.pi)
    x = torch.sin(phi) * torch.cos(math.pi - theta)
    z = torch.sin(phi) * torch.sin(math.pi - theta)
    position = radius * torch.stack([x, torch.cos(phi), z], dim=-1)
    pivot_t = _as_point_batch(pivot, position)
    position, pivot_t = torch.broadcast_tensors(position, pivot_t)
    return cam2world_looking_at(position, pivot_t)


def cam2world_looking_at(position: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[N,4,4] OpenCV cam2world at `position` [N,3] looking at `target` [N,3], world +y up.

    Columns [right, down, forward] built the way EG3D's create_cam2world_matrix does.
    """
    forward = _normalise(target - position)
    up = forward.new_tensor(_WORLD_UP).expand_as(forward)
    sideways = torch.linalg.cross(up, forward, dim=-1)
    if bool((sideways.norm(dim=-1) < 1e-7).any()):
        raise ValueError("camera looks straight up or down (along world y); its right axis is undefined")
    right = -_normalise(sideways)
    down = _normalise(torch.linalg.cross(forward, right, dim=-1))
    cam2world = torch.zeros(position.shape[0], 4, 4, dtype=position.dtype, device=position.device)
    cam2world[:, :3, :3] = torch.stack([right, down, forward], dim=-1)
    cam2world[:, :3, 3] = position
    cam2world[:, 3, 3] = 1.0
    return cam2world


def look_at_cam2world(
    yaw: AngleLike,
    pitch: AngleLike,
    radius: float = CAMERA_RADIUS,
    pivot: PointLike = FFHQ_PIVOT,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """[N,4,4] look-at cam2world from our (yaw, pitch) = EG3D's (h - pi/2, v - pi/2)."""
    yaw_t, pitch_t = _as_angle_batch(yaw, pitch, device, dtype)
    return look_at_cam2world_eg3d(yaw_t + math.pi / 2, pitch_t + math.pi / 2, pivot, radius, device, dtype)


def look_at_label(
    yaw: AngleLike,
    pitch: AngleLike,
    radius: float = CAMERA_RADIUS,
    pivot: PointLike = FFHQ_PIVOT,
    focal: float = FOCAL_LENGTH,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """[N,25] label of a look-at camera with centred normalised intrinsics."""
    cam2world = look_at_cam2world(yaw, pitch, radius, pivot, device, dtype)
    intrinsics = normalized_intrinsics(
        focal, batch_size=cam2world.shape[0], device=cam2world.device, dtype=dtype
    )
    return pack_label(cam2world, intrinsics)


def yaw_pitch_from_cam2world(cam2world: torch.Tensor) -> CameraAngles:
    """Invert look_at_cam2world from the camera CENTRE alone (the rotation is ignored).

    Exact for look-at cameras of any radius and pivot (the sampler's sphere is centred on the
    world origin whatever the pivot). For other cameras it gives the angles of the centre's
    direction: yaw = atan2(x, z) in (-pi, pi], pitch = -(pi/2) * y / |centre| in [-pi/2, pi/2].
    Yaw is undefined (returned as 0) for a camera exactly above or below the origin.
    """
    if cam2world.ndim != 3 or tuple(cam2world.shape[1:]) != (4, 4):
        raise ValueError(f"cam2world must have shape [N, 4, 4], got {list(cam2world.shape)}")
    centre = cam2world[:, :3, 3]
    radius = centre.norm(dim=-1)
    if bool((radius == 0).any()):
        raise ValueError("a camera centre is at the world origin; its yaw and pitch are undefined")
    yaw = torch.atan2(centre[:, 0], centre[:, 2])
    pitch = -(math.pi / 2) * (centre[:, 1] / radius).clamp(-1.0, 1.0)
    return CameraAngles(yaw=yaw, pitch=pitch)


def camera_label_summary(labels: torch.Tensor) -> CameraLabelSummary:
    """Radius, yaw and pitch of every [N,25] label (vectorised), e.g. for a check_dataset report."""
    cam2world = unpack_label(labels).cam2world
    angles = yaw_pitch_from_cam2world(cam2world)
    return CameraLabelSummary(radius=cam2world[:, :3, 3].norm(dim=-1), yaw=angles.yaw, pitch=angles.pitch)


def pitch_to_elevation(pitch: torch.Tensor) -> torch.Tensor:
    """Geometric angle of the camera above the horizontal plane through the origin (radians).

    Positive elevation = camera above, looking down; it has the opposite sign of pitch.
    """
    return -torch.asin((2.0 * pitch / math.pi).clamp(-1.0, 1.0))


def elevation_to_pitch(elevation: torch.Tensor) -> torch.Tensor:
    """Inverse of pitch_to_elevation."""
    return -(math.pi / 2) * torch.sin(elevation)


def _normalise(vectors: torch.Tensor) -> torch.Tensor:
    return vectors / vectors.norm(dim=-1, keepdim=True)


def _as_angle_batch(
    first: AngleLike, second: AngleLike, device: torch.device | str | None, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Broadcast two angles (floats, [] or [N] tensors) to two [N] tensors of `dtype`."""
    if device is None:
        device = next((angle.device for angle in (first, second) if isinstance(angle, torch.Tensor)), None)
    first_t = torch.as_tensor(first, dtype=dtype, device=device)
    second_t = torch.as_tensor(second, dtype=dtype, device=device)
    if first_t.ndim > 1 or second_t.ndim > 1:
        raise ValueError(
            "angles must be scalars or 1-D [N] tensors, "
            f"got shapes {list(first_t.shape)} and {list(second_t.shape)}"
        )
    first_b, second_b = torch.broadcast_tensors(first_t.reshape(-1), second_t.reshape(-1))
    return first_b, second_b


def _as_point_batch(point: PointLike, like: torch.Tensor) -> torch.Tensor:
    """A [3] or [N,3] point as a [1,3] or [N,3] tensor with the dtype and device of `like`."""
    point_t = torch.as_tensor(point, dtype=like.dtype, device=like.device)
    if point_t.shape[-1:] != (3,) or point_t.ndim > 2:
        raise ValueError(f"pivot must have shape [3] or [N, 3], got {list(point_t.shape)}")
    return point_t.reshape(-1, 3)
