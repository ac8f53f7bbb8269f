"""Camera conventions: closed forms, round trips, validation and ray/projection consistency."""

from __future__ import annotations

import math

import pytest
import torch

import cameras
from cameras import (
    AFHQ_PIVOT,
    CAMERA_RADIUS,
    FFHQ_PIVOT,
    FOCAL_LENGTH,
    PoseDistribution,
    canonical_camera_label,
    look_at_cam2world,
    look_at_label,
    mirror_label,
    pack_label,
    unpack_label,
    validate_label,
)

pytestmark = pytest.mark.numerics  # float results against closed forms (tests/README.md)

ORIGIN = (0.0, 0.0, 0.0)
GOAE_C_FRONT = [1, 0, 0, 0, 0, -1, 0, 0, 0, 0, -1, 2.7, 0, 0, 0, 1, 4.2647, 0, 0.5, 0, 4.2647, 0.5, 0, 0, 1]


def _angle_grid() -> tuple[torch.Tensor, torch.Tensor]:
    yaws, pitches = torch.meshgrid(
        torch.linspace(-1.5, 1.5, 7, dtype=torch.float64),
        torch.linspace(-1.2, 1.2, 5, dtype=torch.float64),
        indexing="ij",
    )
    return yaws.reshape(-1), pitches.reshape(-1)


def _off_centre_label() -> torch.Tensor:
    """A look-at camera with skewed, off-centre intrinsics, to exercise the general formulas."""
    label = look_at_label(0.4, -0.2, pivot=FFHQ_PIVOT, dtype=torch.float64)
    label[0, 16:] = torch.tensor([4.0, 0.05, 0.45, 0.0, 4.3, 0.56, 0.0, 0.0, 1.0], dtype=torch.float64)
    return label


# ----------------------------------------------------------------------------- closed forms


def test_canonical_label_is_goae_c_front_exactly() -> None:
    label = canonical_camera_label(batch_size=3)
    assert label.shape == (3, 25) and label.dtype == torch.float32
    assert torch.equal(label, torch.tensor([GOAE_C_FRONT], dtype=torch.float32).expand(3, 25))


@pytest.mark.parametrize("pivot", [FFHQ_PIVOT, AFHQ_PIVOT, ORIGIN])
def test_canonical_label_equals_frontal_look_at(pivot: tuple[float, float, float]) -> None:
    canonical = canonical_camera_label(dtype=torch.float64)
    assert torch.allclose(look_at_label(0.0, 0.0, pivot=pivot, dtype=torch.float64), canonical, atol=1e-12)
    raw = cameras.look_at_cam2world_eg3d(math.pi / 2, math.pi / 2, pivot, dtype=torch.float64)
    assert torch.allclose(raw, unpack_label(canonical).cam2world, atol=1e-12)


def test_side_camera_closed_form() -> None:
    # yaw +pi/2: camera on +x looking back at the origin; right = -z, down = -y, forward = -x.
    expected = torch.tensor(
        [[0.0, 0.0, -1.0, 2.7], [0.0, -1.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]],
        dtype=torch.float64,
    )
    cam2world = look_at_cam2world(math.pi / 2, 0.0, pivot=ORIGIN, dtype=torch.float64)
    assert torch.allclose(cam2world[0], expected, atol=1e-12)


def test_look_at_geometry_matches_definition() -> None:
    yaw, pitch = _angle_grid()
    pivot = torch.tensor(FFHQ_PIVOT, dtype=torch.float64)
    cam2world = look_at_cam2world(yaw, pitch, pivot=FFHQ_PIVOT, dtype=torch.float64)
    centre = cam2world[:, :3, 3]
    # Height is linear in pitch (EG3D's arccos map), azimuth is yaw, radius is 2.7 about the ORIGIN.
    assert torch.allclose(centre.norm(dim=1), torch.full_like(yaw, CAMERA_RADIUS), atol=1e-12)
    assert torch.allclose(centre[:, 1], -CAMERA_RADIUS * 2 * pitch / math.pi, atol=1e-12)
    assert torch.allclose(torch.atan2(centre[:, 0], centre[:, 2]), yaw, atol=1e-12)
    forward = cam2world[:, :3, 2]
    assert torch.allclose(forward, torch.nn.functional.normalize(pivot - centre, dim=1), atol=1e-12)
    assert torch.allclose(cam2world[:, 1, 0], torch.zeros_like(yaw), atol=1e-12)  # right axis is horizontal
    assert (cam2world[:, 1, 1] < 0).all()  # camera "down" points towards world -y


