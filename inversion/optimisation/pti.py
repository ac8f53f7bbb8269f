"""PTI (Roich et al.) on our EG3D as an ``Inverter``, with pose optimisation (Ko et al.) and the hybrid
start from any encoder: ``PTIInverter.invert(image, image_full, camera) -> InversionResult``.

Per batch: (0) the start latent: w_avg, or the w+ of ``init`` (any Inverter: an encoder stage loaded
from its checkpoint) for the hybrid "encoder + PTI"; (1) the pivot search of every image together
(:mod:`.pivot`), with the cameras too under pose optimisation; (2) pivotal tuning image by image
(:mod:`.tuning`) on a private working copy of the generator, reset from the frozen one before each
image. The result carries each image's tuned tensors, so everything downstream renders through the
image's own generator (``InversionResult.generator_for``); the frozen generator is only read.

See docs/pti.md.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from inversion.optimisation.pivot import (
    LatentStatistics,
    PivotSearchResult,
    PivotSettings,
    latent_statistics,
    search_pivot,
)
from inversion.optimisation.pose_optimisation import PoseSettings, estimated_labels, load_pose_estimator
from inversion.optimisation.progress import StepProgress
from inversion.optimisation.tuning import (
    LocalitySettings,
    TuningRecord,
    TuningSettings,
    reset_generator_,
    tune_generator,
    tuned_parameter_names,
)
from inversion.result import InversionResult, Inverter
from inversion.tuned_generator import TunedGeneratorTensors, tuned_tensors_of
from losses.reconstruction import LPIPSLoss

DEPTH_KEYS = ("depth_resolution", "depth_resolution_importance")


@dataclass(frozen=True)
class LPIPSSettings:
    """An LPIPS distance (the lpips package: ``alex`` or ``vgg``) from a configured backbone file, at
    ``resolution`` (larger images are area-downsampled to it; None = as given)."""

    net: str = "alex"
    backbone_weights: str = "random"
    resolution: int | None = None


@dataclass(frozen=True)
class PivotLossSettings(LPIPSSettings):
    """The pivot search's loss: lpips_weight x LPIPS + l2_weight x MSE, per image. PTI: the VGG16 LPIPS
    alone at 256 px (l2_weight 0); lpips_weight 0 builds no LPIPS network at all."""

    net: str = "vgg"
    resolution: int | None = 256
    lpips_weight: float = 1.0
    l2_weight: float = 0.0


def resized(images: torch.Tensor, resolution: int | None) -> torch.Tensor:
    """Area-downsampled to ``resolution`` when larger (PTI compares at 256 px), else unchanged."""
    if resolution is None or images.shape[-1] <= resolution:
        return images
    return F.interpolate(images, size=(resolution, resolution), mode="area")


class PerImageLPIPS(nn.Module):
    """images, targets [N, 3, H, W] in [-1, 1] -> LPIPS per image [N] at the configured resolution."""

    def __init__(self, settings: LPIPSSettings) -> None:
        super().__init__()
        self.resolution = settings.resolution
        self.lpips = LPIPSLoss(settings.backbone_weights, net=settings.net)

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.lpips.per_sample(resized(images, self.resolution), resized(targets, self.resolution))


class PivotDistance(nn.Module):
    """The pivot loss per image [N] (:class:`PivotLossSettings`)."""

    def __init__(self, settings: PivotLossSettings) -> None:
        super().__init__()
        self.settings = settings
        self.lpips = PerImageLPIPS(settings) if settings.lpips_weight else None

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        images, targets = resized(images, self.settings.resolution), resized(targets, self.settings.resolution)
        distance = images.new_zeros(images.shape[0])
        if self.lpips is not None:
            distance = distance + self.settings.lpips_weight * self.lpips.lpips.per_sample(images, targets)
        if self.settings.l2_weight:
            distance = distance + self.settings.l2_weight * (images - targets).square().flatten(1).mean(dim=1)
        return distance


@dataclass
class ImageReport:
    """What the optimisation did for one image (also printed as its timing line)."""

    index: int
    pivot_seconds: float  # the batch's pivot search divided by its size
    tuning_seconds: float
    pivot_distance: tuple[float, float]  # first and last step
    tuning: TuningRecord
    batch_size: int

    @property
    def seconds(self) -> float:
        return self.pivot_seconds + self.tuning_seconds

    def line(self, name: str) -> str:
        tuning = self.tuning
        stop = f", stopped at LPIPS {float(tuning.lpips[-1]):.4f}" if tuning.stopped_early else ""
        lpips_text = (f"LPIPS {float(tuning.lpips[0]):.4f} -> {float(tuning.lpips[-1]):.4f}"
                      if len(tuning.lpips) else "no steps")
        return (
            f"{name} image {self.index + 1}/{self.batch_size}: pivot search {self.pivot_seconds:.2f} s "
            f"(loss {self.pivot_distance[0]:.4f} -> {self.pivot_distance[1]:.4f}), tuning {tuning.steps} steps "
            f"{self.tuning_seconds:.2f} s ({lpips_text}{stop}), total {self.seconds:.2f} s"
        )


def _as_settings(kind: type, value: Any) -> Any:
    if value is None or isinstance(value, kind):
        return value
    return kind(**dict(value))


def tuning_settings(value: TuningSettings | Mapping[str, Any] | None) -> TuningSettings:
    if isinstance(value, TuningSettings):
        return value
    options = dict(value or {})
    options["locality"] = _as_settings(LocalitySettings, options.get("locality"))
    options["parts"] = tuple(options.get("parts", TuningSettings.parts))
    return TuningSettings(**options)


def with_depth_multiplier(generator: nn.Module, multiplier: int) -> nn.Module:
    """``generator`` itself (multiplier 1), or a frozen copy that takes ``multiplier`` x the depth samples
    per ray (the EG3D projector renders with 2x: 96 + 96 for the released models)."""
    if multiplier == 1:
        return generator
    if multiplier < 1:
        raise ValueError(f"depth_multiplier must be a positive integer, got {multiplier}")
    denser = copy.deepcopy(generator)
    denser.rendering_kwargs = {**generator.rendering_kwargs,
                               **{key: int(generator.rendering_kwargs[key]) * multiplier for key in DEPTH_KEYS}}
    return denser.eval().requires_grad_(False)


class PTIInverter(nn.Module):
    """PTI / Pose Opt. / encoder + PTI as an ``Inverter`` (docs/pti.md).

    :param generator: the frozen EG3D (shared; never written).
    :param pivot / tuning / pose: settings (dataclasses or plain mappings from the config); ``pose``
        None = PTI, else pose optimisation during the pivot search.
    :param pivot_loss / tuning_loss: the LPIPS distances (PTI: VGG16 at 256 px / AlexNet at full size).
    :param depth_multiplier: 1 or 2 x the generator's depth samples, for the search, the tuning and
        every render of the results (``self.generator`` is the generator renders must use).
    :param init: an Inverter whose w+ starts the pivot search (hybrid); None = w_avg.
    :param seed: seeds every random draw of an ``invert`` call (noise maps, w noise, renderer jitter),
        so an image's result does not depend on the images inverted before it.
    :param report: receives one timing line per image (None: silent).
    """

    def __init__(
        self,
        generator: nn.Module,
        pivot: PivotSettings | Mapping[str, Any] | None = None,
        tuning: TuningSettings | Mapping[str, Any] | None = None,
        pivot_loss: PivotLossSettings | Mapping[str, Any] | None = None,
        tuning_loss: LPIPSSettings | Mapping[str, Any] | None = None,
        pose: PoseSettings | Mapping[str, Any] | None = None,
        depth_multiplier: int = 1,
        init: Inverter | None = None,
        seed: int = 0,
        progress_bar: bool = True,
        name: str = "PTI",
        report: Callable[[str], None] | None = print,
    ) -> None:
        super().__init__()
        self.frozen_generator = generator
        self.generator = with_depth_multiplier(generator, int(depth_multiplier))
        self.depth_multiplier = int(depth_multiplier)
        self.pivot_settings = _as_settings(PivotSettings, pivot) or PivotSettings()
        self.tuning_settings = tuning_settings(tuning)
        self.pose_settings = _as_settings(PoseSettings, pose)
        tuned_parameter_names(generator, self.tuning_settings.parts)  # a wrong part fails here, not mid-run
        self.pivot_distance = PivotDistance(_as_settings(PivotLossSettings, pivot_loss) or PivotLossSettings())
        self.tuning_distance = PerImageLPIPS(_as_settings(LPIPSSettings, tuning_loss) or LPIPSSettings())
        self.pose_estimator = (load_pose_estimator(self.pose_settings.estimator_weights)
                               if self.pose_settings is not None and self.pose_settings.initial == "estimator"
                               else None)
        self.init = init
        self.seed = int(seed)
        self.progress_bar = progress_bar
        self.method_name = name
        self.report = report
        # Private: optimised in train mode (StyleGAN's unfused modulated convolutions, what the official
        # code trains with), reset from the frozen generator before every image.
        self.working_generator = copy.deepcopy(self.generator)
        self._statistics: LatentStatistics | None = None
        self.last_reports: list[ImageReport] = []  # of the last invert() call, one per image
        self.last_pivots: PivotSearchResult | None = None  # its pivots (before tuning) and their cameras

    # ------------------------------------------------------------------ pieces
    def latent_statistics(self) -> LatentStatistics:
        """w_avg / w_std at the canonical camera (computed once, on the generator's device)."""
        device = self.generator.w_avg.device
        if self._statistics is None or self._statistics.w_avg.device != device:
            self._statistics = latent_statistics(self.frozen_generator, self.pivot_settings.w_avg_samples,
                                                 self.seed, self.pivot_settings.truncation_psi)
        return self._statistics

    def start_latents(self, image: torch.Tensor, image_full: torch.Tensor, camera: torch.Tensor) -> torch.Tensor | None:
        if self.init is None:
            return None
        with torch.no_grad():
            return self.init.invert(image, image_full, camera).ws.float()

    def initial_cameras(self, image_full: torch.Tensor, camera: torch.Tensor) -> torch.Tensor:
        if self.pose_estimator is None:
            return camera.float()
        return estimated_labels(self.pose_estimator, image_full, camera.float())

    def target_images(self, image_full: torch.Tensor) -> torch.Tensor:
        """The images at the generator's resolution (what its renders are compared with)."""
        size = int(self.generator.img_resolution)
        target = image_full.float()
        if target.shape[-1] != size or target.shape[-2] != size:
            target = F.interpolate(target, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return target.clamp(-1, 1)

    # ------------------------------------------------------------------ the Inverter protocol
    def invert(self, image: torch.Tensor, image_full: torch.Tensor, camera: torch.Tensor) -> InversionResult:
        """image: an encoder's input (used by ``init`` only); image_full: the target [N, 3, H, W] in
        [-1, 1]; camera: the images' labels [N, 25] (the initial cameras under pose optimisation)."""
        with torch.enable_grad():
            return self._invert(image, image_full, camera)

    def _invert(self, image: torch.Tensor, image_full: torch.Tensor, camera: torch.Tensor) -> InversionResult:
        device = image_full.device
        rng = torch.Generator(device=device).manual_seed(self.seed)
        target = self.target_images(image_full)
        num_images = target.shape[0]
        working = self.working_generator.train()
        start = self.start_latents(image, image_full, camera)
        cameras = self.initial_cameras(image_full, camera)

        reset_generator_(working, self.generator)
        clock = time.perf_counter()
        with StepProgress(f"{self.method_name} pivot search", self.pivot_settings.steps, self.progress_bar) as bar:
            pivots = search_pivot(working, target, cameras, self.pivot_settings, self.latent_statistics(),
                                  self.pivot_distance, rng, start_ws=start, pose=self.pose_settings, progress=bar)
        pivot_seconds = (time.perf_counter() - clock) / num_images

        per_image: list[TunedGeneratorTensors] = []
        reports: list[ImageReport] = []
        names = tuned_parameter_names(working, self.tuning_settings.parts)
        for index in range(num_images):
            pick = slice(index, index + 1)
            reset_generator_(working, self.generator)  # nothing of the previous image remains
            clock = time.perf_counter()
            with StepProgress(f"{self.method_name} tuning {index + 1}/{num_images}", self.tuning_settings.steps,
                              self.progress_bar) as bar:
                record = tune_generator(working, self.generator, pivots.ws[pick], pivots.cameras[pick],
                                        target[pick], self.tuning_settings, self.tuning_distance, rng, bar)
            per_image.append(TunedGeneratorTensors(tuned_tensors_of(working, names), self._rendering_overrides()))
            history = pivots.distances[:, index]
            first_last = (float(history[0]), float(history[-1])) if len(history) else (float("nan"),) * 2
            reports.append(ImageReport(index, pivot_seconds, time.perf_counter() - clock, first_last, record,
                                       num_images))
            if self.report is not None:
                self.report(reports[-1].line(self.method_name))
        reset_generator_(working, self.generator)
        working.eval()
        self.last_reports, self.last_pivots = reports, pivots
        return self._result(pivots.ws, pivots.cameras, TunedGeneratorTensors.stack(per_image))

    def _rendering_overrides(self) -> dict[str, int]:
        return {key: int(self.generator.rendering_kwargs[key]) for key in DEPTH_KEYS}

    def _result(self, ws: torch.Tensor, cameras: torch.Tensor, tuned: TunedGeneratorTensors) -> InversionResult:
        planes = []
        with torch.no_grad():
            for index in range(ws.shape[0]):
                generator = tuned.sample(index).generator_from(self.generator)
                planes.append(generator.synthesize_planes(ws[index : index + 1]))
        all_planes = torch.cat(planes)
        return InversionResult(
            ws=ws, input_view_planes=all_planes, novel_view_planes=all_planes, tuned_generator=tuned,
            input_camera=cameras if self.pose_settings is not None else None,
        )


__all__ = [
    "ImageReport",
    "LPIPSSettings",
    "PTIInverter",
    "PerImageLPIPS",
    "PivotDistance",
    "PivotLossSettings",
    "with_depth_multiplier",
]
