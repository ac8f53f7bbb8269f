"""Mesh export: grid layout, marching cubes on a closed-form sphere, colours, PLY files, tiny generator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from inversion.mesh import (
    CLEARED_DENSITY,
    Mesh,
    MeshOptions,
    clear_border,
    color_vertices,
    density_grid,
    export_mesh,
    extract_surface,
    generator_density,
    query_density,
    read_ply,
    write_ply,
)
from networks.eg3d.configs import generator_from_config
from networks.eg3d.renderer import sample_from_planes

RADIUS = 0.3
LEVEL = 10.0


def sphere_density(points: torch.Tensor) -> torch.Tensor:
    """Linear in the radius, equal to LEVEL on the sphere of RADIUS, higher inside."""
    return LEVEL + 100.0 * (RADIUS - points.norm(dim=-1))


def position_color(points: torch.Tensor) -> torch.Tensor:
    return (points + 0.5).clamp(0, 1)


@pytest.mark.numerics
def test_grid_axes_are_world_x_y_z_and_chunking_does_not_change_values() -> None:
    def ramp(points: torch.Tensor) -> torch.Tensor:
        return points[:, 0] + 10 * points[:, 1] + 100 * points[:, 2]  # distinguishes every axis

    resolution, side = 5, 2.0
    grid = density_grid(ramp, side, resolution, points_per_chunk=10**6)
    chunked = density_grid(ramp, side, resolution, points_per_chunk=1)
    axis = np.linspace(-1.0, 1.0, resolution)
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    np.testing.assert_allclose(grid.values, x + 10 * y + 100 * z, atol=1e-4)
    np.testing.assert_array_equal(grid.values, chunked.values)
    assert grid.origin == -1.0 and grid.spacing == pytest.approx(0.5)


@pytest.mark.numerics
def test_sphere_vertices_lie_on_the_sphere_with_outward_faces_and_colours() -> None:
    grid = density_grid(sphere_density, box_side=1.0, resolution=32)
    mesh = color_vertices(extract_surface(grid, LEVEL), position_color)
    radii = np.linalg.norm(mesh.vertices, axis=1)
    assert len(mesh.faces) > 100
    assert np.abs(radii - RADIUS).max() < grid.spacing  # within a voxel
    # Counter-clockwise seen from outside: face normals point away from the centre.
    v0, v1, v2 = (mesh.vertices[mesh.faces[:, i]] for i in range(3))
    normals = np.cross(v1 - v0, v2 - v0)
    nondegenerate = np.linalg.norm(normals, axis=1) > 1e-9
    outward = np.einsum("ij,ij->i", normals, (v0 + v1 + v2) / 3)[nondegenerate]
    assert (outward > 0).all()
    expected = np.round(np.clip(mesh.vertices + 0.5, 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(mesh.vertex_colors, expected)


def test_off_centre_sphere_stays_where_it_is_in_world_coordinates() -> None:
    centre = torch.tensor([0.1, 0.2, -0.15])
    grid = density_grid(lambda p: sphere_density(p - centre), box_side=1.0, resolution=32)
    mesh = extract_surface(grid, LEVEL)
    np.testing.assert_allclose(mesh.vertices.mean(axis=0), centre.numpy(), atol=0.01)  # no axis flipped


def test_level_outside_the_density_range_is_a_clear_error() -> None:
    grid = density_grid(sphere_density, box_side=1.0, resolution=8)
    with pytest.raises(ValueError, match="no surface at density level 1000"):
        extract_surface(grid, 1000.0)


def test_clear_border_sets_the_authors_border_and_keeps_the_inside() -> None:
    grid = density_grid(sphere_density, box_side=1.0, resolution=32)
    cleared = clear_border(grid, 30 / 256)  # 4 voxels of 32
    assert (cleared.values[:4] == CLEARED_DENSITY).all()
    assert (cleared.values[:, :, -4:] == CLEARED_DENSITY).all()
    np.testing.assert_array_equal(cleared.values[4:-4, 4:-4, 4:-4], grid.values[4:-4, 4:-4, 4:-4])
    assert cleared.values[4, 4, 4] != CLEARED_DENSITY


def test_ply_round_trip_and_exact_binary_layout(tmp_path: Path) -> None:
    grid = density_grid(sphere_density, box_side=1.0, resolution=16)
    mesh = color_vertices(extract_surface(grid, LEVEL), position_color)
    path = tmp_path / "sub" / "sphere.ply"
    write_ply(path, mesh)
    data = path.read_bytes()
    header_end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:header_end].decode()
    for line in ("format binary_little_endian 1.0", f"element vertex {len(mesh.vertices)}",
                 "property uchar red", "property uchar blue", f"element face {len(mesh.faces)}",
                 "property list uchar int vertex_indices"):
        assert line in header
    # 3 floats + 3 bytes per vertex, 1 byte count + 3 ints per face.
    assert len(data) == header_end + 15 * len(mesh.vertices) + 13 * len(mesh.faces)
    loaded = read_ply(path)
    np.testing.assert_array_equal(loaded.vertices, mesh.vertices)
    np.testing.assert_array_equal(loaded.faces, mesh.faces)
    np.testing.assert_array_equal(loaded.vertex_colors, mesh.vertex_colors)


def test_uncoloured_mesh_writes_no_colour_columns(tmp_path: Path) -> None:
    mesh = Mesh(vertices=np.eye(3, dtype=np.float32), faces=np.array([[0, 1, 2]], dtype=np.int32))
    write_ply(tmp_path / "t.ply", mesh)
    assert b"red" not in (tmp_path / "t.ply").read_bytes().split(b"end_header")[0]
    loaded = read_ply(tmp_path / "t.ply")
    assert loaded.vertex_colors is None
    np.testing.assert_array_equal(loaded.faces, mesh.faces)


@pytest.mark.numerics
def test_tiny_generator_mesh_is_written_and_loads(tmp_path: Path) -> None:
    torch.manual_seed(0)
    G = generator_from_config("tiny", random_init=True)
    with torch.no_grad():
        ws = G.mapping(torch.randn(1, G.z_dim), torch.zeros(1, 25))
        planes = G.synthesize_planes(ws)
    # Random weights have no face, so extract at a level inside this field's density range.
    grid = density_grid(generator_density(G, planes), 1.0, 16)
    level = float(np.percentile(grid.values, 70))
    options = MeshOptions(resolution=16, level=level, border_fraction=0.0, points_per_chunk=1000)
    mesh = export_mesh(G, planes, tmp_path / "mesh.ply", options)
    # The error gives the field's density range, not the cleared border's -1000.
    with pytest.raises(ValueError, match="no surface") as error:
        export_mesh(G, planes, tmp_path / "none.ply", MeshOptions(resolution=16, level=1e6))
    assert "-1000" not in str(error.value) and not (tmp_path / "none.ply").exists()
    loaded = read_ply(tmp_path / "mesh.ply")
    assert len(loaded.vertices) == len(mesh.vertices) > 0 and len(loaded.faces) > 0
    assert loaded.vertex_colors is not None and loaded.vertex_colors.shape == loaded.vertices.shape
    assert np.abs(loaded.vertices).max() <= 0.5 + 1e-6  # inside the box of side box_warp = 1
    # Vertex colours = first 3 radiance features of the decoder at the vertices.
    sample = torch.from_numpy(loaded.vertices[:5])[None]
    with torch.no_grad():
        # The official lookup: grid_sample per plane, then the mean.
        mean_features = sample_from_planes(planes, sample, 1.0, G.renderer.plane_projection).mean(1)
        features, density = G.decoder(mean_features)
    expected = (features[0, :, :3].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    # <= 1: the renderer's fused lookup may round a colour the other way.
    assert np.abs(loaded.vertex_colors[:5].astype(int) - expected.astype(int)).max() <= 1
    queried = query_density(G, planes, sample)[0].numpy()
    np.testing.assert_allclose(queried, density[0, :, 0].numpy(), rtol=1e-4, atol=1e-4)


def test_generator_density_rejects_a_batch_of_planes() -> None:
    with pytest.raises(ValueError, match="one sample"):
        generator_density(None, torch.zeros(2, 3, 32, 8, 8))  # type: ignore[arg-type]
