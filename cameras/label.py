"""The 25-float EG3D camera label and the operations on it that need no angles.

Layout (see docs/cameras.md): entries 0..15 are a row-major 4x4 OpenCV cam2world
(x right, y down, z forward), entries 16..24 a row-major 3x3 intrinsic matrix
normalised by the image size, [[fx, s, cx], [0, fy, cy], [0, 0, 1]].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

LABEL_SIZE = 25
# Deep3DFaceRecon's focal 2985.29 px on the 700 px EG3D crop, i.e. in units of the image width.
FOCAL_LENGTH = 4.2647
PRINCIPAL_POINT = 0.5
CAMERA_RADIUS = 2.7
# Look-at points used by EG3D's scripts; the renderer itself never reads them.
FFHQ_PIVOT: tuple[float, float, float] = (0.0, 0.0, 0.2)
AFHQ_PIVOT: tuple[float, float, float] = (0.0, 0.0, -0.06)
# EG3D's FOV_to_intrinsics multiplies by this (a rounded sqrt(2), NVlabs/eg3d#81).
EG3D_FOV_QUIRK_FACTOR = 1.414
# Tolerance of validate_label: labels are stored as float32 text, often with 4-6 digits.
LABEL_TOLERANCE = 1e-3


@dataclass(frozen=True)
class CameraLabel:
    """A batch of labels split into its two matrices."""

    cam2world: torch.Tensor  # [N, 4, 4], OpenCV camera-to-world
    intrinsics: torch.Tensor  # [N, 3, 3], normalised by the image size

    @property
    def rotation(self) -> torch.Tensor:
        """[N, 3, 3]; columns are the camera's right, down and forward axes in world coordinates."""
        return self.cam2world[:, :3, :3]

    @property
    def camera_centre(self) -> torch.Tensor:
        """[N, 3] camera position in world coordinates."""
        return self.cam2world[:, :3, 3]


