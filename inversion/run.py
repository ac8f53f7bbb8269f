"""The invert command's logic (``invert.py`` is the thin Hydra entry point). See docs/invert.md.

Order: read the options and the edit directions, load the stage checkpoint (all quick checks first,
so a bad direction file or a wrong-stage checkpoint fails before any alignment or inversion), gather
the inputs (aligning raw photos if asked), invert them in batches, then write every image's files
and a timing line.

``method=<configs/method option>`` (PTI, Pose Opt.) inverts with an optimisation method instead of a
stage checkpoint; ``results_from=<an earlier output folder>`` re-renders the results saved there
(latents.pt, generator.safetensors) instead of inverting. Every file is rendered through the
image's own generator (``InversionResult.generator_for``), the tuned one for PTI results.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from cameras import CAMERA_RADIUS, FOCAL_LENGTH
from inversion.editing import LatentEdit, authors_glasses_decorrelated, load_direction
from inversion.inputs import (
    AlignedImage,
    AlignmentOptions,
    Resolutions,
    align_photos,
    expand_inputs,
    load_aligned_inputs,
    require_prepared,
    skipped_photos_message,
)
from inversion.loading import load_inverter, load_method_inverter
from inversion.mesh import AUTHORS_BORDER_FRACTION, DEFAULT_DENSITY_LEVEL
from inversion.outputs import (
    MULTI_VIEW_FILE,
    RenderSettings,
    as_float32,
    input_view_render,
    read_saved_result,
    sample_of,
    write_depth,
    write_edits,
    write_latents,
    write_mesh,
    write_multi_view,
    write_reconstruction,
    write_video,
)
from inversion.result import InversionResult, Inverter
from inversion.video import AUTHORS_FPS, AUTHORS_NUM_FRAMES, OrbitPath
from inversion.views import AUTHORS_YAWS_DEGREES, MultiViewSpec

PRECISIONS = ("fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")
TIMING_FILE = "timing.json"
AUTOMATIC_LEVEL = "auto"


class InvertConfigError(ValueError):
    """An invert option is wrong; the message names the key."""


class EditDirectionError(ValueError):
    """An edit direction file cannot be used; the message names the file."""


# ----------------------------------------------------------------------------- options
@dataclass(frozen=True)
class ViewsOptions:
    yaws_degrees: tuple[float, ...] = AUTHORS_YAWS_DEGREES
    pitches_degrees: tuple[float, ...] = (0.0,)
    radius: float = CAMERA_RADIUS


@dataclass(frozen=True)
class VideoOptions:
    enabled: bool = True
    num_frames: int = AUTHORS_NUM_FRAMES
    fps: int = AUTHORS_FPS


@dataclass(frozen=True)
class MeshOutputOptions:
    enabled: bool = True
    resolution: int = 256
    level: float | None = DEFAULT_DENSITY_LEVEL  # None: automatic (midpoint of the density range)
    border_fraction: float = AUTHORS_BORDER_FRACTION


@dataclass(frozen=True)
class EditOptions:
    directions: tuple[str, ...] = ()
    strengths: tuple[float, ...] = (-2.0, -1.0, 0.0, 1.0, 2.0)
    glasses_direction: str | None = None  # the authors' decorrelation for non-glasses directions


@dataclass(frozen=True)
class InvertOptions:
    inputs: tuple[str, ...]
    ckpt_path: str
    outputs: Path
    align: bool = False
    alignment: AlignmentOptions = field(default_factory=AlignmentOptions)
    views: ViewsOptions = field(default_factory=ViewsOptions)
    video: VideoOptions = field(default_factory=VideoOptions)
    mesh: MeshOutputOptions = field(default_factory=MeshOutputOptions)
    edit: EditOptions = field(default_factory=EditOptions)
    batch_size: int = 4
    device: str = "auto"
    precision: str = "fp32"
    encoder_resolution: int = 256
    render_seed: int = 0
    warmup: bool = True  # one untimed inversion first: start-up costs (CUDA context, kernels) are not timed
    results_from: Path | None = None  # re-render the results saved in this earlier output folder

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise InvertConfigError(f"batch_size must be positive, got {self.batch_size}")
        if self.device not in DEVICES:
            raise InvertConfigError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise InvertConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.video.num_frames < 1 or self.video.fps < 1:
            raise InvertConfigError("video.num_frames and video.fps must be positive")


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def _as_tuple(value: Any) -> tuple[Any, ...]:
    value = _plain(value)
    if value is None:
        return ()
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def _mesh_level(value: Any) -> float | None:
    if value is None or str(value) == AUTOMATIC_LEVEL:
        return None
    return float(value)


def checkpoint_needed(cfg: DictConfig) -> bool:
    """Whether ``ckpt_path`` is needed: not for a method (it has none) nor for re-rendering saved results."""
    return cfg.get("method") is None and cfg.get("results_from") is None


def options_from_config(cfg: DictConfig) -> InvertOptions:
    """The typed options of configs/invert.yaml (every key read here, nowhere else)."""
    video, mesh, edit, views = cfg.video, cfg.mesh, cfg.edit, cfg.views
    return InvertOptions(
        inputs=tuple(str(entry) for entry in _as_tuple(cfg.inputs)),
        ckpt_path=str(cfg.get("ckpt_path")),  # unused (None) with a method or results_from
        outputs=Path(str(cfg.outputs)),
        align=bool(cfg.align),
        alignment=AlignmentOptions(**_plain(cfg.alignment)),
        views=ViewsOptions(
            yaws_degrees=tuple(float(v) for v in _as_tuple(views.yaws_degrees)),
            pitches_degrees=tuple(float(v) for v in _as_tuple(views.pitches_degrees)),
            radius=float(views.radius),
        ),
        video=VideoOptions(enabled=bool(video.enabled), num_frames=int(video.num_frames), fps=int(video.fps)),
        mesh=MeshOutputOptions(
            enabled=bool(mesh.enabled), resolution=int(mesh.resolution), level=_mesh_level(mesh.level),
            border_fraction=float(mesh.border_fraction),
        ),
        edit=EditOptions(
            directions=tuple(str(path) for path in _as_tuple(edit.directions)),
            strengths=tuple(float(s) for s in _as_tuple(edit.strengths)),
            glasses_direction=None if edit.glasses_direction is None else str(edit.glasses_direction),
        ),
        batch_size=int(cfg.batch_size),
        device=str(cfg.device),
        precision=str(cfg.precision),
        encoder_resolution=int(cfg.encoder_resolution),
        render_seed=int(cfg.render_seed),
        warmup=bool(cfg.warmup),
        results_from=None if cfg.get("results_from") is None else Path(str(cfg.results_from)),
    )


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise InvertConfigError("device=cuda but no CUDA device is available (use device=auto or cpu)")
    return torch.device(requested)


# ----------------------------------------------------------------------------- edits
def load_edits(options: EditOptions, num_ws: int, w_dim: int) -> list[LatentEdit]:
    """Every direction file as a LatentEdit; a bad file raises EditDirectionError naming it."""
    glasses = _load_direction(options.glasses_direction, num_ws, w_dim) if options.glasses_direction else None
    edits: list[LatentEdit] = []
    for path in options.directions:
        direction = _load_direction(path, num_ws, w_dim)
        is_glasses_file = options.glasses_direction is not None and Path(path).resolve() == Path(
            options.glasses_direction).resolve()
        if glasses is not None and not is_glasses_file:
            edits.append(authors_glasses_decorrelated(direction, glasses))
        else:
            edits.append(LatentEdit.along(direction))
    names = [edit.direction.name for edit in edits]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise EditDirectionError(f"edit directions share a file name (their output name): {duplicates}")
    return edits


def _load_direction(path: str, num_ws: int, w_dim: int) -> Any:
    try:
        return load_direction(path, num_ws, w_dim)
    except (ValueError, FileNotFoundError) as error:
        raise EditDirectionError(str(error)) from error  # load_direction's messages name the file


# ----------------------------------------------------------------------------- timing
class Stopwatch:
    """Wall-clock seconds of a block; waits for queued GPU work at both ends (honest GPU times)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def measure(self, name: str) -> Iterator[None]:
        self._synchronize()
        start = time.perf_counter()
        yield
        self._synchronize()
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


