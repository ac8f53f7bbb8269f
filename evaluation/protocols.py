"""The paper's evaluation protocols (GOAE §5.2, Tables 1-3), written against the ``Inverter`` protocol only.

* **Input view** (Table 1 "Reconstruction Quality", Table 3): invert each image, render the inversion at the
  image's own camera, compare with the image. CelebA-HQ's 1,500-image list, AFHQ's test split, or
  synthetic samples (exact ground-truth depth).
* **MEAD novel view** (Table 1 "Novel View Quality", Table 2): invert the front view and the ±60° views of
  each person/frame group, render the other four views at their cameras, compare with the ground truth.
  Each group of input views (yaw = ±60°: left60 + right60; yaw = 0°: front) has its own metric suite, so
  every number is a mean over all of that group's rendered novel views.

The per-batch step functions (:func:`update_input_view`, :func:`update_novel_views`) are shared by
``evaluate.py`` and the validation-metrics callback, so training-time and table numbers are computed the
same way. Rendering uses the renderer's deterministic draws (no ray jitter): two runs give the same numbers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

import torch
import torch.nn.functional as F
from torchmetrics import SumMetric

from datamodules import InversionDataModule, MultiViewBatch, MultiViewSplit
from inversion.result import InversionResult, Inverter
from metrics import (
    DatasetReferenceDepth,
    GeneratorReferenceDepth,
    InferenceTimer,
    MetricSuite,
    ReferenceDepth,
    ReferenceDepthProvider,
)
from networks.eg3d.outputs import RendererDraws, RenderOutput


class Protocol(str, Enum):
    INPUT_VIEW = "input_view"
    MEAD_NOVEL_VIEW = "mead_novel_view"


class ReferenceDepthSource(str, Enum):
    """Where the geometry metric's reference depth comes from (a config choice)."""

    NONE = "none"
    DATASET = "dataset"  # the batch's depth_true (synthetic data)
    GENERATOR = "generator"  # render the batch's ws_true with the frozen generator (synthetic data)


@dataclass(frozen=True)
class InputViewGroup:
    """Input views whose novel-view scores are averaged together (one column group of Table 1/2)."""

    key: str  # column prefix in tables and logs, e.g. "yaw60"
    label: str  # header text, e.g. "yaw = ±60°"
    input_views: tuple[str, ...]


# Table 1 reports the ±60° inputs first, then the front input.
MEAD_INPUT_VIEW_GROUPS = (
    InputViewGroup("yaw60", "yaw = ±60°", ("left60", "right60")),
    InputViewGroup("yaw0", "yaw = 0°", ("front",)),
)
INPUT_VIEW_GROUP = InputViewGroup("input_view", "Input view", ())
IMAGES_KEY = "images"  # how many compared images a group holds (reduced over ranks)
TIME_KEY = "time"


@dataclass(frozen=True)
class ComparisonOptions:
    """How renders are compared with ground truth.

    resolution: compare at this size; None = the ground truth's own (full) resolution. Renders of another
    size are area-pooled (shrinking) or bilinearly resized (enlarging) to it.
    """

    resolution: int | None = None


@dataclass
class GroupScores:
    values: dict[str, float]  # suite.compute() plus "images" (and "time*" for the input view)


@dataclass
class ProtocolResult:
    protocol: Protocol
    groups: dict[str, GroupScores]  # InputViewGroup.key -> scores


@dataclass
class ViewTargets:
    """Ground truth of one target view for a batch (what a reference-depth provider gets for novel views)."""

    image: torch.Tensor  # [B, 3, H, W]
    camera: torch.Tensor  # [B, 25]
    identifiers: list[str]  # "<person>/<frame>/<view>"
    views: list[str]


# ------------------------------------------------------------------------------------------ rendering
def deterministic_draws(generator: torch.nn.Module, batch_size: int, device: torch.device) -> RendererDraws:
    """Renderer draws without jitter, so a render (and hence every score) is reproducible."""
    resolution = int(generator.neural_rendering_resolution)
    return RendererDraws.deterministic(
        batch_size, resolution * resolution, int(generator.rendering_kwargs["depth_resolution"]),
        int(generator.rendering_kwargs["depth_resolution_importance"]), device=device,
    )


def match_resolution(images: torch.Tensor, resolution: int) -> torch.Tensor:
    if images.shape[-1] == resolution and images.shape[-2] == resolution:
        return images
    if images.shape[-1] > resolution:
        return F.adaptive_avg_pool2d(images, (resolution, resolution))
    return F.interpolate(images, size=(resolution, resolution), mode="bilinear", align_corners=False)