def test_rotations_are_proper() -> None:
    yaw, pitch = _angle_grid()
    rotation = look_at_cam2world(yaw, pitch, dtype=torch.float64)[:, :3, :3]
    identity = torch.eye(3, dtype=torch.float64).expand_as(rotation)
    assert torch.allclose(rotation.transpose(1, 2) @ rotation, identity, atol=1e-12)
    assert torch.allclose(torch.linalg.det(rotation), torch.ones_like(yaw), atol=1e-12)


def test_sign_conventions_seen_in_the_image() -> None:
    head_centre_and_nose = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 0.0, 0.5]]])
    yawed = cameras.project_points(head_centre_and_nose, look_at_label(0.3, 0.0, pivot=ORIGIN), 512)
    pitched = cameras.project_points(head_centre_and_nose, look_at_label(0.0, 0.3, pivot=ORIGIN), 512)
    assert look_at_cam2world(0.3, 0.0)[0, 0, 3] > 0  # +yaw: camera towards +x
    assert look_at_cam2world(0.0, 0.3)[0, 1, 3] < 0  # +pitch: camera below the face
    assert yawed[0, 1, 0] < yawed[0, 0, 0] - 50  # +yaw: nose turns to image left
    assert pitched[0, 1, 1] < pitched[0, 0, 1] - 50  # +pitch: nose goes up in the image


def test_focal_and_fov() -> None:
    assert cameras.focal_to_fov(FOCAL_LENGTH) == pytest.approx(13.3738, abs=1e-3)
    assert FOCAL_LENGTH == pytest.approx(2985.29 / 700, abs=1e-4)
    assert cameras.fov_to_focal(cameras.focal_to_fov(FOCAL_LENGTH)) == pytest.approx(FOCAL_LENGTH, rel=1e-12)
    assert cameras.fov_to_focal(90.0) == pytest.approx(0.5, rel=1e-12)
    # EG3D's sqrt(2) quirk: its 18.837 deg "FOV" is the true 13.37 deg.
    assert cameras.eg3d_fov_to_focal(18.837) == pytest.approx(4.2634, abs=1e-3)
    assert cameras.fov_to_focal(18.837) == pytest.approx(3.02, abs=1e-2)
    with pytest.raises(ValueError, match="fov_degrees"):
        cameras.fov_to_focal(0.0)


def test_normalized_intrinsics_values() -> None:
    intrinsics = cameras.normalized_intrinsics(batch_size=2)
    expected = torch.tensor([[4.2647, 0, 0.5], [0, 4.2647, 0.5], [0, 0, 1]])
    assert torch.equal(intrinsics, expected.expand(2, 3, 3))


# ----------------------------------------------------------------------------- round trips


def test_pack_unpack_round_trip_and_layout() -> None:
    label = _off_centre_label()
    camera = unpack_label(label)
    assert camera.cam2world[0, 0, 3] == label[0, 3] and camera.intrinsics[0, 0, 2] == label[0, 18]
    assert torch.equal(camera.camera_centre, label[:, [3, 7, 11]])
    assert torch.equal(pack_label(camera.cam2world, camera.intrinsics), label)
    with pytest.raises(ValueError, match="batch"):
        pack_label(camera.cam2world, camera.intrinsics.expand(2, 3, 3))
    with pytest.raises(ValueError, match=r"\[N, 25\]"):
        unpack_label(label[0])


def test_yaw_pitch_recovered_over_grid() -> None:
    yaw, pitch = _angle_grid()
    for pivot in (FFHQ_PIVOT, AFHQ_PIVOT):
        for radius in (CAMERA_RADIUS, 1.3):
            cam2world = look_at_cam2world(yaw, pitch, radius=radius, pivot=pivot, dtype=torch.float64)
            angles = cameras.yaw_pitch_from_cam2world(cam2world)
            assert torch.allclose(angles.yaw, yaw, atol=1e-10)
            assert torch.allclose(angles.pitch, pitch, atol=1e-10)


