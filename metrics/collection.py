"""Build a set of evaluation metrics from a list of names, e.g. ``["mse", "psnr", "ssim", "lpips", "id", "fid",
"geometry"]`` (callbacks and evaluate.py ask for them this way).

Every network a metric needs (AlexNet for LPIPS, IR-SE50 or the ONNX ArcFace for ID, Inception for FID)
is built inside that metric, frozen, and kept out of ``state_dict()`` and ``parameters()``; metric
states are not persistent. So a :class:`MetricSuite` can sit in a callback or even in a LightningModule
without adding anything to its checkpoint or to the optimiser. Networks are built only for the metrics
asked for (no file is opened for a metric that is not in the list).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchmetrics import Metric

from metrics.base import EmptyMetricError
from metrics.fid import FrechetInceptionDistance, load_fid_inception
from metrics.geometry import GeometryError
from metrics.identity import IdentitySimilarity, identity_similarity_ir_se50, identity_similarity_onnx
from metrics.image_quality import MeanSquaredError, PeakSignalNoiseRatio, PixelScale, StructuralSimilarity
from metrics.perceptual import LearnedPerceptualSimilarity

IDENTITY_BACKENDS = ("ir_se50", "insightface_onnx")
# Metrics updated with depths instead of (prediction, target) images.
DEPTH_METRICS = frozenset({"geometry"})


class MetricConfigError(ValueError):
    """An unknown metric name, or a metric whose weights file is not configured."""


@dataclass
class MetricsConfig:
    """Files and options of the metric networks (``"random"`` as a weights path: tests only).

    A path is needed only when its metric is requested.
    """

    mse_scale: str = PixelScale.UNIT.value
    lpips_backbone_weights: str | None = None  # torchvision's alexnet-owt-7be5be79.pth
    identity_backend: str = "ir_se50"  # or "insightface_onnx"
    arcface_weights: str | None = None  # model_ir_se50.pth
    insightface_model: str | None = None  # w600k_r50.onnx, or a pack folder holding it
    fid_inception_weights: str | None = None  # pt_inception-2015-12-05-6726825d.pth
    fid_cache_dir: str | None = None  # where prepare_reference() keeps real-set statistics


def _required(value: str | None, what: str, metric: str) -> str | Path:
    if value is None:
        raise MetricConfigError(f"metric {metric!r} needs {what}; set it in the metrics config")
    return value


def _build_identity(config: MetricsConfig) -> IdentitySimilarity:
    if config.identity_backend == "ir_se50":
        return identity_similarity_ir_se50(_required(config.arcface_weights, "arcface_weights (model_ir_se50.pth)",
                                                     "id"))
    if config.identity_backend == "insightface_onnx":
        return identity_similarity_onnx(_required(config.insightface_model, "insightface_model (w600k_r50.onnx)",
                                                  "id"))
    raise MetricConfigError(f"identity_backend must be one of {IDENTITY_BACKENDS}, got {config.identity_backend!r}")


MetricBuilder = Callable[[MetricsConfig], Metric]

METRIC_BUILDERS: dict[str, MetricBuilder] = {
    "mse": lambda config: MeanSquaredError(scale=config.mse_scale),
    "psnr": lambda config: PeakSignalNoiseRatio(),
    "ssim": lambda config: StructuralSimilarity(),
    "lpips": lambda config: LearnedPerceptualSimilarity(
        _required(config.lpips_backbone_weights, "lpips_backbone_weights (alexnet-owt-7be5be79.pth)", "lpips")
    ),
    "id": _build_identity,
    "fid": lambda config: FrechetInceptionDistance(
        load_fid_inception(_required(config.fid_inception_weights, "fid_inception_weights", "fid"))
    ),
    "geometry": lambda config: GeometryError(),
}


def register_metric(name: str, builder: MetricBuilder) -> None:
    """Add a metric name (an extension point for new papers' metrics)."""
    if name in METRIC_BUILDERS:
        raise MetricConfigError(f"metric {name!r} is already registered")
    METRIC_BUILDERS[name] = builder


class MetricSuite(nn.Module):
    """Named metrics updated together; ``compute()`` gives flat scalars for logging and tables.

    ``compute()`` and ``reset()`` are collective under DDP: call them on every rank.
    """

    def __init__(self, metrics: Mapping[str, Metric]) -> None:
        super().__init__()
        self.image_metrics = nn.ModuleDict({n: m for n, m in metrics.items() if n not in DEPTH_METRICS})
        self.depth_metrics = nn.ModuleDict({n: m for n, m in metrics.items() if n in DEPTH_METRICS})

    @property
    def names(self) -> list[str]:
        return [*self.image_metrics.keys(), *self.depth_metrics.keys()]

    def __getitem__(self, name: str) -> Metric:
        return self.image_metrics[name] if name in self.image_metrics else self.depth_metrics[name]

    def update_images(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Images ``[N, 3, H, W]`` in [-1, 1]: reconstructions (or novel views) and their ground truth."""
        for metric in self.image_metrics.values():
            metric.update(prediction, target)

    def update_depths(
        self, predicted_depth: torch.Tensor, reference_depth: torch.Tensor, mask: torch.Tensor | None = None
    ) -> None:
        for metric in self.depth_metrics.values():
            metric.update(predicted_depth, reference_depth, mask)

    def compute(self) -> dict[str, float]:
        """``{name: value}`` plus failure/count entries (``id/failed_pairs``, ``geometry/failures``, ...).

        A metric with nothing valid on any rank gives NaN (the same on every rank, since the counts are
        reduced first) instead of stopping the whole evaluation.
        """
        results: dict[str, float] = {}
        for name in self.names:
            metric = self[name]
            if isinstance(metric, (IdentitySimilarity, GeometryError)):
                results.update(metric.report().scalars(name))
                continue
            try:
                results[name] = float(metric.compute())
            except EmptyMetricError:
                results[name] = math.nan
        return results

    def reset(self) -> None:
        for name in self.names:
            self[name].reset()


def build_metric_suite(
    names: Iterable[str], config: MetricsConfig | None = None, prebuilt: Mapping[str, Metric] | None = None
) -> MetricSuite:
    """The metrics named, built from ``config``; ``prebuilt`` supplies ready metrics by name (tests, or a
    caller that shares one FID extractor)."""
    config = config or MetricsConfig()
    prebuilt = prebuilt or {}
    metrics: dict[str, Metric] = {}
    for name in names:
        if name in metrics:
            raise MetricConfigError(f"metric {name!r} listed twice")
        if name in prebuilt:
            metrics[name] = prebuilt[name]
        elif name in METRIC_BUILDERS:
            metrics[name] = METRIC_BUILDERS[name](config)
        else:
            raise MetricConfigError(f"unknown metric {name!r}; known: {', '.join(sorted(METRIC_BUILDERS))}")
    return MetricSuite(metrics)