def comparable_pair(render: torch.Tensor, target: torch.Tensor, options: ComparisonOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """(prediction, target) float32 at the comparison resolution."""
    resolution = options.resolution or target.shape[-1]
    return match_resolution(render.float(), resolution), match_resolution(target.float(), resolution)


def invert(inverter: Inverter, image: torch.Tensor, image_full: torch.Tensor, camera: torch.Tensor) -> InversionResult:
    with torch.no_grad():
        return inverter.invert(image, image_full, camera)


def render_input_view(inverter: Inverter, result: InversionResult, camera: torch.Tensor) -> RenderOutput:
    generator = inverter.generator
    with torch.no_grad():
        return result.render_input_view(generator, camera, deterministic_draws(generator, camera.shape[0], camera.device))


def render_novel_view(inverter: Inverter, result: InversionResult, camera: torch.Tensor) -> RenderOutput:
    generator = inverter.generator
    with torch.no_grad():
        return result.render_novel_view(generator, camera, deterministic_draws(generator, camera.shape[0], camera.device))


def build_reference_depth(
    source: ReferenceDepthSource | str | ReferenceDepthProvider | None, generator: torch.nn.Module
) -> ReferenceDepthProvider | None:
    """A provider from a config choice (``none``/``dataset``/``generator``), or the provider given."""
    if source is None:
        return None
    if not isinstance(source, (str, ReferenceDepthSource)):
        return source
    kind = ReferenceDepthSource(source)
    if kind is ReferenceDepthSource.DATASET:
        return DatasetReferenceDepth("depth_true")
    if kind is ReferenceDepthSource.GENERATOR:
        return GeneratorReferenceDepth(generator)
    return None


# ------------------------------------------------------------------------------------------ per-batch steps
def score(
    suite: MetricSuite,
    render: RenderOutput,
    target: torch.Tensor,
    reference: ReferenceDepth | None,
    options: ComparisonOptions,
) -> None:
    """Update every image metric with (render, target) and the depth metrics with (render depth, reference)."""
    prediction, target = comparable_pair(render.image, target, options)
    suite.update_images(prediction, target)
    if suite.depth_metrics:
        if reference is None:
            raise ValueError("the geometry metric needs a reference depth (set reference_depth: dataset/generator, "
                             "or remove 'geometry' from the metrics)")
        suite.update_depths(render.image_depth.float(), reference.depth.float(),
                            None if reference.mask is None else reference.mask)


def update_input_view(
    suite: MetricSuite,
    inverter: Inverter,
    batch: object,
    reference_depth: ReferenceDepthProvider | None,
    options: ComparisonOptions,
    timer: InferenceTimer | None = None,
) -> tuple[InversionResult, RenderOutput]:
    """Invert an ImageBatch, render it at its own cameras and score it against ``image_full``.

    The timer (if any) covers inversion + the input-view render: the "Time (s)" of Table 1.
    """
    image, image_full, camera = batch.image, batch.image_full, batch.camera  # type: ignore[attr-defined]
    if timer is None:
        result = invert(inverter, image, image_full, camera)
        render = render_input_view(inverter, result, camera)
    else:
        with timer.measure(batch_size=image.shape[0]):
            result = invert(inverter, image, image_full, camera)
            render = render_input_view(inverter, result, camera)
    reference = reference_depth.reference_depth(batch) if suite.depth_metrics and reference_depth else None
    score(suite, render, image_full, reference, options)
    return result, render


def view_targets(batch: MultiViewBatch, view_index: int) -> ViewTargets:
    views = [names[view_index] for names in batch.target_views]
    return ViewTargets(
        image=batch.target_image_full[:, view_index],
        camera=batch.target_camera[:, view_index],
        identifiers=[f"{identifier}/{view}" for identifier, view in zip(batch.identifiers, views)],
        views=views,
    )


def update_novel_views(
    suite: MetricSuite,
    inverter: Inverter,
    batch: MultiViewBatch,
    reference_depth: ReferenceDepthProvider | None,
    options: ComparisonOptions,
) -> InversionResult:
    """Invert the batch's input view, render every target view at its camera, score each against its truth."""
    source = batch.input
    result = invert(inverter, source.image, source.image_full, source.camera)
    for view_index in range(batch.target_image.shape[1]):
        targets = view_targets(batch, view_index)
        render = render_novel_view(inverter, result, targets.camera)
        reference = reference_depth.reference_depth(targets) if suite.depth_metrics and reference_depth else None
        score(suite, render, targets.image, reference, options)
    return result


# ------------------------------------------------------------------------------------------ whole protocols
def _image_counter(device: torch.device) -> SumMetric:
    return SumMetric().to(device)


def _group_scores(suite: MetricSuite, counter: SumMetric) -> GroupScores:
    """Collective (suite and counter reduce over ranks): call on every rank."""
    values = suite.compute()
    values[IMAGES_KEY] = float(counter.compute())
    return GroupScores(values=values)


def run_input_view(
    inverter: Inverter,
    batches: Iterable[object],
    suite: MetricSuite,
    reference_depth: ReferenceDepthProvider | None,
    options: ComparisonOptions,
    timer: InferenceTimer,
    device: torch.device,
) -> ProtocolResult:
    """Input-view protocol over ``batches`` (ImageBatch/SyntheticBatch); ``suite`` is reset afterwards."""
    counter = _image_counter(device)
    for batch in batches:
        batch = move_to(batch, device)
        update_input_view(suite, inverter, batch, reference_depth, options, timer)
        counter.update(float(batch.image.shape[0]))  # type: ignore[attr-defined]
    scores = _group_scores(suite, counter)
    timing = timer.summary()
    scores.values.update({TIME_KEY: timing.mean_seconds_per_image, f"{TIME_KEY}/median": timing.median_seconds_per_image,
                          f"{TIME_KEY}/timed_images": float(timing.timed_images)})
    suite.reset()
    return ProtocolResult(Protocol.INPUT_VIEW, {INPUT_VIEW_GROUP.key: scores})


def run_mead_novel_view(
    inverter: Inverter,
    batches_for_input_view: Callable[[str], Iterable[MultiViewBatch]],
    suites: Mapping[str, MetricSuite],
    reference_depth: ReferenceDepthProvider | None,
    options: ComparisonOptions,
    device: torch.device,
    groups: Sequence[InputViewGroup] = MEAD_INPUT_VIEW_GROUPS,
) -> ProtocolResult:
    """MEAD protocol: for each group, every input view of the group, every batch, the four other views.

    ``suites``: one suite per group key (each reset afterwards, so they can serve the next checkpoint).
    """
    results: dict[str, GroupScores] = {}
    for group in groups:
        suite = suites[group.key]
        counter = _image_counter(device)
        for input_view in group.input_views:
            for batch in batches_for_input_view(input_view):
                batch = move_to(batch, device)
                update_novel_views(suite, inverter, batch, reference_depth, options)
                counter.update(float(batch.target_image.shape[0] * batch.target_image.shape[1]))
        results[group.key] = _group_scores(suite, counter)
        suite.reset()
    return ProtocolResult(Protocol.MEAD_NOVEL_VIEW, results)


# ------------------------------------------------------------------------------------------ data helpers
def move_to(batch: object, device: torch.device) -> object:
    from lightning.fabric.utilities.apply_func import move_data_to_device

    return move_data_to_device(batch, device)


def datamodule_for_input_view(datamodule: InversionDataModule, split: str, input_view: str) -> InversionDataModule:
    """A copy of a MEAD-style DataModule whose ``split`` inverts ``input_view`` (targets: the other four)."""
    spec = datamodule.split_specs.get(split)
    if not isinstance(spec, MultiViewSplit):
        raise ValueError(f"the MEAD novel-view protocol needs a multi-view split (data=mead); split {split!r} "
                         f"of data {datamodule.name!r} is {type(spec).__name__}")
    return InversionDataModule(
        splits={split: dataclasses.replace(spec, input_view=input_view)},
        loaders={name: dataclasses.asdict(config) for name, config in datamodule.loader_configs.items()},
        seed=datamodule.seed, on_bad_sample=datamodule.on_bad_sample, image_check=datamodule.image_check,
        generator=datamodule.generator_source, name=f"{datamodule.name}[{input_view}]",
    )


def group_labels(protocol: Protocol) -> Mapping[str, str]:
    if protocol is Protocol.INPUT_VIEW:
        return {INPUT_VIEW_GROUP.key: INPUT_VIEW_GROUP.label}
    return {group.key: group.label for group in MEAD_INPUT_VIEW_GROUPS}
