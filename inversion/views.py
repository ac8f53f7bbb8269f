"""Rendering one inverted face from several cameras, and multi-view image grids.

A *view renderer* is any function camera labels [V, 25] -> images [V, 3, H, W] in [-1, 1]; the grid
and the video only need that, so they work for w+-only tri-planes, GOAE's mixed tri-planes and
edited ones alike. ``planes_view_renderer`` builds one from a generator and fixed tri-planes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from cameras import CAMERA_RADIUS, FFHQ_PIVOT, FOCAL_LENGTH, look_at_label
from networks.eg3d.generator import TriPlaneGenerator
from networks.eg3d.outputs import RendererDraws

ViewRenderer = Callable[[torch.Tensor], torch.Tensor]

# The authors' multi-view output: yaw +12.5, 0, -12.5 degrees (pi * 25 / 360), pitch 0.
AUTHORS_YAWS_DEGREES: tuple[float, ...] = (12.5, 0.0, -12.5)


@dataclass(frozen=True)
class MultiViewSpec:
    """Cameras of a grid: one row per pitch, one column per yaw (our yaw/pitch, docs/cameras.md)."""

    yaws_degrees: Sequence[float] = AUTHORS_YAWS_DEGREES
    pitches_degrees: Sequence[float] = (0.0,)
    radius: float = CAMERA_RADIUS
    pivot: tuple[float, float, float] = field(default=FFHQ_PIVOT)
    focal: float = FOCAL_LENGTH

    def __post_init__(self) -> None:
        if len(self.yaws_degrees) == 0 or len(self.pitches_degrees) == 0:
            raise ValueError("a multi-view grid needs at least one yaw and one pitch")

    @property
    def columns(self) -> int:
        return len(self.yaws_degrees)


def view_labels(spec: MultiViewSpec) -> torch.Tensor:
    """[rows * columns, 25] look-at labels in row-major order (pitch outer, yaw inner)."""
    yaws = torch.tensor([math.radians(y) for y in spec.yaws_degrees], dtype=torch.float32)
    pitches = torch.tensor([math.radians(p) for p in spec.pitches_degrees], dtype=torch.float32)
    pitch_grid, yaw_grid = torch.meshgrid(pitches, yaws, indexing="ij")
    return look_at_label(yaw_grid.reshape(-1), pitch_grid.reshape(-1), spec.radius, spec.pivot, spec.focal)


def planes_view_renderer(
    G: TriPlaneGenerator, planes: torch.Tensor, ws: torch.Tensor, views_per_batch: int = 8, seed: int = 0
) -> ViewRenderer:
    """Render ONE sample's tri-planes [1, 3, C, H, W] with its ws [1, num_ws, w_dim] at any cameras.

    The renderer's random draws (stratified jitter, importance uniforms) are drawn once from ``seed``
    and shared by every view: no frame-to-frame flicker in videos, and a camera gives the same image
    whatever batch it is rendered in.
    """
    if planes.shape[0] != 1 or ws.shape[0] != 1:
        raise ValueError(f"expected one sample, got planes {list(planes.shape)} and ws {list(ws.shape)}")

    rng = torch.Generator(device=planes.device).manual_seed(seed)
    single = G.sample_draws(1, generator=rng, device=planes.device)

    @torch.no_grad()
    def render(labels: torch.Tensor) -> torch.Tensor:
        images = []
        for first in range(0, labels.shape[0], views_per_batch):
            batch = labels[first : first + views_per_batch].to(planes.device, planes.dtype)
            n = batch.shape[0]
            draws = RendererDraws(
                stratified=single.stratified.expand(n, -1, -1, -1), importance=single.importance.repeat(n, 1)
            )
            out = G.render_planes(planes.expand(n, -1, -1, -1, -1), ws.expand(n, -1, -1), batch, draws)
            images.append(out.image)
        return torch.cat(images)

    return render


def to_uint8_images(images: torch.Tensor) -> np.ndarray:
    """[N, 3, H, W] in [-1, 1] -> [N, H, W, 3] uint8 (the usual (x + 1) * 127.5 mapping, clamped)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images [N, 3, H, W], got {list(images.shape)}")
    scaled = ((images.detach().float().cpu() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return scaled.permute(0, 2, 3, 1).numpy()


def image_grid(images: torch.Tensor, columns: int) -> Image.Image:
    """Tile [N, 3, H, W] images in [-1, 1] row-major into a (columns*W) x (rows*H) RGB image."""
    pixels = to_uint8_images(images)
    n, height, width, _ = pixels.shape
    if columns < 1 or n % columns != 0:
        raise ValueError(f"{n} images do not fill whole rows of {columns} columns")
    rows = n // columns
    cells = pixels.reshape(rows, columns, height, width, 3).transpose(0, 2, 1, 3, 4)  # rows, H, columns, W
    tiled = cells.reshape(rows * height, columns * width, 3)
    return Image.fromarray(np.ascontiguousarray(tiled))  # uint8 [H, W, 3] -> RGB


def multi_view_grid(render_view: ViewRenderer, spec: MultiViewSpec = MultiViewSpec()) -> Image.Image:
    """Render every camera of ``spec`` and tile the images (rows = pitches, columns = yaws)."""
    return image_grid(render_view(view_labels(spec)), spec.columns)
