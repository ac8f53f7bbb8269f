"""Validation metrics during training (GOAE's table metrics), correct under DDP.

On every validation run selected by the interval, each validation batch is inverted with the module's
``invert(image, image_full, camera)`` (the ``Inverter`` protocol), rendered at its camera and scored with a
:class:`metrics.MetricSuite`; a MEAD-style ``MultiViewBatch`` also scores the four novel views. At the end of
the run the suite is computed **on every rank** (its states are reduced across ranks: computing inside a
rank-zero-only hook would hang) and logged with ``pl_module.log_dict`` as ``val_metrics/<name>`` (novel
views: ``val_metrics/novel_view/<name>``), including failure counts (``val_metrics/id/failed_pairs``,
``val_metrics/geometry/failures``) and ``val_metrics/images``. Every configured logger gets them, and
``ModelCheckpoint(monitor="val_metrics/lpips")`` can use them.

The frozen metric networks (AlexNet, ArcFace, Inception) live in this callback, never in the
LightningModule's checkpoint. Rank 0 also keeps its first samples for a per-sample wandb table (input,
reconstruction, novel views, depth, scores), logged only when a WandbLogger is configured.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torchmetrics import Metric, SumMetric

from callbacks.wandb_tables import SampleRecord, log_sample_table, per_image_scores, records_from_batch, wandb_loggers
from cameras import look_at_label
from datamodules import MultiViewBatch, MultiViewDataset
from evaluation.protocols import (
    IMAGES_KEY,
    ComparisonOptions,
    ReferenceDepthProvider,
    ReferenceDepthSource,
    build_reference_depth,
    comparable_pair,
    render_novel_view,
    update_input_view,
    update_novel_views,
    view_targets,
)
from metrics import MetricsConfig, MetricSuite, build_metric_suite
from runtime.pylogger import RankedLogger

log = RankedLogger(__name__)

NOVEL_VIEW_PREFIX = "novel_view"


@dataclass
class _Suites:
    """The metric state of one validation run (input view, and novel views for multi-view data)."""

    input_view: MetricSuite
    input_images: SumMetric
    novel_view: MetricSuite | None
    novel_images: SumMetric | None


class ValidationMetrics(Callback):
    """Compute the configured metrics on every ``every_n_validations``-th validation run and log them.

    :param metrics: names for :func:`metrics.build_metric_suite` (``mse psnr ssim lpips fid id geometry``).
    :param every_n_validations: run on validation runs 0, n, 2n, ... (counted over the whole training,
        resumed with the checkpoint); the others are skipped at no cost.
    :param metrics_config: weights files of the metric networks (:class:`metrics.MetricsConfig` fields).
    :param reference_depth: for ``geometry``: ``dataset`` (the batch's ``depth_true``), ``generator``
        (render ``ws_true``), ``none``, or a provider object.
    :param comparison_resolution: compare at this size; None = the ground truth's (full) resolution.
    :param run_on_sanity_check: also compute during Lightning's sanity check (a step-0 baseline).
    :param log_prefix: metric names are ``<log_prefix>/<name>``.
    :param table_samples: rank 0's first samples in the wandb table (0 = no table).
    :param table_yaw_degrees: novel-view columns of the table for single-view data (multi-view data shows
        its target views instead).
    :param prebuilt_metrics: ready metrics by name (tests, or a shared FID extractor).
    """

    def __init__(
        self,
        metrics: Sequence[str] = ("mse", "psnr", "ssim"),
        every_n_validations: int = 1,
        metrics_config: MetricsConfig | Mapping[str, Any] | None = None,
        reference_depth: ReferenceDepthSource | str | ReferenceDepthProvider | None = ReferenceDepthSource.NONE,
        comparison_resolution: int | None = None,
        run_on_sanity_check: bool = False,
        log_prefix: str = "val_metrics",
        table_samples: int = 4,
        table_yaw_degrees: Sequence[float] = (-30.0, 0.0, 30.0),
        prebuilt_metrics: Mapping[str, Metric] | None = None,
    ) -> None:
        if every_n_validations < 1:
            raise ValueError(f"every_n_validations must be >= 1, got {every_n_validations}")
        self.metric_names = list(metrics)
        self.every_n_validations = int(every_n_validations)
        self.metrics_config = metrics_config if isinstance(metrics_config, MetricsConfig) else MetricsConfig(
            **dict(metrics_config or {}))
        self.reference_depth_source = reference_depth
        self.options = ComparisonOptions(resolution=comparison_resolution)
        self.run_on_sanity_check = bool(run_on_sanity_check)
        self.log_prefix = log_prefix
        self.table_samples = int(table_samples)
        self.table_yaw_degrees = [float(yaw) for yaw in table_yaw_degrees]
        self.prebuilt_metrics = dict(prebuilt_metrics or {})
        self.validation_runs = 0  # real (non-sanity) validation runs seen; in the checkpoint
        self.last_values: dict[str, float] = {}  # what the last computing run logged (for tests and tools)
        self._suites: _Suites | None = None
        self._reference_depth: ReferenceDepthProvider | None = None
        self._active = False
        self._table_records: list[SampleRecord] = []
        self._table_view_names: list[str] = []

    # ------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"validation_runs": self.validation_runs}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.validation_runs = int(state_dict.get("validation_runs", 0))

    # ------------------------------------------------------------------------------------ set-up
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not callable(getattr(pl_module, "invert", None)):
            raise TypeError(f"ValidationMetrics needs a stage with invert(image, image_full, camera) (the Inverter "
                            f"protocol); {type(pl_module).__name__} has none")
        self._reference_depth = build_reference_depth(self.reference_depth_source, pl_module.generator)

    def _build_suites(self, multiview: bool, device: torch.device) -> _Suites:
        """Built once (frozen networks are costly), on the first active run; kept on the module's device."""
        if self._suites is None:
            novel = build_metric_suite(self.metric_names, self.metrics_config) if multiview else None
            self._suites = _Suites(
                input_view=build_metric_suite(self.metric_names, self.metrics_config, self.prebuilt_metrics),
                input_images=SumMetric(), novel_view=novel, novel_images=SumMetric() if multiview else None,
            )
        suites = self._suites
        for part in (suites.input_view, suites.input_images, suites.novel_view, suites.novel_images):
            if part is not None:
                part.to(device)
        return suites

    # ------------------------------------------------------------------------------------ hooks
    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._active = self._is_active(trainer)
        if not trainer.sanity_checking:
            self.validation_runs += 1
        self._table_records = []
        if self._active:
            self._build_suites(_expects_multiview(trainer), pl_module.device)

    def _is_active(self, trainer: L.Trainer) -> bool:
        # Every rank takes the same decision (same counter), so every rank computes and reduces.
        if trainer.sanity_checking:
            return self.run_on_sanity_check
        return self.validation_runs % self.every_n_validations == 0

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self._active or self._suites is None:
            return
        suites = self._suites
        wants_table = self._wants_table(trainer)
        if isinstance(batch, MultiViewBatch):
            self._update_multiview(pl_module, batch, suites, wants_table)
            return
        result, render = update_input_view(suites.input_view, pl_module, batch, self._reference_depth, self.options)
        suites.input_images.update(float(batch.image.shape[0]))
        if wants_table:
            self._remember_samples(pl_module, batch, result, render)

    def _update_multiview(self, pl_module: L.LightningModule, batch: MultiViewBatch, suites: _Suites,
                          wants_table: bool) -> None:
        if suites.novel_view is None or suites.novel_images is None:
            raise RuntimeError("a multi-view batch arrived but the validation split is not a MultiViewDataset")
        _, render = update_input_view(suites.input_view, pl_module, batch.input, self._reference_depth, self.options)
        suites.input_images.update(float(len(batch)))
        result = update_novel_views(suites.novel_view, pl_module, batch, self._reference_depth, self.options)
        suites.novel_images.update(float(batch.target_image.shape[0] * batch.target_image.shape[1]))
        if wants_table:
            views = [render_novel_view(pl_module, result, view_targets(batch, index).camera).image
                     for index in range(batch.target_image.shape[1])]
            self._table_view_names = list(batch.target_views[0])
            self._add_records(batch.input, render, views)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._active or self._suites is None:
            return
        values = self.compute_and_reset()  # collective: every rank, never inside rank_zero_only
        pl_module.log_dict(values, sync_dist=False)  # already reduced: the same value on every rank
        self.last_values = values
        if trainer.is_global_zero and self._table_records:
            log_sample_table(trainer.loggers, f"{self.log_prefix}/samples", self._table_records,
                             self._table_view_names, trainer.global_step)
        self._table_records = []
        self._active = False

    def compute_and_reset(self) -> dict[str, float]:
        """``{"<prefix>/<name>": value}`` reduced over ranks; call on every rank."""
        assert self._suites is not None
        suites = self._suites
        values = _prefixed(self.log_prefix, suites.input_view.compute())
        values[f"{self.log_prefix}/{IMAGES_KEY}"] = float(suites.input_images.compute())
        suites.input_view.reset()
        suites.input_images.reset()
        if suites.novel_view is not None and suites.novel_images is not None:
            prefix = f"{self.log_prefix}/{NOVEL_VIEW_PREFIX}"
            values.update(_prefixed(prefix, suites.novel_view.compute()))
            values[f"{prefix}/{IMAGES_KEY}"] = float(suites.novel_images.compute())
            suites.novel_view.reset()
            suites.novel_images.reset()
        return values

    # ------------------------------------------------------------------------------------ wandb table
    def _wants_table(self, trainer: L.Trainer) -> bool:
        return (self.table_samples > 0 and trainer.is_global_zero and len(self._table_records) < self.table_samples
                and bool(wandb_loggers(trainer.loggers)))

    @torch.no_grad()
    def _remember_samples(self, pl_module: L.LightningModule, batch: Any, result: Any, render: Any) -> None:
        generator = pl_module.generator
        pivot = list(generator.rendering_kwargs.get("avg_camera_pivot", (0.0, 0.0, 0.2)))
        size = batch.image.shape[0]
        views = []
        for yaw in self.table_yaw_degrees:
            camera = look_at_label(math.radians(yaw), 0.0, pivot=pivot, device=batch.image.device).expand(size, -1)
            views.append(render_novel_view(pl_module, result, camera).image)
        self._table_view_names = [f"yaw {yaw:+.0f}" for yaw in self.table_yaw_degrees]
        self._add_records(batch, render, views)

    def _add_records(self, batch: Any, render: Any, views: list[torch.Tensor]) -> None:
        assert self._suites is not None
        prediction, target = comparable_pair(render.image, batch.image_full, self.options)
        reference = None
        if self._suites.input_view.depth_metrics and self._reference_depth is not None:
            reference = self._reference_depth.reference_depth(batch)
        scores = per_image_scores(self._suites.input_view, prediction, target, render.image_depth,
                                  None if reference is None else reference.depth,
                                  None if reference is None else reference.mask)
        remaining = self.table_samples - len(self._table_records)
        self._table_records += records_from_batch(batch.identifiers, batch.image_full, prediction, views,
                                                  render.image_depth, scores, remaining)


def _prefixed(prefix: str, values: Mapping[str, float]) -> dict[str, float]:
    return {f"{prefix}/{name}": float(value) for name, value in values.items()}


def _expects_multiview(trainer: L.Trainer) -> bool:
    """Whether validation batches are MEAD-style groups: decided from the dataset, the same on every rank
    (a rank that happens to get no batch must still build and reduce the novel-view suite)."""
    datamodule = getattr(trainer, "datamodule", None)
    datasets = getattr(datamodule, "datasets", {}) if datamodule is not None else {}
    return isinstance(datasets.get("val"), MultiViewDataset)
