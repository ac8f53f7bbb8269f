"""Random look-at cameras for synthetic (generator-rendered) training data.

Like EG3D's GaussianCameraPoseSampler (h ~ pi/2 + N(0, std_h), v ~ pi/2 + N(0, std_v)) but
looking at a pivot, with the normal distribution truncated (not clamped) to +-limit so no
extreme, badly rendered profiles appear. Deterministic given a torch.Generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cameras.label import AFHQ_PIVOT, CAMERA_RADIUS, FFHQ_PIVOT, FOCAL_LENGTH
from cameras.look_at import CameraAngles, look_at_label

POSE_KINDS = ("gaussian", "uniform")


@dataclass(frozen=True)
class PoseDistribution:
    """How yaw and pitch (radians, see cameras.look_at) are drawn; Hydra-instantiable.

    kind "gaussian": mean + N(0, std) truncated to mean +- limit.
    kind "uniform": mean + U(-limit, +limit); the stds are ignored.
    Defaults ("FFHQ-like"): yaw std 0.3 rad (17 deg) within +-0.9, pitch std 0.15 within +-0.45,
    roughly FFHQ's spread, which is mostly within ~30 deg of frontal.
    """

    kind: str = "gaussian"
    yaw_mean: float = 0.0
    pitch_mean: float = 0.0
    yaw_std: float = 0.3
    pitch_std: float = 0.15
    yaw_limit: float = 0.9
    pitch_limit: float = 0.45
    radius: float = CAMERA_RADIUS
    pivot: Sequence[float] = FFHQ_PIVOT
    focal: float = FOCAL_LENGTH

    def __post_init__(self) -> None:
        if self.kind not in POSE_KINDS:
            raise ValueError(f"PoseDistribution.kind must be one of {POSE_KINDS}, got {self.kind!r}")
        for name in ("yaw_std", "pitch_std"):
            if getattr(self, name) < 0:
                raise ValueError(f"PoseDistribution.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("yaw_limit", "pitch_limit", "radius", "focal"):
            if not getattr(self, name) > 0:
                raise ValueError(f"PoseDistribution.{name} must be > 0, got {getattr(self, name)}")
        pivot = tuple(float(coordinate) for coordinate in self.pivot)
        if len(pivot) != 3:
            raise ValueError(f"PoseDistribution.pivot must have 3 coordinates, got {list(self.pivot)}")
        # Hydra hands lists over as ListConfig; store a plain hashable tuple.
        object.__setattr__(self, "pivot", pivot)


FFHQ_LIKE_POSES = PoseDistribution()
AFHQ_LIKE_POSES = PoseDistribution(pivot=AFHQ_PIVOT)
# GOAE's (earlier) training code: yaw +-0.4, pitch +-0.15 uniform around the FFHQ pivot.
GOAE_UNIFORM_POSES = PoseDistribution(kind="uniform", yaw_limit=0.4, pitch_limit=0.15)


def sample_camera_angles(
    batch_size: int, generator: torch.Generator, distribution: PoseDistribution = FFHQ_LIKE_POSES
) -> CameraAngles:
    """Draw [N] yaws and pitches (float64, on the generator's device); yaw first, then pitch."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    uniforms = torch.rand(2, batch_size, generator=generator, dtype=torch.float64, device=generator.device)
    if distribution.kind == "uniform":
        half_widths = uniforms.new_tensor([[distribution.yaw_limit], [distribution.pitch_limit]])
        offsets = (2.0 * uniforms - 1.0) * half_widths
    else:
        offsets = torch.stack(
            [
                _truncated_normal(uniforms[0], distribution.yaw_std, distribution.yaw_limit),
                _truncated_normal(uniforms[1], distribution.pitch_std, distribution.pitch_limit),
            ]
        )
    return CameraAngles(yaw=distribution.yaw_mean + offsets[0], pitch=distribution.pitch_mean + offsets[1])


def sample_cameras(
    batch_size: int,
    generator: torch.Generator,
    distribution: PoseDistribution = FFHQ_LIKE_POSES,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """[N,25] random look-at labels; the same generator state gives the same labels on any device."""
    angles = sample_camera_angles(batch_size, generator, distribution)
    target_device = torch.device(device) if device is not None else generator.device
    return look_at_label(
        angles.yaw.to(device=target_device, dtype=dtype),
        angles.pitch.to(device=target_device, dtype=dtype),
        radius=distribution.radius,
        pivot=distribution.pivot,
        focal=distribution.focal,
        device=target_device,
        dtype=dtype,
    )


def _truncated_normal(uniforms: torch.Tensor, std: float, limit: float) -> torch.Tensor:
    """N(0, std) restricted to [-limit, limit] by inverse-CDF sampling (one uniform per draw)."""
    if std == 0:
        return torch.zeros_like(uniforms)
    upper_probability = torch.special.ndtr(uniforms.new_tensor(limit / std))
    lower_probability = 1.0 - upper_probability
    probabilities = lower_probability + uniforms * (upper_probability - lower_probability)
    return (std * torch.special.ndtri(probabilities)).clamp(-limit, limit)
