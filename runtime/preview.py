"""The built-in generator smoke job (`stage=preview`): a grid of samples seen from several yaws."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cameras import FFHQ_PIVOT, canonical_camera_label, look_at_label
from runtime.pylogger import RankedLogger

log = RankedLogger(__name__)

GRID_FILENAME = "preview_grid.png"


class GeneratorPreviewJob:
    """Render `num_samples` random identities (rows) at each yaw in `yaw_degrees` (columns).

    Latents are conditioned on the canonical front camera; each row uses one w for all its views,
    so the grid shows 3D consistency. Cameras look at `pivot` (default: the generator's
    avg_camera_pivot) from radius 2.7. The grid has no padding: it is exactly
    (num_samples * img_resolution) x (len(yaw_degrees) * img_resolution) pixels.
    """

    def __init__(
        self,
        generator: torch.nn.Module,
        num_samples: int = 4,
        yaw_degrees: Sequence[float] = (-30.0, 0.0, 30.0),
        pitch_degrees: float = 0.0,
        truncation_psi: float = 0.7,
        truncation_cutoff: int = 14,
        pivot: Sequence[float] | None = None,
        seed: int = 0,
        device: str = "auto",
    ):
        if num_samples < 1 or len(yaw_degrees) < 1:
            raise ValueError("preview needs num_samples >= 1 and at least one yaw in yaw_degrees")
        self.generator = generator
        self.num_samples = int(num_samples)
        self.yaw_degrees = [float(yaw) for yaw in yaw_degrees]
        self.pitch_degrees = float(pitch_degrees)
        self.truncation_psi = float(truncation_psi)
        self.truncation_cutoff = int(truncation_cutoff)
        self.pivot = None if pivot is None else [float(coordinate) for coordinate in pivot]
        self.seed = int(seed)
        self.device = torch.device(_pick_device(device))

    @torch.no_grad()
    def render_grid(self) -> torch.Tensor:
        """The grid as a float tensor [3, rows*H, cols*W] in [-1, 1] (roughly; not clamped)."""
        generator = self.generator.to(self.device).eval()
        # Own RNG so the identities depend only on `seed`, not on what ran before.
        rng = torch.Generator(device="cpu").manual_seed(self.seed)
        z = torch.randn(self.num_samples, generator.z_dim, generator=rng).to(self.device)
        conditioning = canonical_camera_label(self.num_samples, device=self.device)
        ws = generator.mapping(
            z, conditioning, truncation_psi=self.truncation_psi, truncation_cutoff=self.truncation_cutoff
        )
        planes = generator.synthesize_planes(ws, noise_mode="const")
        pivot = self.pivot or _generator_pivot(generator)
        columns = []
        for yaw in self.yaw_degrees:
            camera = look_at_label(
                math.radians(yaw), math.radians(self.pitch_degrees), pivot=pivot, device=self.device
            ).expand(self.num_samples, -1)
            columns.append(generator.render_planes(planes, ws, camera).image)  # [N, 3, H, W]
        # rows = samples, columns = yaws: concatenate views along width, then samples along height
        rows = torch.cat(columns, dim=3)  # [N, 3, H, cols*W]
        return torch.cat(list(rows), dim=1).float().cpu()  # [3, N*H, cols*W]

    def run(self, output_dir: Path) -> Path:
        """Render the grid and save it as <output_dir>/preview_grid.png; returns that path."""
        grid = self.render_grid()
        path = Path(output_dir) / GRID_FILENAME
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid, path)
        log.info(
            f"Preview grid ({self.num_samples} samples x yaws {self.yaw_degrees} deg, "
            f"psi={self.truncation_psi}) saved to {path}"
        )
        return path


def save_image(image: torch.Tensor, path: Path) -> None:
    """Save a [3, H, W] tensor in [-1, 1] as an 8-bit PNG."""
    pixels = (image.permute(1, 2, 0) * 127.5 + 128.0).clamp(0, 255).to(torch.uint8).numpy()
    Image.fromarray(np.ascontiguousarray(pixels)).save(path)


def _generator_pivot(generator: torch.nn.Module) -> list[float]:
    """Where the generator's cameras look (EG3D's rendering_kwargs avg_camera_pivot), else FFHQ's."""
    rendering_kwargs = getattr(generator, "rendering_kwargs", None) or {}
    return [float(coordinate) for coordinate in rendering_kwargs.get("avg_camera_pivot", FFHQ_PIVOT)]


def _pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