def test_label_summary() -> None:
    yaw, pitch = _angle_grid()
    labels = look_at_label(yaw, pitch, radius=2.0, dtype=torch.float64)
    summary = cameras.camera_label_summary(labels)
    assert torch.allclose(summary.radius, torch.full_like(yaw, 2.0), atol=1e-12)
    assert torch.allclose(summary.yaw, yaw, atol=1e-10) and torch.allclose(summary.pitch, pitch, atol=1e-10)


def test_elevation_conversion() -> None:
    pitch = torch.linspace(-1.2, 1.2, 9, dtype=torch.float64)
    centre = look_at_cam2world(0.5, pitch, dtype=torch.float64)[:, :3, 3]
    geometric = torch.atan2(centre[:, 1], centre[:, [0, 2]].norm(dim=1))
    assert torch.allclose(cameras.pitch_to_elevation(pitch), geometric, atol=1e-12)
    assert torch.allclose(cameras.elevation_to_pitch(geometric), pitch, atol=1e-12)


def test_mirror_twice_is_identity_and_flips_principal_point() -> None:
    label = _off_centre_label()
    mirrored = mirror_label(label)
    assert torch.allclose(mirror_label(mirrored), label, atol=1e-15)
    assert mirrored[0, 18] == pytest.approx(1.0 - 0.45) and mirrored[0, 17] == pytest.approx(-0.05)
    negated = [1, 2, 3, 4, 8]  # EG3D's xflip entries
    kept = [i for i in range(16) if i not in negated]
    assert torch.equal(mirrored[0, negated], -label[0, negated])
    assert torch.equal(mirrored[0, kept], label[0, kept])


def test_mirrored_look_at_is_look_at_at_negated_yaw() -> None:
    yaw, pitch = _angle_grid()
    for pivot in (FFHQ_PIVOT, AFHQ_PIVOT):
        labels = look_at_label(yaw, pitch, pivot=pivot, dtype=torch.float64)
        expected = look_at_label(-yaw, pitch, pivot=pivot, dtype=torch.float64)
        assert torch.allclose(mirror_label(labels), expected, atol=1e-12)
        mirrored_rotation = unpack_label(mirror_label(labels)).rotation
        assert torch.allclose(torch.linalg.det(mirrored_rotation), torch.ones_like(yaw), atol=1e-12)


def test_mirrored_label_projects_mirrored_points_to_flipped_pixels() -> None:
    # The defining property: flipping the world in x and the image left-right commute with projection.
    size = 64
    label = _off_centre_label()
    points = torch.rand(1, 20, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64) - 0.5
    pixels = cameras.project_points(points, label, size)
    mirrored_points = points * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    mirrored_pixels = cameras.project_points(mirrored_points, mirror_label(label), size)
    assert torch.allclose(mirrored_pixels[..., 0], size - pixels[..., 0], atol=1e-9)
    assert torch.allclose(mirrored_pixels[..., 1], pixels[..., 1], atol=1e-9)


def test_normalize_camera_radius_keeps_direction_and_rotation() -> None:
    yaw, pitch = torch.tensor([0.2, -0.7]), torch.tensor([0.1, 0.3])
    label = look_at_label(yaw, pitch, radius=2.73, dtype=torch.float64)
    label[1, [3, 7, 11]] *= 0.5
    normalised = cameras.normalize_camera_radius(label)
    centre, new_centre = label[:, [3, 7, 11]], normalised[:, [3, 7, 11]]
    assert torch.allclose(new_centre.norm(dim=1), torch.full((2,), CAMERA_RADIUS, dtype=torch.float64))
    cosine = torch.nn.functional.cosine_similarity(centre, new_centre)
    assert torch.allclose(cosine, torch.ones(2, dtype=torch.float64), atol=1e-12)
    untouched = [i for i in range(25) if i not in (3, 7, 11)]
    assert torch.equal(normalised[:, untouched], label[:, untouched])
    at_origin = canonical_camera_label()
    at_origin[0, 11] = 0.0
    with pytest.raises(ValueError, match="origin"):
        cameras.normalize_camera_radius(at_origin)


# ----------------------------------------------------------------------------- validation


def test_valid_labels_pass() -> None:
    validate_label(GOAE_C_FRONT, "c_front")
    validate_label(cameras.sample_cameras(8, torch.Generator().manual_seed(0)), "samples")
    off_centre = look_at_label(0.3, 0.1)
    off_centre[0, 18] = 0.45
    validate_label(mirror_label(off_centre), "mirrored")


