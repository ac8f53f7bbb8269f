"""Image grid of a fixed validation batch during training (rank 0 only).

Rows = the first ``num_samples`` samples of the validation split (the same on every run and rank);
columns = input | reconstruction at the input camera | novel views at ``yaw_degrees`` | front-view
depth. Written every ``every_n_steps`` training steps and at the end of training:

* always as ``<run dir>/images/step_<step>.png``;
* to wandb (``log_image`` + a table with one row per sample) and TensorBoard (``add_image``) when
  those loggers are configured.

The stage must provide ``inversion_preview(images, cameras, yaw_degrees) -> InversionPreview``
(see ``lightning_modules.encoder_stage``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from PIL import Image

from runtime.pylogger import RankedLogger

log = RankedLogger(__name__)

GRID_KEY = "images/inversion_grid"
TABLE_KEY = "images/inversion_table"


class InversionImageLogger(Callback):
    """Logs the inversion grid of a fixed validation batch every ``every_n_steps`` steps (rank 0)."""

    def __init__(
        self,
        every_n_steps: int = 1000,
        num_samples: int = 4,
        yaw_degrees: Sequence[float] = (-30.0, 0.0, 30.0),
        pitch_degrees: float = 0.0,
        directory: str = "images",
    ) -> None:
        if every_n_steps < 1 or num_samples < 1:
            raise ValueError("InversionImageLogger needs every_n_steps >= 1 and num_samples >= 1")
        self.every_n_steps = int(every_n_steps)
        self.num_samples = int(num_samples)
        self.yaw_degrees = [float(yaw) for yaw in yaw_degrees]
        self.pitch_degrees = float(pitch_degrees)
        self.directory = directory
        self.last_path: Path | None = None
        self._fixed_batch: Any = None
        self._last_logged_step = -1

    @property
    def column_names(self) -> list[str]:
        return ["input", "reconstruction"] + [f"yaw {yaw:+.0f}" for yaw in self.yaw_degrees] + ["front depth"]

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            self.log_grid(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.log_grid(trainer, pl_module)
        if self.last_path is not None:
            log.info(f"Inversion image grid (input | reconstruction | yaws {self.yaw_degrees} | depth): "
                     f"{self.last_path}")

    @rank_zero_only
    def log_grid(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = trainer.global_step
        if step == self._last_logged_step or not hasattr(pl_module, "inversion_preview"):
            return
        batch = self.fixed_batch(trainer)
        if batch is None:
            return
        self._last_logged_step = step
        was_training = pl_module.training
        pl_module.eval()
        try:
            columns = self.render_columns(pl_module, batch)
        finally:
            pl_module.train(was_training)
        grid = torch.cat([torch.cat(list(column), dim=1) for column in columns], dim=2)  # [3, N*h, C*h]
        self.last_path = self._save_png(grid, Path(trainer.default_root_dir) / self.directory / f"step_{step:07d}.png")
        self._send_to_loggers(trainer, grid, columns, step)

    def fixed_batch(self, trainer: L.Trainer) -> Any:
        """The first samples of the validation split (train split if there is none), collated once."""
        if self._fixed_batch is None:
            datasets = getattr(trainer.datamodule, "datasets", {}) if trainer.datamodule is not None else {}
            dataset = datasets.get("val") or datasets.get("train")
            if dataset is None:
                return None
            from datamodules import collate_samples

            count = min(self.num_samples, len(dataset))
            self._fixed_batch = collate_samples([dataset[index] for index in range(count)])
        return self._fixed_batch

    @torch.no_grad()
    def render_columns(self, pl_module: L.LightningModule, batch: Any) -> list[torch.Tensor]:
        """Columns of the grid, each [N, 3, h, h] in [-1, 1] at the input image's resolution."""
        images = batch.image.to(pl_module.device)
        preview = pl_module.inversion_preview(images, batch.camera.to(pl_module.device), self.yaw_degrees,
                                              self.pitch_degrees)
        size = images.shape[-1]
        columns = [images, preview.reconstruction, *preview.novel_views, _depth_as_image(preview.front_depth)]
        return [_resize(column.float(), size).clamp(-1, 1).cpu() for column in columns]

    @staticmethod
    def _save_png(grid: torch.Tensor, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_to_uint8(grid)).save(path)
        return path

    def _send_to_loggers(self, trainer: L.Trainer, grid: torch.Tensor, columns: list[torch.Tensor], step: int) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key=GRID_KEY, images=[_to_uint8(grid)], step=step,
                                 caption=[" | ".join(self.column_names)])
                import wandb

                rows = [[wandb.Image(_to_uint8(column[row])) for column in columns] for row in range(len(columns[0]))]
                logger.log_table(key=TABLE_KEY, columns=self.column_names, data=rows, step=step)
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(GRID_KEY, (grid + 1) / 2, global_step=step)


def _depth_as_image(depth: torch.Tensor) -> torch.Tensor:
    """[N, 1, R, R] depth -> [N, 3, R, R] grey in [-1, 1], near = bright, normalised per image."""
    flat = depth.flatten(1)
    low, high = flat.min(dim=1).values[:, None, None, None], flat.max(dim=1).values[:, None, None, None]
    normalised = (high - depth) / (high - low).clamp_min(1e-8)
    return (normalised * 2 - 1).expand(-1, 3, -1, -1)


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size:
        return images
    if images.shape[-1] > size:
        return F.adaptive_avg_pool2d(images, (size, size))
    return F.interpolate(images, size=(size, size), mode="nearest")


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    """[3, H, W] in [-1, 1] -> HxWx3 uint8."""
    pixels = (image.permute(1, 2, 0) * 127.5 + 128.0).clamp(0, 255).to(torch.uint8).numpy()
    return np.ascontiguousarray(pixels)
