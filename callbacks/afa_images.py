"""The stage-2 image grid: the stage-1 grid callback with the AFA's columns (rank 0 only).

Columns: input | w+ reconstruction (stage 1) | refined reconstruction (input view) | novel views of the
occlusion-aware mix at ``yaw_degrees`` | visibility mask of the XY plane (white = refined planes) |
front-view depth of the mix. Everything else (fixed validation batch, PNG under ``<run dir>/images``,
wandb / TensorBoard, the schedule) is ``InversionImageLogger``'s.

The stage must provide ``refinement_preview(batch, yaw_degrees, pitch_degrees) -> RefinementPreview``
(``lightning_modules.afa_stage``): it needs the batch's full-resolution image, which the stage-1 API
(``inversion_preview(images, cameras, ...)``) does not pass.
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass, replace
from typing import Any

import lightning as L
import torch

from callbacks.image_logging import InversionImageLogger, _depth_as_image, _resize


class AFAImageLogger(InversionImageLogger):
    """InversionImageLogger for stage 2: adds the w+ render and the visibility mask to the grid."""

    @property
    def column_names(self) -> list[str]:
        yaws = [f"mix yaw {yaw:+.0f}" for yaw in self.yaw_degrees]
        return ["input", "w+ (stage 1)", "refined (input view)", *yaws, "mask (xy)", "front depth"]

    @torch.no_grad()
    def render_columns(self, pl_module: L.LightningModule, batch: Any) -> list[torch.Tensor]:
        on_device = _batch_to(batch, pl_module.device)
        preview = pl_module.refinement_preview(on_device, self.yaw_degrees, self.pitch_degrees)
        size = on_device.image.shape[-1]
        mask = (preview.visibility_mask * 2 - 1).expand(-1, 3, -1, -1)  # [0, 1] -> grey in [-1, 1]
        columns = [
            on_device.image, preview.wplus_reconstruction, preview.refined_reconstruction, *preview.novel_views,
            mask, _depth_as_image(preview.front_depth),
        ]
        return [_resize(column.float(), size).clamp(-1, 1).cpu() for column in columns]


def _batch_to(batch: Any, device: torch.device) -> Any:
    """A typed batch (dataclass of tensors) moved to ``device``."""
    if not is_dataclass(batch):
        raise TypeError(f"AFAImageLogger expects a typed batch (dataclass), got {type(batch).__name__}")
    moved = {
        item.name: getattr(batch, item.name).to(device)
        for item in fields(batch) if isinstance(getattr(batch, item.name), torch.Tensor)
    }
    return replace(batch, **moved)


__all__ = ["AFAImageLogger"]
