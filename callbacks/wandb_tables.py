"""Per-sample wandb table of a validation run: input, reconstruction, novel views, depth and scores.

Built from rank 0's first samples and logged only when a WandbLogger is configured (``WandbLogger.log_table``
is itself rank-zero-only). Scores are the metrics' ``per_image`` values (FID has none: it is a set metric).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from lightning.pytorch.loggers import Logger, WandbLogger

from metrics import GeometryPerImage, MetricSuite
from metrics.identity import IdentityPerImage


@dataclass
class SampleRecord:
    """One table row; images are [3, h, w] in [-1, 1] on the CPU, depth [1, R, R]."""

    identifier: str
    input: torch.Tensor
    reconstruction: torch.Tensor
    novel_views: list[torch.Tensor]
    depth: torch.Tensor
    scores: dict[str, float] = field(default_factory=dict)


def per_image_scores(
    suite: MetricSuite,
    prediction: torch.Tensor,
    target: torch.Tensor,
    predicted_depth: torch.Tensor | None = None,
    reference_depth: torch.Tensor | None = None,
    depth_mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Metric name -> [N] scores (NaN where a pair failed). Local: no collective, safe on rank 0 alone."""
    scores: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, metric in suite.image_metrics.items():
            if not hasattr(metric, "per_image"):
                continue  # FID
            value = metric.per_image(prediction, target)
            scores[name] = value.similarity if isinstance(value, IdentityPerImage) else value
        if predicted_depth is not None and reference_depth is not None:
            for name, metric in suite.depth_metrics.items():
                geometry: GeometryPerImage = metric.per_image(predicted_depth, reference_depth, depth_mask)
                scores[name] = geometry.error
    return {name: value.detach().float().cpu() for name, value in scores.items()}


def depth_as_image(depth: torch.Tensor) -> torch.Tensor:
    """[N, 1, R, R] depth -> [N, 3, R, R] grey in [-1, 1], near = bright, normalised per image."""
    flat = depth.flatten(1)
    low, high = flat.min(dim=1).values[:, None, None, None], flat.max(dim=1).values[:, None, None, None]
    return ((high - depth) / (high - low).clamp_min(1e-8) * 2 - 1).expand(-1, 3, -1, -1)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """[3, H, W] in [-1, 1] -> H x W x 3 uint8."""
    pixels = (image.float().permute(1, 2, 0) * 127.5 + 128.0).clamp(0, 255).to(torch.uint8).cpu().numpy()
    return np.ascontiguousarray(pixels)


def table_columns(novel_view_names: Sequence[str], score_names: Sequence[str]) -> list[str]:
    return ["identifier", "input", "reconstruction", *novel_view_names, "depth", *score_names]


def table_rows(records: Sequence[SampleRecord], score_names: Sequence[str]) -> list[list[object]]:
    import wandb

    rows = []
    for record in records:
        images = [record.input, record.reconstruction, *record.novel_views, depth_as_image(record.depth[None])[0]]
        scores = [_finite_or_none(record.scores.get(name, math.nan)) for name in score_names]
        rows.append([record.identifier, *[wandb.Image(to_uint8(image)) for image in images], *scores])
    return rows


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def wandb_loggers(loggers: Sequence[Logger]) -> list[WandbLogger]:
    return [logger for logger in loggers if isinstance(logger, WandbLogger)]


def log_sample_table(
    loggers: Sequence[Logger], key: str, records: Sequence[SampleRecord], novel_view_names: Sequence[str], step: int
) -> bool:
    """Log the table to every WandbLogger; False when there is none (or nothing to log)."""
    targets = wandb_loggers(loggers)
    if not targets or not records:
        return False
    score_names = sorted({name for record in records for name in record.scores})
    columns = table_columns(novel_view_names, score_names)
    rows = table_rows(records, score_names)
    for logger in targets:
        logger.log_table(key=key, columns=columns, data=rows, step=step)
    return True


def records_from_batch(
    identifiers: Sequence[str],
    inputs: torch.Tensor,
    reconstructions: torch.Tensor,
    novel_views: Sequence[torch.Tensor],
    depth: torch.Tensor,
    scores: dict[str, torch.Tensor],
    limit: int,
) -> list[SampleRecord]:
    """The first ``limit`` samples of a batch as records (tensors moved to the CPU)."""
    count = min(limit, inputs.shape[0])
    return [
        SampleRecord(
            identifier=str(identifiers[index]),
            input=inputs[index].detach().float().cpu(),
            reconstruction=reconstructions[index].detach().float().cpu(),
            novel_views=[view[index].detach().float().cpu() for view in novel_views],
            depth=depth[index].detach().float().cpu(),
            scores={name: float(values[index]) for name, values in scores.items()},
        )
        for index in range(count)
    ]


__all__ = [
    "SampleRecord", "depth_as_image", "log_sample_table", "per_image_scores",
    "records_from_batch", "table_columns", "table_rows", "to_uint8", "wandb_loggers",
]