def _corrupted(entries: dict[int, float]) -> list[float]:
    label = list(GOAE_C_FRONT)
    for index, value in entries.items():
        label[index] = value
    return label


@pytest.mark.parametrize(
    ("label", "message"),
    [
        (GOAE_C_FRONT[:24], "25 numbers"),
        ([GOAE_C_FRONT + [0.0], GOAE_C_FRONT + [0.0]], "25 numbers"),
        ([GOAE_C_FRONT, GOAE_C_FRONT[:24]], "not a list of numbers"),
        ([[GOAE_C_FRONT]], "25 numbers"),
        (["a"] * 25, "not a list of numbers"),
        (_corrupted({7: float("nan")}), "entry 7 is nan"),
        (_corrupted({20: float("inf")}), "entry 20 is inf"),
        (_corrupted({0: 2.0}), "not orthonormal"),
        (_corrupted({0: -1.0}), "determinant"),
        (_corrupted({14: 0.5}), "bottom row"),
        (_corrupted({16: -4.2647, 20: -4.2647}), "positive"),
        (_corrupted({17: 0.3}), "no skew"),
        (_corrupted({23: 0.5}), "last row"),
        (_corrupted({16: 2183.5, 18: 256.0, 20: 2183.5, 21: 256.0}), "pixels"),
    ],
)
def test_validate_label_rejects(label: list, message: str) -> None:
    with pytest.raises(ValueError, match=message) as error:
        validate_label(label, "faces/00001.png")
    assert "faces/00001.png" in str(error.value)


def test_validate_label_names_the_bad_row() -> None:
    batch = cameras.sample_cameras(5000, torch.Generator().manual_seed(3))
    validate_label(batch, "dataset.json")
    batch[1234, 0] = 3.0
    batch[4321, 16] = 0.0
    with pytest.raises(ValueError, match=r"dataset\.json \(row 1234\).*orthonormal"):
        validate_label(batch, "dataset.json")


# ----------------------------------------------------------------------------- sampling


def test_sample_cameras_deterministic_per_seed() -> None:
    first = cameras.sample_cameras(16, torch.Generator().manual_seed(123))
    again = cameras.sample_cameras(16, torch.Generator().manual_seed(123))
    other = cameras.sample_cameras(16, torch.Generator().manual_seed(124))
    assert first.shape == (16, 25) and first.dtype == torch.float32
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)
    assert torch.equal(first[:, 16:], cameras.normalized_intrinsics(batch_size=16).reshape(16, 9))


@pytest.mark.parametrize("distribution", [cameras.FFHQ_LIKE_POSES, cameras.GOAE_UNIFORM_POSES])
def test_sampled_angles_respect_limits_and_spread(distribution: PoseDistribution) -> None:
    labels = cameras.sample_cameras(4000, torch.Generator().manual_seed(7), distribution, dtype=torch.float64)
    summary = cameras.camera_label_summary(labels)
    assert summary.yaw.abs().max() <= distribution.yaw_limit + 1e-9
    assert summary.pitch.abs().max() <= distribution.pitch_limit + 1e-9
    assert torch.allclose(summary.radius, torch.full_like(summary.radius, distribution.radius))
    if distribution.kind == "uniform":
        expected_yaw_std = distribution.yaw_limit / math.sqrt(3)
    else:  # std of N(0, 0.3) truncated at 3 sigma
        # var of N(0,1) truncated at +-a: 1 - 2 a pdf(a) / (2 cdf(a) - 1), here a = 0.9 / 0.3 = 3
        density_at_3, mass_within_3 = math.exp(-4.5) / math.sqrt(2 * math.pi), 1 - 2 * 0.0013499
        expected_yaw_std = 0.3 * math.sqrt(1 - 2 * 3 * density_at_3 / mass_within_3)
    assert summary.yaw.std().item() == pytest.approx(expected_yaw_std, rel=0.05)
    assert abs(summary.yaw.mean().item()) < 0.03
    correlation = torch.corrcoef(torch.stack([summary.yaw, summary.pitch]))[0, 1]
    assert abs(correlation.item()) < 0.1  # yaw and pitch are drawn independently


def test_zero_std_gives_the_mean_pose() -> None:
    distribution = PoseDistribution(yaw_mean=0.25, pitch_mean=-0.1, yaw_std=0.0, pitch_std=0.0)
    labels = cameras.sample_cameras(3, torch.Generator().manual_seed(0), distribution, dtype=torch.float64)
    assert torch.allclose(labels, look_at_label(0.25, -0.1, dtype=torch.float64).expand(3, 25), atol=1e-12)


