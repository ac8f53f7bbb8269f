"""Orbit path, mp4 / GIF writing, view renderers and multi-view grids."""

from __future__ import annotations

import math
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from PIL import Image

from cameras import look_at_label, unpack_label
from inversion.video import OrbitPath, orbit_camera_labels, write_orbit_video, write_video
from inversion.views import MultiViewSpec, image_grid, multi_view_grid, planes_view_renderer, view_labels
from networks.eg3d.configs import generator_from_config
from tolerances import TINY_IMAGE_ROUNDINGS, assert_close_roundoff


def distinct_frames(count: int, size: int = 32) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(count)]


@pytest.fixture(scope="module")
def tiny_scene() -> tuple:
    torch.manual_seed(0)
    G = generator_from_config("tiny", random_init=True)
    with torch.no_grad():
        ws = G.mapping(torch.randn(1, G.z_dim), torch.zeros(1, 25))
        planes = G.synthesize_planes(ws)
    return G, planes, ws


def test_orbit_follows_the_authors_path_and_looks_at_the_origin() -> None:
    labels = orbit_camera_labels(OrbitPath(num_frames=8))
    assert labels.shape == (8, 25)
    # t = 0: yaw 0, pitch -0.05 + 0.25; t = 1/4: yaw 0.35, pitch -0.05.
    torch.testing.assert_close(labels[0:1], look_at_label(0.0, 0.2, pivot=(0, 0, 0)))
    torch.testing.assert_close(labels[2:3], look_at_label(0.35, -0.05, pivot=(0, 0, 0)), atol=1e-6, rtol=0)
    cam2world = unpack_label(labels).cam2world
    forward, centre = cam2world[:, :3, 2], cam2world[:, :3, 3]
    torch.testing.assert_close(forward, -centre / centre.norm(dim=1, keepdim=True), atol=1e-5, rtol=0)
    torch.testing.assert_close(centre.norm(dim=1), torch.full((8,), 2.7), atol=1e-5, rtol=0)
    # The loop closes: frame F would be frame 0 again, so the last frame is NOT frame 0.
    assert not torch.allclose(labels[-1], labels[0])


def test_mp4_has_the_requested_frame_count(tmp_path: Path) -> None:
    written = write_video(distinct_frames(12), tmp_path / "v.mp4", fps=30)
    assert written.container == "mp4" and written.num_frames == 12 and written.path == tmp_path / "v.mp4"
    reader = imageio.get_reader(written.path)
    assert reader.count_frames() == 12
    assert reader.get_data(0).shape == (32, 32, 3)


def test_gif_fallback_when_ffmpeg_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import imageio_ffmpeg

    def no_ffmpeg() -> str:
        raise RuntimeError("No ffmpeg exe could be found")  # what imageio-ffmpeg raises without a binary

    monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", no_ffmpeg)
    written = write_video(distinct_frames(7), tmp_path / "v.mp4", fps=60)
    assert written.container == "gif" and written.path == tmp_path / "v.gif"
    assert not (tmp_path / "v.mp4").exists()
    with Image.open(written.path) as gif:
        assert gif.n_frames == 7 and gif.size == (32, 32)
        assert gif.info["duration"] == 20  # 60 fps is below what GIF players honour


def test_orbit_video_of_the_tiny_generator(tmp_path: Path, tiny_scene: tuple) -> None:
    G, planes, ws = tiny_scene
    render_view = planes_view_renderer(G, planes, ws, views_per_batch=2)
    orbit = OrbitPath(num_frames=5)
    written = write_orbit_video(render_view, tmp_path / "orbit.mp4", orbit, fps=10, frames_per_batch=3)
    reader = imageio.get_reader(written.path)
    assert reader.count_frames() == 5
    assert reader.get_data(0).shape == (G.img_resolution, G.img_resolution, 3)


@pytest.mark.numerics
def test_view_renderer_is_deterministic_and_batch_independent(tiny_scene: tuple) -> None:
    G, planes, ws = tiny_scene
    labels = view_labels(MultiViewSpec(yaws_degrees=(-20.0, 0.0, 20.0)))
    together = planes_view_renderer(G, planes, ws, views_per_batch=3)(labels)
    assert together.shape == (3, 3, G.img_resolution, G.img_resolution)
    assert torch.equal(planes_view_renderer(G, planes, ws, views_per_batch=3)(labels), together)
    one_by_one = planes_view_renderer(G, planes, ws, views_per_batch=1)(labels)
    # rule 2: other batch sizes run the decoder and super-resolution on other shapes (other kernels)
    assert_close_roundoff(one_by_one, together, TINY_IMAGE_ROUNDINGS)
    assert not torch.allclose(together[0], together[2])  # different cameras, different images


def test_view_labels_are_row_major_pitch_then_yaw() -> None:
    spec = MultiViewSpec(yaws_degrees=(-10.0, 10.0), pitches_degrees=(0.0, 15.0, 30.0))
    labels = view_labels(spec)
    assert labels.shape == (6, 25)
    torch.testing.assert_close(labels[3:4], look_at_label(math.radians(10.0), math.radians(15.0)))


def test_multi_view_grid_places_each_view_in_its_cell() -> None:
    spec = MultiViewSpec(yaws_degrees=(-20.0, 0.0, 20.0), pitches_degrees=(-10.0, 10.0))

    def camera_position_as_colour(labels: torch.Tensor) -> torch.Tensor:
        centre = unpack_label(labels).camera_centre  # [V, 3]; x grows with yaw, y falls with pitch
        values = torch.stack([centre[:, 0], -centre[:, 1], torch.zeros(len(labels))], dim=1).clamp(-1, 1)
        return values[:, :, None, None].expand(-1, -1, 8, 6)  # H 8, W 6

    grid = np.asarray(multi_view_grid(camera_position_as_colour, spec))
    assert grid.shape == (2 * 8, 3 * 6, 3)
    cells = grid[::8, ::6]  # [rows, columns, 3], one pixel per cell
    assert (np.diff(cells[:, :, 0].astype(int), axis=1) > 0).all()  # yaw increases left to right
    assert (np.diff(cells[:, :, 1].astype(int), axis=0) > 0).all()  # pitch increases top to bottom


def test_image_grid_pixel_size_and_value_mapping() -> None:
    images = torch.stack([torch.full((3, 4, 5), v) for v in (-1.0, 0.0, 1.0, 0.5)])
    grid = image_grid(images, columns=2)
    assert grid.size == (10, 8) and grid.mode == "RGB"
    pixels = np.asarray(grid)
    assert [pixels[0, 0, 0], pixels[0, 5, 0], pixels[4, 0, 0], pixels[4, 5, 0]] == [0, 128, 255, 191]
    with pytest.raises(ValueError, match="whole rows"):
        image_grid(images, columns=3)
