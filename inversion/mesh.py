"""Mesh export of a tri-plane: density grid -> marching cubes -> vertex colours -> PLY.

Coordinates: vertices are written in EG3D WORLD coordinates (docs/cameras.md): y up, the face looks
towards +z, world +x is on the viewer's right for the frontal camera. That is already the frame
MeshLab, Blender's glTF/PLY importers with "Y up" and most viewers assume, so no axis is flipped:
the mesh opens upright, facing the viewer. (The authors flip axis 0 of their MRC grid only because
they index it [z, y, x]; our grid is indexed [x, y, z] with the world axes, so nothing to undo.)

The grid covers the cube of side ``box_warp`` centred at the origin (the region the tri-planes
describe), sampled on ``resolution`` points per axis including both faces of the cube. The level
is a threshold on the decoder's RAW density (before the renderer's softplus); EG3D/GOAE users
extract at 10. Like the authors, a border of the grid can be cleared (set far below the level): it
removes the floaters tri-planes produce at the edge of the box and closes the surface.

The two functions that touch the generator (``query_density`` / ``query_colors``) are isolated so
they are easy to adapt if the renderer's decoder interface changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from networks.eg3d.generator import TriPlaneGenerator

# Raw-density threshold EG3D and GOAE users pass to marching cubes.
DEFAULT_DENSITY_LEVEL = 10.0
# The authors clear 30 voxels of a 256 grid (60 of 512) on every side.
AUTHORS_BORDER_FRACTION = 30.0 / 256.0
# Value written into the cleared border: far below any useful level.
CLEARED_DENSITY = -1000.0

PointFunction = Callable[[torch.Tensor], torch.Tensor]
"""Maps world points [M, 3] to per-point values ([M] densities or [M, 3] colours in [0, 1])."""


@dataclass(frozen=True)
class MeshOptions:
    resolution: int = 256  # points per axis (the authors use 512; memory and time grow with its cube)
    level: float = DEFAULT_DENSITY_LEVEL
    border_fraction: float = AUTHORS_BORDER_FRACTION  # of the grid, cleared on every side; 0 keeps all
    # Bounds the memory of the density queries (rounded to whole x slabs of R^2 points, at least one);
    # does not change results.
    points_per_chunk: int = 2**18

    def __post_init__(self) -> None:
        if self.resolution < 2:
            raise ValueError(f"resolution must be at least 2, got {self.resolution}")
        if not 0.0 <= self.border_fraction < 0.5:
            raise ValueError(f"border_fraction must lie in [0, 0.5), got {self.border_fraction}")
        if self.points_per_chunk < 1:
            raise ValueError(f"points_per_chunk must be positive, got {self.points_per_chunk}")


@dataclass(frozen=True)
class DensityGrid:
    """values[i, j, k] is the density at (x_i, y_j, z_k) = origin + (i, j, k) * spacing."""

    values: np.ndarray  # [R, R, R] float32, axes = world x, y, z
    origin: float  # world coordinate of index 0 on every axis
    spacing: float  # world distance between neighbouring grid points

    def index_to_world(self, index_coordinates: np.ndarray) -> np.ndarray:
        return (self.origin + index_coordinates * self.spacing).astype(np.float32)


@dataclass(frozen=True)
class Mesh:
    vertices: np.ndarray  # [V, 3] float32, world coordinates
    faces: np.ndarray  # [F, 3] int32, counter-clockwise seen from outside (normals point out)
    vertex_colors: np.ndarray | None = None  # [V, 3] uint8 RGB, or None for an uncoloured mesh


# ----------------------------------------------------------------------------- generator adapters
def _radiance(
    G: TriPlaneGenerator, planes: torch.Tensor, points: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features [N, M, 32], raw density [N, M, 1]) at world points [N, M, 3]: the renderer's own lookup."""
    return G.renderer.radiance(planes, G.decoder, points, float(G.rendering_kwargs["box_warp"]))