def test_pose_distribution_rejects_bad_config_and_instantiates_from_hydra() -> None:
    with pytest.raises(ValueError, match="kind"):
        PoseDistribution(kind="gausian")
    with pytest.raises(ValueError, match="pivot"):
        PoseDistribution(pivot=(0.0, 0.2))
    with pytest.raises(ValueError, match="yaw_std"):
        PoseDistribution(yaw_std=-1.0)
    from hydra.utils import instantiate

    config = {"_target_": "cameras.PoseDistribution", "kind": "uniform", "pivot": [0, 0, -0.06]}
    distribution = instantiate(config)
    assert distribution.pivot == AFHQ_PIVOT and distribution.kind == "uniform"


# ----------------------------------------------------------------------------- rays and projection


def test_grid_rays_follow_eg3d_raster_order_and_closed_form() -> None:
    size = 4
    rays = cameras.pixel_grid_rays(canonical_camera_label(dtype=torch.float64), size)
    assert rays.directions.shape == (1, size * size, 3)
    assert torch.allclose(rays.origins, torch.tensor([0.0, 0.0, 2.7], dtype=torch.float64).expand(1, 16, 3))
    # Pixel (row 1, column 2) is ray 1*4+2; canonical camera: world dir = (x, -y, -1) normalised.
    u, v = (2 + 0.5) / size, (1 + 0.5) / size
    x, y = (u - 0.5) / FOCAL_LENGTH, (v - 0.5) / FOCAL_LENGTH
    expected = torch.nn.functional.normalize(torch.tensor([x, -y, -1.0], dtype=torch.float64), dim=0)
    assert torch.allclose(rays.directions[0, 1 * size + 2], expected, atol=1e-12)
    assert torch.allclose(rays.directions.norm(dim=-1), torch.ones(1, 16, dtype=torch.float64))


def test_points_on_pixel_rays_project_to_pixel_centres() -> None:
    size = 8
    look_at_labels = look_at_label(torch.tensor([0.5, -0.9]), 0.3, dtype=torch.float64)
    labels = torch.cat([look_at_labels, _off_centre_label()])
    rays = cameras.pixel_grid_rays(labels, size)
    distance = torch.linspace(2.25, 3.3, size * size, dtype=torch.float64).expand(3, -1)
    points = cameras.points_along_rays(rays, distance)
    # EG3D depth is the distance along the unit ray, not camera z
    assert torch.allclose((points - rays.origins).norm(dim=-1), distance, atol=1e-12)
    expected = cameras.pixel_centres(size, dtype=torch.float64).expand(3, -1, -1)
    assert torch.allclose(cameras.project_points(points, labels, size), expected, atol=1e-9)
    assert (cameras.world_to_camera(points, labels)[..., 2] > 0).all()


def test_arbitrary_pixels_round_trip_through_rays() -> None:
    size = 512
    label = _off_centre_label()
    pixels = torch.tensor([[[0.0, 0.0], [511.9, 3.2], [256.0, 256.0], [17.5, 400.25]]], dtype=torch.float64)
    rays = cameras.pixels_to_rays(pixels, label, size)
    points = cameras.points_along_rays(rays, torch.full((1, 4, 1), 2.7, dtype=torch.float64))
    assert torch.allclose(cameras.project_points(points, label, size), pixels, atol=1e-8)


def test_principal_point_ray_is_optical_axis() -> None:
    label = look_at_label(0.3, -0.2, dtype=torch.float64)
    rays = cameras.pixels_to_rays(torch.tensor([[[256.0, 256.0]]], dtype=torch.float64), label, 512)
    assert torch.allclose(rays.directions[0, 0], unpack_label(label).rotation[0, :, 2], atol=1e-12)


def test_float32_and_shape_errors() -> None:
    rays = cameras.pixel_grid_rays(canonical_camera_label(2), 4)
    assert rays.directions.dtype == torch.float32 and rays.directions.shape == (2, 16, 3)
    with pytest.raises(ValueError, match="points"):
        cameras.project_points(torch.zeros(2, 3), canonical_camera_label(2), 4)
    with pytest.raises(ValueError, match="image_size"):
        cameras.pixel_grid_rays(canonical_camera_label(), 0)