def pack_label(cam2world: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
    """[N,4,4] cam2world + [N,3,3] intrinsics -> [N,25] labels (row-major flattening)."""
    _require_shape(cam2world, (4, 4), "cam2world")
    _require_shape(intrinsics, (3, 3), "intrinsics")
    if cam2world.shape[0] != intrinsics.shape[0]:
        raise ValueError(
            f"cam2world has batch {cam2world.shape[0]} but intrinsics has batch {intrinsics.shape[0]}"
        )
    return torch.cat([cam2world.reshape(-1, 16), intrinsics.reshape(-1, 9)], dim=1)


def unpack_label(label: torch.Tensor) -> CameraLabel:
    """[N,25] labels -> CameraLabel with [N,4,4] cam2world and [N,3,3] intrinsics."""
    _require_label_shape(label)
    return CameraLabel(cam2world=label[:, :16].reshape(-1, 4, 4), intrinsics=label[:, 16:].reshape(-1, 3, 3))


def normalized_intrinsics(
    focal: float = FOCAL_LENGTH,
    principal: float = PRINCIPAL_POINT,
    batch_size: int = 1,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """[N,3,3] intrinsics [[f,0,p],[0,f,p],[0,0,1]] in units of the image size."""
    matrix = torch.tensor(
        [[focal, 0.0, principal], [0.0, focal, principal], [0.0, 0.0, 1.0]], dtype=dtype, device=device
    )
    return matrix.expand(batch_size, 3, 3).clone()


def fov_to_focal(fov_degrees: float) -> float:
    """True full field of view (degrees) -> normalised focal length 0.5 / tan(fov / 2)."""
    if not 0.0 < fov_degrees < 180.0:
        raise ValueError(f"fov_degrees must lie in (0, 180), got {fov_degrees}")
    return 0.5 / math.tan(math.radians(fov_degrees) / 2.0)


def focal_to_fov(focal: float) -> float:
    """Normalised focal length -> true full field of view in degrees (4.2647 -> 13.37)."""
    if not focal > 0.0:
        raise ValueError(f"focal must be positive, got {focal}")
    return math.degrees(2.0 * math.atan(0.5 / focal))


def eg3d_fov_to_focal(fov_degrees: float) -> float:
    """EG3D's FOV_to_intrinsics focal, 1 / (tan(fov/2) * 1.414): NOT the true FOV (18.837 deg -> ~4.263).

    Only for reproducing numbers from EG3D's scripts; use fov_to_focal for real optics.
    """
    if not 0.0 < fov_degrees < 180.0:
        raise ValueError(f"fov_degrees must lie in (0, 180), got {fov_degrees}")
    return 1.0 / (math.tan(math.radians(fov_degrees) / 2.0) * EG3D_FOV_QUIRK_FACTOR)


def canonical_cam2world(
    batch_size: int = 1, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """[N,4,4] frontal camera at (0,0,2.7) looking down -z: rotation diag(1,-1,-1)."""
    matrix = torch.tensor(
        [[1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, CAMERA_RADIUS], [0.0, 0.0, 0.0, 1.0]],
        dtype=dtype,
        device=device,
    )
    return matrix.expand(batch_size, 4, 4).clone()


def canonical_camera_label(
    batch_size: int = 1, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """[N,25] canonical conditioning camera (GOAE's c_front, EG3D's LookAt(pi/2, pi/2)), exact values."""
    return pack_label(
        canonical_cam2world(batch_size, device, dtype),
        normalized_intrinsics(batch_size=batch_size, device=device, dtype=dtype),
    )


def mirror_cam2world(cam2world: torch.Tensor) -> torch.Tensor:
    """Conjugate [N,4,4] poses by diag(-1,1,1,1): the world and the image are both flipped in x."""
    _require_shape(cam2world, (4, 4), "cam2world")
    flip = torch.diag(cam2world.new_tensor([-1.0, 1.0, 1.0, 1.0]))
    return flip @ cam2world @ flip


def mirror_intrinsics(intrinsics: torch.Tensor) -> torch.Tensor:
    """Intrinsics of the left-right flipped image: cx -> 1 - cx and skew -> -skew (normalised units)."""
    _require_shape(intrinsics, (3, 3), "intrinsics")
    mirrored = intrinsics.clone()
    mirrored[:, 0, 1] = -intrinsics[:, 0, 1]
    mirrored[:, 0, 2] = 1.0 - intrinsics[:, 0, 2]
    return mirrored


def mirror_label(label: torch.Tensor) -> torch.Tensor:
    """[N,25] label of the x-flipped image (EG3D's xflip augmentation, generalised to any cx)."""
    camera = unpack_label(label)
    return pack_label(mirror_cam2world(camera.cam2world), mirror_intrinsics(camera.intrinsics))


def normalize_camera_radius(label: torch.Tensor, radius: float = CAMERA_RADIUS) -> torch.Tensor:
    """Rescale each camera centre to distance `radius` from the world origin, keeping its direction
    and the rotation (what EG3D's preprocess_face_cameras 'orig' mode does)."""
    camera = unpack_label(label)
    centre = camera.camera_centre
    distance = centre.norm(dim=1, keepdim=True)
    if bool((distance == 0).any()):
        bad = int((distance[:, 0] == 0).nonzero()[0])
        raise ValueError(f"label {bad} has its camera at the world origin; its radius cannot be normalised")
    cam2world = camera.cam2world.clone()
    cam2world[:, :3, 3] = centre * (radius / distance)
    return pack_label(cam2world, camera.intrinsics)


def validate_label(label: torch.Tensor | Sequence[float], name_for_errors: str) -> None:
    """Raise ValueError naming `name_for_errors`, the row and the entry if a label is malformed.

    Accepts 25 numbers or an [N,25] batch. Checks: finite, rotation orthonormal with det +1,
    bottom row [0,0,0,1], intrinsics [[fx,0,cx],[0,fy,cy],[0,0,1]] with fx, fy > 0 and the
    principal point inside the image (normalised units, not pixels).
    """
    values = _as_label_batch(label, name_for_errors)
    # A cheap vectorised screen first, so whole datasets validate fast; then explain the first bad row.
    bad_rows = _rows_failing_checks(values).nonzero()
    if bad_rows.numel() == 0:
        return
    row = int(bad_rows[0])
    where = name_for_errors if values.shape[0] == 1 else f"{name_for_errors} (row {row})"
    _validate_single_label(values[row], where)
    raise ValueError(f"{where}: malformed camera label {values[row].tolist()}")  # screen/explain mismatch


def _rows_failing_checks(values: torch.Tensor) -> torch.Tensor:
    """[N] bool: rows of an [N,25] float64 batch that fail any check of _validate_single_label."""
    finite = torch.isfinite(values).all(dim=1)
    safe = torch.where(torch.isfinite(values), values, torch.zeros_like(values))
    cam2world = safe[:, :16].reshape(-1, 4, 4)
    intrinsics = safe[:, 16:].reshape(-1, 3, 3)
    rotation = cam2world[:, :3, :3]
    identity = torch.eye(3, dtype=values.dtype)
    gram_error = (rotation.transpose(1, 2) @ rotation - identity).abs().amax(dim=(1, 2))
    bottom_error = (cam2world[:, 3] - values.new_tensor([0.0, 0.0, 0.0, 1.0])).abs().amax(dim=1)
    last_row_error = (intrinsics[:, 2] - values.new_tensor([0.0, 0.0, 1.0])).abs().amax(dim=1)
    fx, skew, cx = intrinsics[:, 0].unbind(dim=1)
    below_fx, fy, cy = intrinsics[:, 1].unbind(dim=1)
    good = (
        finite
        & (bottom_error <= LABEL_TOLERANCE)
        & (gram_error <= LABEL_TOLERANCE)
        & (torch.linalg.det(rotation) >= 0)
        & (fx > 0)
        & (fy > 0)
        & (skew.abs() <= LABEL_TOLERANCE)
        & (below_fx.abs() <= LABEL_TOLERANCE)
        & (last_row_error <= LABEL_TOLERANCE)
        & (cx > 0)
        & (cx < 1)
        & (cy > 0)
        & (cy < 1)
    )
    return ~good


def _validate_single_label(label: torch.Tensor, where: str) -> None:
    non_finite = (~torch.isfinite(label)).nonzero()
    if non_finite.numel() > 0:
        index = int(non_finite[0])
        raise ValueError(f"{where}: camera label entry {index} is {label[index].item()} (must be finite)")
    cam2world = label[:16].reshape(4, 4)
    intrinsics = label[16:].reshape(3, 3)
    _check_bottom_row(cam2world, where)
    _check_rotation(cam2world[:3, :3], where)
    _check_intrinsics(intrinsics, where)


def _check_bottom_row(cam2world: torch.Tensor, where: str) -> None:
    expected = cam2world.new_tensor([0.0, 0.0, 0.0, 1.0])
    if (cam2world[3] - expected).abs().max() > LABEL_TOLERANCE:
        raise ValueError(
            f"{where}: cam2world bottom row (label entries 12..15) is {cam2world[3].tolist()}, "
            "expected [0, 0, 0, 1]"
        )


def _check_rotation(rotation: torch.Tensor, where: str) -> None:
    gram_error = (rotation.T @ rotation - torch.eye(3, dtype=rotation.dtype)).abs().max().item()
    if gram_error > LABEL_TOLERANCE:
        raise ValueError(
            f"{where}: cam2world rotation (label entries 0-2, 4-6, 8-10) is not orthonormal "
            f"(max |R^T R - I| = {gram_error:.3g} > {LABEL_TOLERANCE}); is it scaled or not a rotation?"
        )
    determinant = torch.linalg.det(rotation).item()
    if determinant < 0:
        raise ValueError(
            f"{where}: cam2world rotation has determinant {determinant:.4f}, a reflection; "
            "expected +1 (OpenCV camera axes right, down, forward form a right-handed frame)"
        )


def _check_intrinsics(intrinsics: torch.Tensor, where: str) -> None:
    fx, skew, cx = intrinsics[0].tolist()
    below_fx, fy, cy = intrinsics[1].tolist()
    if not (fx > 0 and fy > 0):
        raise ValueError(f"{where}: intrinsics fx={fx}, fy={fy} (label entries 16, 20) must be positive")
    if abs(skew) > LABEL_TOLERANCE or abs(below_fx) > LABEL_TOLERANCE:
        raise ValueError(
            f"{where}: intrinsics entries [0,1]={skew} and [1,0]={below_fx} (label entries 17, 19) "
            "must be 0 (no skew)"
        )
    last_row = intrinsics[2] - intrinsics.new_tensor([0.0, 0.0, 1.0])
    if last_row.abs().max() > LABEL_TOLERANCE:
        raise ValueError(
            f"{where}: intrinsics last row (label entries 22..24) is {intrinsics[2].tolist()}, "
            "expected [0, 0, 1]"
        )
    if not (0.0 < cx < 1.0 and 0.0 < cy < 1.0):
        raise ValueError(
            f"{where}: principal point cx={cx}, cy={cy} (label entries 18, 21) lies outside (0, 1); "
            "intrinsics must be normalised by the image size, not in pixels"
        )


def _as_label_batch(label: torch.Tensor | Sequence[float], name_for_errors: str) -> torch.Tensor:
    try:
        values = torch.as_tensor(label, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"{name_for_errors}: camera label is not a list of numbers ({error})") from error
    if values.ndim not in (1, 2) or values.shape[-1] != LABEL_SIZE:
        raise ValueError(
            f"{name_for_errors}: camera label must have {LABEL_SIZE} numbers (or shape [N, {LABEL_SIZE}]), "
            f"got shape {list(values.shape)}"
        )
    return values.reshape(-1, LABEL_SIZE)


def _require_label_shape(label: torch.Tensor) -> None:
    if label.ndim != 2 or label.shape[1] != LABEL_SIZE:
        raise ValueError(f"camera labels must have shape [N, {LABEL_SIZE}], got {list(label.shape)}")


def _require_shape(tensor: torch.Tensor, matrix_shape: tuple[int, int], name: str) -> None:
    if tensor.ndim != 3 or tuple(tensor.shape[1:]) != matrix_shape:
        rows, columns = matrix_shape
        raise ValueError(f"{name} must have shape [N, {rows}, {columns}], got {list(tensor.shape)}")