@dataclass(frozen=True)
class ImageTiming:
    name: str
    batch_size: int
    inversion_seconds: float  # the batch's inversion time divided by its size
    rendering_seconds: dict[str, float]  # per output kind
    device: str
    precision: str

    @property
    def rendering_total(self) -> float:
        return sum(self.rendering_seconds.values())

    def line(self) -> str:
        parts = ", ".join(f"{kind} {seconds:.3f}" for kind, seconds in self.rendering_seconds.items())
        return (
            f"{self.name}: inversion {self.inversion_seconds:.4f} s/image (batch of {self.batch_size}), "
            f"rendering {self.rendering_total:.3f} s ({parts}) [{self.device}, {self.precision}]"
        )

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "rendering_total_seconds": self.rendering_total}


# ----------------------------------------------------------------------------- the run
@dataclass(frozen=True)
class InvertedImage:
    name: str
    source: str
    output_dir: Path
    files: list[Path]
    timing: ImageTiming


@dataclass(frozen=True)
class InvertSummary:
    outputs: Path
    images: list[InvertedImage]
    skipped_message: str | None  # photos alignment could not use, if any


def autocast(device: torch.device, precision: str) -> Any:
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def gather_inputs(options: InvertOptions, resolutions: Resolutions) -> tuple[list[AlignedImage], str | None]:
    """The aligned images to invert, and a message about skipped photos (align=true only)."""
    paths = expand_inputs(options.inputs)
    if not options.align:
        return load_aligned_inputs(paths, resolutions), None
    aligned_dir, report = align_photos(paths, options.outputs, options.alignment)
    skipped = skipped_photos_message(report)
    if skipped:
        print(skipped)
    require_prepared(report)
    return load_aligned_inputs([aligned_dir], resolutions), skipped