def query_density(G: TriPlaneGenerator, planes: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Raw decoder density at world points: planes [N, 3, C, H, W], points [N, M, 3] -> [N, M]."""
    return _radiance(G, planes, points)[1][..., 0]


def query_colors(G: TriPlaneGenerator, planes: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] at world points: the first three radiance features, [N, M, 3].

    The renderer composites features f and outputs 2f - 1 in [-1, 1] as ``image_raw``, so f itself
    is the colour in [0, 1] (clamped: the decoder's sigmoid is widened by 0.001 on both ends).
    """
    return _radiance(G, planes, points)[0][..., :3].clamp(0.0, 1.0)


def generator_density(G: TriPlaneGenerator, planes: torch.Tensor) -> PointFunction:
    """The density field of ONE tri-plane ([1, 3, C, H, W]) as a function of world points [M, 3]."""
    _require_single_planes(planes)
    return lambda points: query_density(G, planes, points.to(planes)[None])[0]


def generator_colors(G: TriPlaneGenerator, planes: torch.Tensor) -> PointFunction:
    """The colour field of ONE tri-plane ([1, 3, C, H, W]) as a function of world points [M, 3]."""
    _require_single_planes(planes)
    return lambda points: query_colors(G, planes, points.to(planes)[None])[0]


def _require_single_planes(planes: torch.Tensor) -> None:
    if planes.ndim != 5 or planes.shape[0] != 1 or planes.shape[1] != 3:
        raise ValueError(f"expected the tri-planes of one sample, [1, 3, C, H, W]; got {list(planes.shape)}")


# ----------------------------------------------------------------------------- grid and surface
@torch.no_grad()
def density_grid(
    density_at: PointFunction, box_side: float, resolution: int, points_per_chunk: int = 2**18
) -> DensityGrid:
    """Evaluate ``density_at`` on a resolution^3 grid spanning [-box_side/2, box_side/2]^3, in chunks.

    Chunks are slabs of constant x so the full point list (3 floats per grid point) never exists.
    """
    axis = np.linspace(-box_side / 2, box_side / 2, resolution, dtype=np.float64)
    values = np.empty((resolution, resolution, resolution), dtype=np.float32)
    slab_points = resolution * resolution
    slabs_per_chunk = max(1, points_per_chunk // slab_points)
    y, z = np.meshgrid(axis, axis, indexing="ij")
    yz = torch.from_numpy(np.stack([y.ravel(), z.ravel()], axis=-1).astype(np.float32))  # [R*R, 2]
    for first in range(0, resolution, slabs_per_chunk):
        last = min(first + slabs_per_chunk, resolution)
        x = torch.from_numpy(axis[first:last].astype(np.float32))
        points = torch.cat(
            [x.repeat_interleave(slab_points)[:, None], yz.repeat(last - first, 1)], dim=1
        )  # [(last-first)*R*R, 3], x outermost: matches values[first:last].ravel()
        density = density_at(points).float().cpu().numpy()
        values[first:last] = density.reshape(last - first, resolution, resolution)
    return DensityGrid(values=values, origin=-box_side / 2, spacing=box_side / (resolution - 1))


def clear_border(grid: DensityGrid, border_fraction: float) -> DensityGrid:
    """A copy of ``grid`` with round(fraction * R) points on every side set to CLEARED_DENSITY."""
    width = int(round(border_fraction * grid.values.shape[0]))
    if width == 0:
        return grid
    values = np.full_like(grid.values, CLEARED_DENSITY)
    inner = slice(width, grid.values.shape[0] - width)
    values[inner, inner, inner] = grid.values[inner, inner, inner]
    return DensityGrid(values=values, origin=grid.origin, spacing=grid.spacing)


def require_surface(grid: DensityGrid, level: float) -> None:
    """Raise a clear error when ``level`` lies outside the grid's density range (no surface)."""
    low, high = float(grid.values.min()), float(grid.values.max())
    if not low < level < high:
        raise ValueError(
            f"no surface at density level {level}: the grid's density lies in [{low:.4g}, {high:.4g}]; "
            "choose a level inside that range"
        )


def extract_surface(grid: DensityGrid, level: float) -> Mesh:
    """Marching cubes (Lewiner) at ``level``; density above the level is inside, normals point out."""
    from skimage.measure import marching_cubes  # local import: scikit-image is only needed here

    require_surface(grid, level)
    # 'descent' = the object (high density) is inside. scikit-image then winds faces by the LEFT-hand
    # rule; swapping two corners makes them counter-clockwise seen from outside, as PLY viewers expect.
    vertices, faces, _, _ = marching_cubes(grid.values, level=level, gradient_direction="descent")
    outward_faces = np.ascontiguousarray(faces[:, [0, 2, 1]], dtype=np.int32)
    return Mesh(vertices=grid.index_to_world(vertices), faces=outward_faces)


@torch.no_grad()
def color_vertices(mesh: Mesh, color_at: PointFunction, points_per_chunk: int = 2**18) -> Mesh:
    """The mesh with vertex colours from ``color_at`` (RGB in [0, 1]) quantised to uint8."""
    vertices = torch.from_numpy(mesh.vertices)
    colors = [
        color_at(vertices[first : first + points_per_chunk]).float().cpu()
        for first in range(0, vertices.shape[0], points_per_chunk)
    ]
    rgb = torch.cat(colors).clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8).numpy()
    return Mesh(vertices=mesh.vertices, faces=mesh.faces, vertex_colors=rgb)


def tri_plane_mesh(G: TriPlaneGenerator, planes: torch.Tensor, options: MeshOptions = MeshOptions()) -> Mesh:
    """Coloured mesh of one tri-plane ([1, 3, C, H, W], e.g. GOAE's mixed tri-plane)."""
    box_side = float(G.rendering_kwargs["box_warp"])
    grid = density_grid(generator_density(G, planes), box_side, options.resolution, options.points_per_chunk)
    require_surface(grid, options.level)  # before clearing: report the field's range, not -1000
    surface = extract_surface(clear_border(grid, options.border_fraction), options.level)
    return color_vertices(surface, generator_colors(G, planes), options.points_per_chunk)


def export_mesh(
    G: TriPlaneGenerator, planes: torch.Tensor, path: str | Path, options: MeshOptions = MeshOptions()
) -> Mesh:
    """tri_plane_mesh, written to ``path`` as a binary PLY; returns the mesh."""
    mesh = tri_plane_mesh(G, planes, options)
    write_ply(path, mesh)
    return mesh


# ----------------------------------------------------------------------------- PLY
_PLY_TYPES = {"float": "<f4", "float32": "<f4", "double": "<f8", "uchar": "u1", "uint8": "u1",
              "int": "<i4", "int32": "<i4", "uint": "<u4", "uint32": "<u4", "short": "<i2", "ushort": "<u2"}


def write_ply(path: str | Path, mesh: Mesh) -> None:
    """Binary little-endian PLY: float x, y, z (+ uchar red, green, blue) per vertex, int triangles."""
    _check_mesh(mesh)
    vertex_fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if mesh.vertex_colors is not None:
        vertex_fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    vertex_data = np.empty(len(mesh.vertices), dtype=vertex_fields)
    for axis, name in enumerate("xyz"):
        vertex_data[name] = mesh.vertices[:, axis]
    if mesh.vertex_colors is not None:
        for channel, name in enumerate(("red", "green", "blue")):
            vertex_data[name] = mesh.vertex_colors[:, channel]
    face_data = np.empty(len(mesh.faces), dtype=[("count", "u1"), ("indices", "<i4", (3,))])
    face_data["count"] = 3
    face_data["indices"] = mesh.faces
    header_lines = ["ply", "format binary_little_endian 1.0", "comment goae-framework mesh, world frame y up",
                    f"element vertex {len(vertex_data)}"]
    ply_type = {"<f4": "float", "u1": "uchar"}
    header_lines += [f"property {ply_type[dtype]} {name}" for name, dtype in vertex_fields]
    header_lines += [f"element face {len(face_data)}", "property list uchar int vertex_indices", "end_header"]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(("\n".join(header_lines) + "\n").encode("ascii"))
        handle.write(vertex_data.tobytes())
        handle.write(face_data.tobytes())


def read_ply(path: str | Path) -> Mesh:
    """Read a binary little-endian triangle PLY (what ``write_ply`` writes, and similar files)."""
    data = Path(path).read_bytes()
    end = data.find(b"end_header\n")
    if not data.startswith(b"ply") or end < 0:
        raise ValueError(f"{path}: not a PLY file")
    header = data[:end].decode("ascii").splitlines()
    if "format binary_little_endian 1.0" not in header:
        raise ValueError(f"{path}: only binary little-endian PLY files are supported")
    vertex_fields, counts, face_list_types = [], {}, None
    element = None
    for line in header:
        words = line.split()
        if words[:1] == ["element"]:
            element = words[1]
            counts[element] = int(words[2])
        elif words[:2] == ["property", "list"] and element == "face":
            face_list_types = (_PLY_TYPES[words[2]], _PLY_TYPES[words[3]])
        elif words[:1] == ["property"] and element == "vertex":
            vertex_fields.append((words[2], _PLY_TYPES[words[1]]))
    if face_list_types is None:
        raise ValueError(f"{path}: no face list property")
    offset = end + len(b"end_header\n")
    vertex_data = np.frombuffer(data, dtype=vertex_fields, count=counts["vertex"], offset=offset)
    offset += vertex_data.nbytes
    face_dtype = [("count", face_list_types[0]), ("indices", face_list_types[1], (3,))]
    face_data = np.frombuffer(data, dtype=face_dtype, count=counts.get("face", 0), offset=offset)
    if np.any(face_data["count"] != 3):
        raise ValueError(f"{path}: only triangle faces are supported")
    names = {name for name, _ in vertex_fields}
    colors = (
        np.stack([vertex_data[c] for c in ("red", "green", "blue")], axis=1).astype(np.uint8)
        if {"red", "green", "blue"} <= names else None
    )
    vertices = np.stack([vertex_data[c] for c in "xyz"], axis=1).astype(np.float32)
    return Mesh(vertices=vertices, faces=face_data["indices"].astype(np.int32), vertex_colors=colors)


def _check_mesh(mesh: Mesh) -> None:
    if mesh.vertices.ndim != 2 or mesh.vertices.shape[1] != 3:
        raise ValueError(f"vertices must be [V, 3], got {list(mesh.vertices.shape)}")
    if mesh.faces.ndim != 2 or mesh.faces.shape[1] != 3:
        raise ValueError(f"faces must be [F, 3] triangles, got {list(mesh.faces.shape)}")
    if mesh.vertex_colors is not None and mesh.vertex_colors.shape != mesh.vertices.shape:
        raise ValueError(
            f"vertex_colors must be [V, 3] like the vertices, got {list(mesh.vertex_colors.shape)}"
        )
