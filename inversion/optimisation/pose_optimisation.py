"""Pose optimisation (Ko et al., "3D GAN Inversion with Pose Optimization", WACV 2023): the camera of
each image is optimised jointly with its pivot, then the generator is tuned at the found camera.

The camera is the image's initial label moved by three learned quantities per image (all zero at the
start, so the search starts exactly at the initial camera):

* ``yaw``: an orbit of the camera centre about the world's vertical axis (radians; yaw > 0 moves the
  camera towards +x, as ``cameras.look_at_label``);
* ``elevation``: an orbit about the horizontal axis through the origin perpendicular to the initial
  viewing direction (radians, geometric; > 0 moves the camera down, the sign of our pitch);
  after both orbits the camera is re-aimed at the generator's pivot (EG3D's cameras look at it),
  keeping the initial label's own deviation from that aim;
* ``translation``: an offset of the camera centre in the camera's own frame (world units), after
  which the centre is put back at the initial distance from the origin, as Ko et al. renormalise it
  to 2.7.

Ko et al. regress the camera with a pose network fine-tuned during the search; the two orbit angles
are the quantities such a network outputs (yaw, pitch), optimised directly here. Their depth-based
warping loss is not implemented.

The initial camera is the image's label, or (``initial: estimator``) the prediction of a pose
estimator file in Ko et al.'s format: a ResNet-34 whose head is fc(512->1000), ReLU, fc2(1000->128),
ReLU, fc3(128->2), tanh, fed the image in [0, 255] at 256 px (area resampling), predicting
(theta - pi/2, phi - pi/2) of a camera at radius 2.7 looking at the origin, with
position = r (sin phi cos(pi - theta), cos phi, sin phi sin(pi - theta)).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cameras import CAMERA_RADIUS, FFHQ_PIVOT, cam2world_looking_at, pack_label, unpack_label
from losses.frozen import PretrainedWeightsError, read_state_dict_file

INITIAL_POSES = ("label", "estimator")
ESTIMATOR_INPUT_SIZE = 256
ESTIMATOR_ORIGIN = (
    "a pose estimator in Ko et al.'s format (KU-CVLAB/3DGAN-Inversion `pose_estimator.pt`: a ResNet-34 "
    "state dict with fc 512->1000, fc2 1000->128 and fc3 128->2; their initialisers are shared on Google Drive)"
)


@dataclass(frozen=True)
class PoseSettings:
    """How the camera is optimised (docs/pti.md, "Pose optimisation").

    angle_lr / translation_lr: Adam learning rates of the orbit angles (radians) and of the translation
    (world units); both follow a cosine ramp-down over the search. preheat_steps: first steps that
    move only the camera (Ko et al.: 50 of 400), with the pivot fixed and no w noise.
    initial: ``label`` (the image's camera) or ``estimator`` (``estimator_weights``).
    """

    angle_lr: float = 0.01
    translation_lr: float = 2e-4
    preheat_steps: int = 50
    initial: str = "label"
    estimator_weights: str | None = None

    def __post_init__(self) -> None:
        if self.initial not in INITIAL_POSES:
            raise ValueError(f"pose.initial must be one of {INITIAL_POSES}, got {self.initial!r}")
        if self.initial == "estimator" and not self.estimator_weights:
            raise ValueError("pose.initial=estimator needs pose.estimator_weights=<file> (" + ESTIMATOR_ORIGIN + ")")
        if self.preheat_steps < 0:
            raise ValueError(f"pose.preheat_steps must be >= 0, got {self.preheat_steps}")


def rotation_about_axis(axis: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """[N, 3, 3] rotations by ``angle`` [N] about unit ``axis`` [N, 3] (Rodrigues' formula; differentiable)."""
    x, y, z = axis.unbind(-1)
    zero = torch.zeros_like(x)
    cross = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(-1, 3, 3)
    eye = torch.eye(3, dtype=axis.dtype, device=axis.device).expand_as(cross)
    sin, cos = angle.sin()[:, None, None], angle.cos()[:, None, None]
    return eye + sin * cross + (1 - cos) * (cross @ cross)


class CameraAdjustment(nn.Module):
    """The learned camera change of N images (zero at the start); :meth:`labels` applies it.

    The camera orbits the world origin (staying at its distance from it, as EG3D's pose sampler places
    cameras on a sphere) and keeps looking at ``pivot`` (the generator's ``avg_camera_pivot``) with
    its own deviation from that look-at frame (roll, off-centre aim), so a look-at label stays a
    look-at label. The translation then shifts the centre in the camera's frame.
    """

    def __init__(self, num_images: int, pivot: tuple[float, float, float] = FFHQ_PIVOT,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        self.yaw = nn.Parameter(torch.zeros(num_images, device=device))
        self.elevation = nn.Parameter(torch.zeros(num_images, device=device))
        self.translation = nn.Parameter(torch.zeros(num_images, 3, device=device))
        self.register_buffer("pivot", torch.tensor(pivot, dtype=torch.float32, device=device))

    def labels(self, initial: torch.Tensor) -> torch.Tensor:
        """The adjusted [N, 25] labels of the ``initial`` labels (intrinsics unchanged)."""
        camera = unpack_label(initial)
        rotation, centre = camera.cam2world[:, :3, :3], camera.cam2world[:, :3, 3]
        pivot = self.pivot.to(centre.dtype).expand_as(centre)
        own_aim = cam2world_looking_at(centre, pivot)[:, :3, :3].transpose(1, 2) @ rotation  # identity for look-at labels
        up = centre.new_tensor([0.0, 1.0, 0.0]).expand_as(centre)
        sideways = torch.linalg.cross(up, centre, dim=-1)
        sideways = sideways / sideways.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        orbit = rotation_about_axis(up, self.yaw) @ rotation_about_axis(sideways, self.elevation)
        orbited = (orbit @ centre[..., None])[..., 0]
        new_rotation = cam2world_looking_at(orbited, pivot)[:, :3, :3] @ own_aim
        moved = orbited + (new_rotation @ self.translation[..., None])[..., 0]
        new_centre = moved / moved.norm(dim=-1, keepdim=True) * centre.norm(dim=-1, keepdim=True)
        cam2world = torch.cat([
            torch.cat([new_rotation, new_centre[..., None]], dim=-1),
            camera.cam2world[:, 3:, :],
        ], dim=1)
        return pack_label(cam2world, camera.intrinsics)

    def optimizer(self, settings: PoseSettings) -> torch.optim.Adam:
        return torch.optim.Adam([
            {"params": [self.yaw, self.elevation], "lr": settings.angle_lr, "base_lr": settings.angle_lr},
            {"params": [self.translation], "lr": settings.translation_lr, "base_lr": settings.translation_lr},
        ])


# ----------------------------------------------------------------------------- pose estimator
class AnglePoseEstimator(nn.Module):
    """Ko et al.'s 2-angle pose estimator: a ResNet-34 trunk and a three-layer head with tanh."""

    def __init__(self) -> None:
        super().__init__()
        import torchvision  # imported here: only this initialiser needs it

        trunk = torchvision.models.resnet34(weights=None)
        for name, child in trunk.named_children():  # same state-dict names as their file: conv1, layer1, fc, ...
            self.add_module(name, child)
        self.fc2 = nn.Linear(1000, 128)
        self.fc3 = nn.Linear(128, 2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, 3, 256, 256] in [0, 255] -> (theta - pi/2, phi - pi/2) [N, 2]."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        x = F.relu(self.fc(x))
        x = F.relu(self.fc2(x))
        return torch.tanh(self.fc3(x))


def load_pose_estimator(path: str | Path) -> AnglePoseEstimator:
    """The estimator of ``path`` (read with torch.load(weights_only=True)), frozen, in eval mode."""
    state = read_state_dict_file(path, ESTIMATOR_ORIGIN)
    estimator = AnglePoseEstimator()
    expected = estimator.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    wrong = [f"{key} {list(state[key].shape)}" for key in expected
             if key in state and state[key].shape != expected[key].shape]
    if missing or unexpected or wrong:
        raise PretrainedWeightsError(
            f"{path} is not a 2-angle pose estimator: missing {missing[:4]}, unexpected {unexpected[:4]}, "
            f"wrong shapes {wrong[:4]}. Expected {ESTIMATOR_ORIGIN}"
        )
    estimator.load_state_dict(state)
    return estimator.eval().requires_grad_(False)


def estimated_labels(estimator: AnglePoseEstimator, images: torch.Tensor, intrinsics_from: torch.Tensor) -> torch.Tensor:
    """[N, 25] labels of the cameras ``estimator`` predicts for ``images`` [N, 3, H, W] in [-1, 1], with
    the intrinsics of ``intrinsics_from`` (the images' labels)."""
    scaled = (images.float() + 1) * 127.5
    if scaled.shape[-1] != ESTIMATOR_INPUT_SIZE:
        scaled = F.interpolate(scaled, size=(ESTIMATOR_INPUT_SIZE, ESTIMATOR_INPUT_SIZE), mode="area")
    with torch.no_grad():
        angles = estimator(scaled)
    theta, phi = torch.pi / 2 + angles[:, 0], torch.pi / 2 + angles[:, 1]
    position = CAMERA_RADIUS * torch.stack(
        [phi.sin() * (torch.pi - theta).cos(), phi.cos(), phi.sin() * (torch.pi - theta).sin()], dim=-1
    )
    cam2world = cam2world_looking_at(position, torch.zeros_like(position))
    return pack_label(cam2world, unpack_label(intrinsics_from).intrinsics)


__all__ = [
    "AnglePoseEstimator",
    "CameraAdjustment",
    "PoseSettings",
    "estimated_labels",
    "load_pose_estimator",
    "rotation_about_axis",
]