def batches(images: Sequence[AlignedImage], batch_size: int) -> Iterator[list[AlignedImage]]:
    for first in range(0, len(images), batch_size):
        yield list(images[first : first + batch_size])


@torch.no_grad()
def invert_batch(
    inverter: Inverter, batch: list[AlignedImage], device: torch.device, precision: str
) -> tuple[InversionResult, float]:
    """(float32 result of the batch, seconds); the clock covers the inversion only, synchronised."""
    image = torch.stack([item.image for item in batch]).to(device)
    image_full = torch.stack([item.image_full for item in batch]).to(device)
    camera = torch.stack([item.camera for item in batch]).to(device)
    watch = Stopwatch(device)
    with watch.measure("inversion"), autocast(device, precision):
        result = inverter.invert(image, image_full, camera)
    return as_float32(result), watch.seconds["inversion"]


def write_image_outputs(
    frozen: Any,
    item: AlignedImage,
    single: InversionResult,
    options: InvertOptions,
    edits: Sequence[LatentEdit],
    device: torch.device,
) -> tuple[list[Path], dict[str, float]]:
    """Every file of one image, rendered through the image's generator (``single.generator_for(frozen)``:
    ``frozen`` itself, or the image's tuned copy); returns (files, rendering seconds per output kind)."""
    G = single.generator_for(frozen)
    out_dir = options.outputs / item.name
    settings = render_settings(G, options)
    camera = item.camera[None].to(device)
    watch = Stopwatch(device)
    files: list[Path] = []
    with torch.no_grad(), autocast(device, options.precision):
        with watch.measure("reconstruction+depth"):
            render = input_view_render(G, single, camera, settings.seed)
            files.append(write_reconstruction(item.image_full, render, out_dir))
            files += write_depth(render, out_dir)
        files += write_latents(single, item.camera, out_dir)
        with watch.measure("multi_view"):
            files.append(write_multi_view(G, single.novel_view_planes, single.ws, out_dir / MULTI_VIEW_FILE, settings))
        if options.video.enabled:
            with watch.measure("video"):
                orbit = OrbitPath(num_frames=options.video.num_frames, radius=options.views.radius)
                files.append(write_video(G, single, out_dir, orbit, options.video.fps, settings).path)
        if options.mesh.enabled:
            with watch.measure("mesh"):
                mesh = options.mesh
                files.append(write_mesh(G, single, out_dir, mesh.resolution, mesh.level, mesh.border_fraction))
        if edits:
            with watch.measure("edits"):
                for edit in edits:
                    files += write_edits(G, single, camera, edit, options.edit.strengths, out_dir, settings).images
    return files, watch.seconds


def render_settings(G: Any, options: InvertOptions) -> RenderSettings:
    pivot = tuple(float(v) for v in G.rendering_kwargs.get("avg_camera_pivot", (0.0, 0.0, 0.2)))
    views = MultiViewSpec(
        yaws_degrees=options.views.yaws_degrees, pitches_degrees=options.views.pitches_degrees,
        radius=options.views.radius, pivot=pivot, focal=FOCAL_LENGTH,
    )
    return RenderSettings(views=views, seed=options.render_seed)


