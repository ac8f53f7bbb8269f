"""Pose from landmarks: project the 3-D landmark template at known cameras and recover them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import cameras
from data_prep.alignment import STANDARD_LANDMARKS_3D, fit_scale_translation, standard_crop_landmarks
from data_prep.pose_estimation import (
    CROP_UNITS_PER_TEMPLATE_UNIT,
    PosePrior,
    canonical_projection,
    eg3d_landmark_template,
    estimate_pose,
)

pytestmark = pytest.mark.numerics  # float results against closed forms (tests/README.md)

CROP_SIZE = 512


def _project_template(label: torch.Tensor) -> np.ndarray:
    points = torch.from_numpy(eg3d_landmark_template().points)[None]
    return cameras.project_points(points, label.double(), CROP_SIZE)[0].numpy()


def test_template_calibration_makes_the_canonical_view_a_fixed_point_of_the_crop() -> None:
    projected = canonical_projection(eg3d_landmark_template().points)
    fit = fit_scale_translation(np.stack([projected[:, 0], 1.0 - projected[:, 1]], axis=1), STANDARD_LANDMARKS_3D)
    assert fit.scale == pytest.approx(CROP_UNITS_PER_TEMPLATE_UNIT, rel=1e-9)
    np.testing.assert_allclose(fit.translation, [0.5, 0.5], atol=1e-9)
    # Perspective vs the crop's orthographic standard: well under a pixel apart.
    np.testing.assert_allclose(projected * CROP_SIZE, standard_crop_landmarks(CROP_SIZE), atol=1.0)
    # EG3D's BFM->world factor is 0.27; its radius normalisation (~2.86 -> 2.7) shrinks it a little.
    assert 0.23 < eg3d_landmark_template().scale < 0.27


@pytest.mark.parametrize("yaw_degrees", [-60.0, -35.0, -10.0, 0.0, 20.0, 45.0])
@pytest.mark.parametrize("pitch_degrees", [-25.0, 0.0, 12.0, 30.0])
def test_recovers_look_at_cameras(yaw_degrees: float, pitch_degrees: float) -> None:
    true_label = cameras.look_at_label(math.radians(yaw_degrees), math.radians(pitch_degrees), dtype=torch.float64)
    estimate = estimate_pose(_project_template(true_label), CROP_SIZE, prior=None)
    assert estimate.yaw_degrees == pytest.approx(yaw_degrees, abs=0.5)
    assert estimate.pitch_degrees == pytest.approx(pitch_degrees, abs=0.5)
    assert estimate.reprojection_error * CROP_SIZE < 1e-3
    camera = cameras.unpack_label(estimate.label[None].double())
    assert float(camera.camera_centre.norm()) == pytest.approx(cameras.CAMERA_RADIUS, abs=1e-5)
    torch.testing.assert_close(estimate.label.double(), true_label[0], atol=1e-5, rtol=0)


def test_recovers_a_rolled_off_centre_camera() -> None:
    """Not a look-at camera: rolled 15 degrees about its axis and aimed off the pivot."""
    cam2world = cameras.look_at_cam2world(math.radians(25), math.radians(-10), dtype=torch.float64)
    roll = math.radians(15)
    in_plane = torch.tensor(
        [[math.cos(roll), -math.sin(roll), 0.0], [math.sin(roll), math.cos(roll), 0.0], [0.0, 0.0, 1.0]],
        dtype=torch.float64,
    )
    cam2world[0, :3, :3] = cam2world[0, :3, :3] @ in_plane
    label = cameras.pack_label(cam2world, cameras.normalized_intrinsics(dtype=torch.float64))
    estimate = estimate_pose(_project_template(label), CROP_SIZE, prior=None)
    torch.testing.assert_close(estimate.label.double(), label[0], atol=1e-5, rtol=0)


def test_label_is_valid_with_eg3d_intrinsics_and_radius() -> None:
    estimate = estimate_pose(standard_crop_landmarks(CROP_SIZE), CROP_SIZE)
    cameras.validate_label(estimate.label, "estimated label")
    intrinsics = cameras.unpack_label(estimate.label[None]).intrinsics[0]
    torch.testing.assert_close(intrinsics, cameras.normalized_intrinsics(4.2647)[0])
    assert float(estimate.label[[3, 7, 11]].norm()) == pytest.approx(2.7, abs=1e-5)
    # The standard crop positions are the canonical view (up to perspective): frontal camera.
    torch.testing.assert_close(estimate.label, cameras.canonical_camera_label()[0], atol=3e-3, rtol=0)


def test_mirrored_landmarks_give_the_mirrored_camera() -> None:
    true_label = cameras.look_at_label(math.radians(30), math.radians(8), dtype=torch.float64)
    landmarks = _project_template(true_label)
    # Mirror the image: x -> size - x, and the left/right landmarks swap roles.
    mirrored = landmarks[[1, 0, 2, 4, 3]].copy()
    mirrored[:, 0] = CROP_SIZE - mirrored[:, 0]
    estimate = estimate_pose(landmarks, CROP_SIZE)
    mirrored_estimate = estimate_pose(mirrored, CROP_SIZE)
    # The template is only nearly symmetric (BFM mean face), hence the small tolerances.
    assert mirrored_estimate.yaw_degrees == pytest.approx(-estimate.yaw_degrees, abs=1.5)
    assert mirrored_estimate.pitch_degrees == pytest.approx(estimate.pitch_degrees, abs=1.5)
    torch.testing.assert_close(
        cameras.mirror_label(estimate.label[None])[0], mirrored_estimate.label, atol=5e-2, rtol=0
    )


def test_prior_only_shrinks_poses_towards_frontal() -> None:
    prior = PosePrior()
    for yaw, pitch in [(40.0, 0.0), (0.0, 20.0), (-30.0, -15.0)]:
        landmarks = _project_template(
            cameras.look_at_label(math.radians(yaw), math.radians(pitch), dtype=torch.float64)
        )
        estimate = estimate_pose(landmarks, CROP_SIZE, prior=prior)
        # Same signs, never further from frontal, within the documented shrinkage.
        assert 0.85 * abs(yaw) - 0.5 <= abs(estimate.yaw_degrees) <= abs(yaw) + 0.5
        assert 0.4 * abs(pitch) - 0.5 <= abs(estimate.pitch_degrees) <= abs(pitch) + 0.5
        assert estimate.yaw_degrees * yaw >= 0 and estimate.pitch_degrees * pitch >= 0


def test_noisy_landmarks_still_give_a_close_yaw() -> None:
    generator = np.random.default_rng(0)
    landmarks = _project_template(cameras.look_at_label(math.radians(30), 0.0, dtype=torch.float64))
    noisy = landmarks + generator.normal(scale=1.0, size=landmarks.shape)
    estimate = estimate_pose(noisy, CROP_SIZE, prior=None)
    assert estimate.yaw_degrees == pytest.approx(30.0, abs=4.0)


@pytest.mark.parametrize(
    "landmarks", [np.zeros((4, 2)), np.full((5, 2), np.nan)], ids=["four points", "not finite"]
)
def test_rejects_bad_landmarks(landmarks: np.ndarray) -> None:
    with pytest.raises(ValueError, match="landmarks"):
        estimate_pose(landmarks, CROP_SIZE)
