"""Camera pose of an aligned face crop from its 5 landmarks (PnP against a 3-D landmark template).

EG3D poses real photos with Deep3DFaceRecon (a 3DMM regressor whose weights are not available
offline). We instead solve a perspective-n-point problem: the rigid pose that projects a 3-D
template of the 5 landmarks, through EG3D's fixed intrinsics (focal 4.2647, principal point 0.5,
normalised units), onto the landmarks found in the 512 crop. The camera centre is then rescaled
to radius 2.7 like EG3D's preprocess_face_cameras, giving the 25-float label.

The template in EG3D world units (head at the origin, y up, face towards +z):
    template = k * STANDARD_LANDMARKS_3D + offset
The BFM template is the one the crop aligns to; k and offset are calibrated so that the CANONICAL
camera (at (0, 0, 2.7) looking down -z) sees the template exactly where the crop puts a standard
face: i.e. cropping the canonical view of the template is the identity (POS scale 300 px per unit
on the 1024 window = 300/700 per unit in normalised crop units, centred at 0.5). The depth offset
is EG3D's own conversion of BFM coordinates, z_world = 0.27 * z_bfm + 0.161 (BEHAVIOUR.md section 12),
applied to the template's mean depth; it only matters for the position, not the rotation, of the
recovered camera. The calibration gives k ~ 0.25 (EG3D's 0.27 shrunk by its radius normalisation
from ~2.86 to 2.7), consistent with EG3D's labels.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

import cameras
from data_prep.alignment import (
    EG3D_CENTRE_CROP_SIZE,
    EG3D_RESCALE_FACTOR,
    STANDARD_LANDMARKS_3D,
    fit_scale_translation,
)

# EG3D's BFM -> world conversion (preprocess_in_the_wild: *0.27, +0.161 in z).
_EG3D_BFM_TO_WORLD_SCALE = 0.27
_EG3D_BFM_TO_WORLD_Z_OFFSET = 0.161
# Normalised crop units per template unit when a face is cropped (300 px per unit on the 700 crop).
CROP_UNITS_PER_TEMPLATE_UNIT = EG3D_RESCALE_FACTOR / EG3D_CENTRE_CROP_SIZE
# Starting yaws for the solver (radians); the lowest final residual wins. Covers profile views.
_INITIAL_YAWS = (-1.0, -0.5, 0.0, 0.5, 1.0)
_MAX_ITERATIONS = 50


@dataclass(frozen=True)
class PosePrior:
    """Gaussian prior on where the camera looks, for a maximum-a-posteriori pose.

    Why: 5 landmarks pin yaw well but pitch badly. Pitch comes almost only from where the nose
    tip sits between the eyes and the mouth, and that varies with the detector's nose convention
    (MTCNN's nose is lower than the template's on frontal faces) and with expression (a smile
    lifts the mouth corners) by as much as 20-30 degrees of apparent pitch. The prior keeps such
    faces near the pose distribution of portrait photos, while clear head turns still win.
    """

    yaw_std_radians: float = 0.5
    pitch_std_radians: float = 0.15
    # Expected rigid-model misfit of a landmark (normalised units; 0.02 = 10 px on a 512 crop).
    landmark_std: float = 0.02


PORTRAIT_POSE_PRIOR = PosePrior()


@dataclass(frozen=True)
class LandmarkTemplate:
    points: np.ndarray  # [5,3] world coordinates
    scale: float  # k, world units per BFM unit
    offset: np.ndarray  # [3]


@dataclass(frozen=True)
class PoseEstimate:
    label: torch.Tensor  # [25] float32: cam2world (radius normalised) + normalised intrinsics
    yaw_degrees: float  # cameras.yaw_pitch_from_cam2world convention (yaw > 0: camera towards +x)
    pitch_degrees: float  # pitch > 0: camera below the face, looking up
    reprojection_error: float  # RMS, in normalised image units (multiply by the crop size for pixels)
    camera_distance: float  # |camera centre| before the radius normalisation


def canonical_projection(points: np.ndarray, focal: float = cameras.FOCAL_LENGTH) -> np.ndarray:
    """[P,3] world points -> [P,2] normalised image coordinates (y down) under the canonical camera."""
    label = cameras.canonical_camera_label(dtype=torch.float64)
    label[:, 16] = label[:, 20] = focal
    pixels = cameras.project_points(torch.from_numpy(points)[None], label, image_size=1)
    return pixels[0].numpy()


@functools.cache
def eg3d_landmark_template() -> LandmarkTemplate:
    """The calibrated 5-point template in EG3D world units (see the module docstring)."""
    depth_offset = (
        _EG3D_BFM_TO_WORLD_SCALE * STANDARD_LANDMARKS_3D[:, 2].mean() + _EG3D_BFM_TO_WORLD_Z_OFFSET
    )
    scale = _EG3D_BFM_TO_WORLD_SCALE
    offset = np.array([0.0, 0.0, 0.0])
    for _ in range(100):  # fixed-point iteration; converges in ~10 steps
        offset[2] = depth_offset - scale * STANDARD_LANDMARKS_3D[:, 2].mean()
        points = scale * STANDARD_LANDMARKS_3D + offset
        projected = canonical_projection(points)
        fit = fit_scale_translation(np.stack([projected[:, 0], 1.0 - projected[:, 1]], axis=1), STANDARD_LANDMARKS_3D)
        scale *= CROP_UNITS_PER_TEMPLATE_UNIT / fit.scale
        # d(image)/d(world) at the face is about focal / distance; step the offset by the centring error.
        image_per_world = cameras.FOCAL_LENGTH / (cameras.CAMERA_RADIUS - depth_offset)
        offset[0] += (0.5 - fit.translation[0]) / image_per_world
        offset[1] += (0.5 - fit.translation[1]) / image_per_world
    offset[2] = depth_offset - scale * STANDARD_LANDMARKS_3D[:, 2].mean()
    return LandmarkTemplate(points=scale * STANDARD_LANDMARKS_3D + offset, scale=scale, offset=offset.copy())


def estimate_pose(
    crop_landmarks: np.ndarray,
    crop_size: int,
    prior: PosePrior | None = PORTRAIT_POSE_PRIOR,
    focal: float = cameras.FOCAL_LENGTH,
) -> PoseEstimate:
    """Pose of the face in an aligned crop from its 5 landmarks [5,2] (continuous pixel coordinates).

    prior=None gives the plain least-squares PnP (exact for landmarks that are a projection of the
    template); the default adds PORTRAIT_POSE_PRIOR (see PosePrior for why).
    """
    crop_landmarks = np.asarray(crop_landmarks, dtype=np.float64)
    template = eg3d_landmark_template().points
    if crop_landmarks.shape != template[:, :2].shape or not np.isfinite(crop_landmarks).all():
        raise ValueError(f"expected {template.shape[0]} finite (x, y) landmarks, got {crop_landmarks.tolist()}")
    observed = crop_landmarks / crop_size

    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for initial_yaw in _INITIAL_YAWS:
        initial_rotation, initial_translation = _initial_world_to_camera(initial_yaw)
        rotation, translation, error = _levenberg_marquardt(
            initial_rotation, initial_translation, template, observed, focal, prior
        )
        in_front = bool(((template @ rotation.T + translation)[:, 2] > 0).all())
        if in_front and (best is None or error < best[0]):
            best = (error, rotation, translation)
    if best is None:
        raise ValueError(f"no camera pose puts the template in front of the camera for landmarks {crop_landmarks.tolist()}")
    error, world_to_camera_rotation, translation = best

    cam2world = torch.eye(4, dtype=torch.float64)
    cam2world[:3, :3] = torch.from_numpy(world_to_camera_rotation.T)
    cam2world[:3, 3] = torch.from_numpy(-world_to_camera_rotation.T @ translation)
    label = cameras.pack_label(cam2world[None], cameras.normalized_intrinsics(focal=focal, dtype=torch.float64))
    distance = float(cam2world[:3, 3].norm())
    label = cameras.normalize_camera_radius(label, cameras.CAMERA_RADIUS)
    angles = cameras.yaw_pitch_from_cam2world(cameras.unpack_label(label).cam2world)
    return PoseEstimate(
        label=label[0].float(),
        yaw_degrees=math.degrees(float(angles.yaw[0])),
        pitch_degrees=math.degrees(float(angles.pitch[0])),
        reprojection_error=error,
        camera_distance=distance,
    )


def _initial_world_to_camera(yaw: float) -> tuple[np.ndarray, np.ndarray]:
    """World-to-camera rotation and translation of a look-at camera at `yaw`, radius 2.7."""
    cam2world = cameras.look_at_cam2world(yaw, 0.0, dtype=torch.float64)[0].numpy()
    rotation = cam2world[:3, :3].T
    return rotation, -rotation @ cam2world[:3, 3]


def _levenberg_marquardt(
    rotation: np.ndarray,
    translation: np.ndarray,
    world_points: np.ndarray,
    observed: np.ndarray,
    focal: float,
    prior: PosePrior | None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Minimise the squared reprojection error (plus the prior) over the pose; returns
    (rotation, translation, RMS reprojection error).

    Rotation updates are multiplicative, R <- exp(delta) R, so the parameterisation is always
    local (the frontal camera's rotation diag(1,-1,-1) is a half turn, where a global
    axis-angle parameterisation would be singular).
    """

    def objective(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
        reprojection = _reprojection_residual(rotation, translation, world_points, observed, focal)
        if prior is None:
            return reprojection
        yaw, pitch = _look_angles(rotation)
        return np.concatenate(
            [reprojection / prior.landmark_std, [yaw / prior.yaw_std_radians, pitch / prior.pitch_std_radians]]
        )

    def objective_jacobian(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
        reprojection = _reprojection_jacobian(rotation, translation, world_points, focal)
        if prior is None:
            return reprojection
        # The angles depend on the rotation only; central differences are plenty for 3 numbers.
        angle_jacobian = np.zeros((2, 6))
        for axis in range(3):
            delta = np.zeros(3)
            delta[axis] = 1e-6
            plus = np.array(_look_angles(_rotation_matrix(delta) @ rotation))
            minus = np.array(_look_angles(_rotation_matrix(-delta) @ rotation))
            angle_jacobian[:, axis] = (plus - minus) / 2e-6
        angle_jacobian /= np.array([[prior.yaw_std_radians], [prior.pitch_std_radians]])
        return np.concatenate([reprojection / prior.landmark_std, angle_jacobian])

    damping = 1e-3
    residual = objective(rotation, translation)
    for _ in range(_MAX_ITERATIONS):
        jacobian = objective_jacobian(rotation, translation)
        normal = jacobian.T @ jacobian
        step = np.linalg.solve(normal + damping * np.diag(normal.diagonal() + 1e-12), -jacobian.T @ residual)
        candidate_rotation = _rotation_matrix(step[:3]) @ rotation
        candidate_translation = translation + step[3:]
        candidate = objective(candidate_rotation, candidate_translation)
        cost, candidate_cost = residual @ residual, candidate @ candidate
        if candidate_cost < cost:
            rotation, translation, residual = candidate_rotation, candidate_translation, candidate
            damping = max(damping / 10, 1e-12)
            if cost - candidate_cost <= 1e-15 * max(cost, 1e-30) or np.abs(step).max() < 1e-13:
                break
        else:
            damping *= 10
            if damping > 1e8:
                break
    reprojection = _reprojection_residual(rotation, translation, world_points, observed, focal)
    rms = float(np.sqrt(np.square(reprojection.reshape(-1, 2)).sum(axis=1).mean()))
    return rotation, translation, rms


def _look_angles(world_to_camera_rotation: np.ndarray) -> tuple[float, float]:
    """(yaw, pitch) of the viewing direction: 0 for a camera looking down -z; yaw > 0 when it
    looks from +x, pitch > 0 when it looks up (sign conventions of cameras.look_at_cam2world)."""
    forward = world_to_camera_rotation[2]
    return math.atan2(-forward[0], -forward[2]), math.asin(max(-1.0, min(1.0, forward[1])))


def _reprojection_residual(
    rotation: np.ndarray, translation: np.ndarray, world_points: np.ndarray, observed: np.ndarray, focal: float
) -> np.ndarray:
    camera_points = world_points @ rotation.T + translation
    projected = focal * camera_points[:, :2] / camera_points[:, 2:3] + 0.5
    return (projected - observed).reshape(-1)


def _reprojection_jacobian(
    rotation: np.ndarray, translation: np.ndarray, world_points: np.ndarray, focal: float
) -> np.ndarray:
    """[2P, 6] derivative of the residual w.r.t. (delta rotation, translation) at delta = 0."""
    rotated = world_points @ rotation.T
    x, y, z = (rotated + translation).T
    # d(projection)/d(camera point), [P, 2, 3]
    projection = np.zeros((world_points.shape[0], 2, 3))
    projection[:, 0, 0] = focal / z
    projection[:, 0, 2] = -focal * x / z**2
    projection[:, 1, 1] = focal / z
    projection[:, 1, 2] = -focal * y / z**2
    # d(exp(delta) R X)/d(delta) = -[R X]_x
    d_rotation = -np.stack([_skew(point) for point in rotated])
    return np.concatenate([projection @ d_rotation, projection], axis=2).reshape(-1, 6)


def _skew(vector: np.ndarray) -> np.ndarray:
    x, y, z = vector
    return np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])


def _rotation_matrix(rotation_vector: np.ndarray) -> np.ndarray:
    """Rodrigues' formula."""
    angle = float(np.linalg.norm(rotation_vector))
    if angle < 1e-12:
        return np.eye(3) + _skew(rotation_vector)
    cross = _skew(rotation_vector / angle)
    return np.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * (cross @ cross)