def run_invert(cfg: DictConfig) -> InvertSummary:
    """Everything `python invert.py` does; returns what was written."""
    options = options_from_config(cfg)
    device = resolve_device(options.device)
    inverter = build_inverter(cfg, options, device)
    G = inverter.generator if inverter is not None else saved_results_generator(cfg, device)
    edits = load_edits(options.edit, G.num_ws, int(G.w_avg.shape[-1]))
    resolutions = Resolutions(encoder=options.encoder_resolution, full=int(G.img_resolution))
    images, skipped = gather_inputs(options, resolutions)
    print(f"inverting {len(images)} image(s) on {device} ({options.precision}) into {options.outputs}")
    inverted: list[InvertedImage] = []
    # WHY not for methods: a warm-up would repeat a whole per-image optimisation (minutes), whose
    # start-up costs are negligible next to it.
    if options.warmup and inverter is not None and cfg.get("method") is None:
        invert_batch(inverter, images[: options.batch_size], device, options.precision)
    for batch in batches(images, options.batch_size):
        if inverter is None:
            assert options.results_from is not None
            singles, seconds = [saved_result(options.results_from / item.name, G) for item in batch], 0.0
        else:
            result, seconds = invert_batch(inverter, batch, device, options.precision)
            singles = [sample_of(result, index) for index in range(len(batch))]
        for item, single in zip(batch, singles):
            files, rendering = write_image_outputs(G, item, single, options, edits, device)
            timing = ImageTiming(item.name, len(batch), seconds / len(batch), rendering, device.type, options.precision)
            (options.outputs / item.name / TIMING_FILE).write_text(json.dumps(timing.as_json(), indent=1))
            print(timing.line())
            inverted.append(InvertedImage(item.name, item.source, options.outputs / item.name, files, timing))
    write_timing_summary(options.outputs, inverted)
    return InvertSummary(outputs=options.outputs, images=inverted, skipped_message=skipped)


def build_inverter(cfg: DictConfig, options: InvertOptions, device: torch.device) -> Inverter | None:
    """The stage of ``ckpt_path``, the method of ``method``, or None when re-rendering ``results_from``."""
    method = cfg.get("method")
    if options.results_from is not None:
        if not options.results_from.is_dir():
            raise InvertConfigError(f"results_from={options.results_from} is not a folder of earlier invert outputs")
        return None
    if method is not None:
        if cfg.get("ckpt_path"):
            raise InvertConfigError(
                f"ckpt_path={cfg.ckpt_path} is a stage checkpoint, but method={method.get('name', 'a method')} is "
                "selected: its hybrid start is method.init_checkpoint=<stage checkpoint>"
            )
        return load_method_inverter(cfg, device)
    return load_inverter(cfg, options.ckpt_path, device)


def saved_result(folder: Path, frozen: Any) -> InversionResult:
    try:
        return read_saved_result(folder, frozen)
    except (FileNotFoundError, ValueError) as error:  # TunedGeneratorError (a ValueError) names its file
        raise InvertConfigError(f"results_from: {error}") from error


def saved_results_generator(cfg: DictConfig, device: torch.device) -> Any:
    """The frozen generator saved results are rendered with (the one they were inverted with)."""
    return hydra.utils.instantiate(cfg.generator).to(device).eval()


def write_timing_summary(outputs: Path, inverted: Sequence[InvertedImage]) -> Path:
    """<outputs>/timing.json: every image's timing and the means."""
    records = [image.timing.as_json() for image in inverted]
    count = max(len(records), 1)
    summary = {
        "images": records,
        "mean_inversion_seconds": sum(r["inversion_seconds"] for r in records) / count,
        "mean_rendering_seconds": sum(r["rendering_total_seconds"] for r in records) / count,
    }
    outputs.mkdir(parents=True, exist_ok=True)
    (outputs / TIMING_FILE).write_text(json.dumps(summary, indent=1))
    return outputs / TIMING_FILE


__all__ = [
    "EditDirectionError",
    "checkpoint_needed",
    "InvertConfigError",
    "InvertOptions",
    "InvertSummary",
    "options_from_config",
    "run_invert",
]
