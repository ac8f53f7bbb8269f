"""GOAE's background depth regularisation (paper Sec. 3.1 and 4.1, eq. 4).

    L_BG = || D (.) M - D_avg (.) M ||_2

D: expected depth of the inverted w+ rendered at the canonical FRONT camera, at the neural rendering
resolution ([N, 1, R, R]); M: background mask of that same front render (1 = background, detached);
D_avg: average background depth of canonical samples (z -> mapping(z, c_front) rendered at c_front),
estimated once by ``python -m data_prep.estimate_background_depth`` and stored in a JSON file.

Pieces (see docs/background_depth.md):
* ``render_front_depth(G, ws)``: render ws at the canonical camera -> ``FrontViewRender``;
* maskers: ``GeometricBackgroundMasker`` (depth/opacity rule, no extra network) and
  ``FaceParsingBackgroundMasker`` (BiSeNet class 0, the paper's choice); both return detached masks;
* ``BackgroundDepthLoss``: the loss, form ``mse`` (default) or ``paper_l2_norm``;
* ``BackgroundDepthStats`` + ``save_background_depth_stats`` / ``load_background_depth_stats``;
* ``estimate_background_depth``: the D_avg estimate itself.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from cameras import canonical_camera_label
from networks.eg3d.outputs import RendererDraws
from networks.face_parsing import BACKGROUND_CLASS, BiSeNet, load_face_parser, normalise_for_face_parser

STATS_FORMAT = "goae-background-depth/1"
STATS_SUFFIX = ".background_depth.json"
PER_PIXEL_SUFFIX = ".background_depth.pt"


# ---------------------------------------------------------------------------------------------- render
@dataclass
class FrontViewRender:
    """A rendering at the canonical front camera: what L_BG and its mask need.

    depth: expected ray depth [N, 1, R, R] (R = neural rendering resolution; keeps the graph);
    image: super-resolved image [N, 3, H, W] in about [-1, 1]; weights_sum: opacity [N, 1, R, R].
    """

    depth: torch.Tensor
    image: torch.Tensor
    weights_sum: torch.Tensor


class FrontRenderingGenerator(Protocol):
    """The part of ``TriPlaneGenerator`` this module uses."""

    neural_rendering_resolution: int
    rendering_kwargs: dict

    def mapping(self, z: torch.Tensor, c: torch.Tensor, truncation_psi: float = 1.0) -> torch.Tensor: ...

    def synthesis(
        self, ws: torch.Tensor, c: torch.Tensor, noise_mode: str = "const", draws: Any = None
    ) -> Any: ...


def render_front_depth(
    generator: FrontRenderingGenerator, ws: torch.Tensor, draws: RendererDraws | None = None
) -> FrontViewRender:
    """Render ws [N, num_ws, w_dim] at the canonical camera (GOAE's c_front).

    ``draws=None`` uses fresh random renderer draws, as the official code does during training;
    pass ``deterministic_draws(...)`` for reproducible renders.
    """
    c_front = canonical_camera_label(ws.shape[0], device=ws.device, dtype=ws.dtype)
    out = generator.synthesis(ws, c_front, noise_mode="const", draws=draws)
    return FrontViewRender(depth=out.image_depth, image=out.image, weights_sum=out.weights_sum)


def deterministic_draws(
    generator: FrontRenderingGenerator, batch_size: int, device: torch.device
) -> RendererDraws:
    """Renderer draws without jitter (coarse samples on the linspace grid, evenly spaced importance)."""
    resolution = int(generator.neural_rendering_resolution)
    return RendererDraws.deterministic(
        batch_size,
        resolution * resolution,
        int(generator.rendering_kwargs["depth_resolution"]),
        int(generator.rendering_kwargs["depth_resolution_importance"]),
        device=device,
    )


# ---------------------------------------------------------------------------------------------- masks
class MaskMethod(str, Enum):
    GEOMETRIC = "geometric"
    BISENET = "bisenet"


class BackgroundMasker(Protocol):
    """Turns a front render into a detached float mask [N, 1, R, R] (1 = background)."""

    method: MaskMethod

    def __call__(self, render: FrontViewRender) -> torch.Tensor: ...

    def parameters_for_record(self) -> dict[str, float | int | str]: ...


def otsu_thresholds(values: torch.Tensor, num_bins: int) -> torch.Tensor:
    """Per-row Otsu threshold of values [N, P]: the split maximising between-class variance. -> [N].

    Each row is histogrammed into ``num_bins`` equal bins over its own [min, max]; the threshold
    is the upper edge of the best lower class. A constant row gets its value (everything >= it).
    float64, so comparing float64 values against it agrees exactly with the binning.
    """
    values = values.detach().double()
    low = values.min(dim=1, keepdim=True).values
    high = values.max(dim=1, keepdim=True).values
    span = (high - low).clamp_min(1e-12)
    bin_index = ((values - low) / span * num_bins).floor().clamp(0, num_bins - 1).long()
    counts = torch.zeros(values.shape[0], num_bins, dtype=torch.float64, device=values.device)
    counts.scatter_add_(1, bin_index, torch.ones_like(values))
    centres = (
        low + (torch.arange(num_bins, device=values.device, dtype=torch.float64) + 0.5) * span / num_bins
    )
    weight_low = counts.cumsum(1)[:, :-1]
    weight_high = counts.sum(1, keepdim=True) - weight_low
    mass_low = (counts * centres).cumsum(1)[:, :-1]
    mass_high = (counts * centres).sum(1, keepdim=True) - mass_low
    mean_low = mass_low / weight_low.clamp_min(1e-12)
    mean_high = mass_high / weight_high.clamp_min(1e-12)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    best = between.argmax(dim=1, keepdim=True)  # split after bin `best`
    thresholds = low + (best + 1).double() * span / num_bins
    constant = (high - low) <= 1e-12
    return torch.where(constant, low, thresholds).squeeze(1)


@dataclass(frozen=True)
class GeometricBackgroundMasker:
    """Background from the generator's own geometry, without a parsing network.

    A pixel is background when its depth is in the FAR class of a two-class (Otsu) split of that
    image's depth histogram (``histogram_bins`` equal bins over the image's own depth range).
    Why: canonical EG3D faces show a clear depth gap between the face and the far background
    "wall" (paper Sec. 3.1), so the far mode is the background. The split is relative on purpose:
    when an inversion pulls the background forward (the failure L_BG exists to correct), its far
    part is still selected and pushed back to D_avg. No opacity rule and no absolute depth floor:
    see docs/background_depth.md for why both misbehave.
    """

    histogram_bins: int = 64
    method: MaskMethod = field(default=MaskMethod.GEOMETRIC, init=False)

    @torch.no_grad()
    def __call__(self, render: FrontViewRender) -> torch.Tensor:
        depth = render.depth.detach()
        n = depth.shape[0]
        far_split = otsu_thresholds(depth.reshape(n, -1), self.histogram_bins).view(n, 1, 1, 1)
        return (depth.double() >= far_split).to(depth.dtype)

    def parameters_for_record(self) -> dict[str, float | int | str]:
        return {"rule": "otsu_far_class", "histogram_bins": self.histogram_bins}


class FaceParsingBackgroundMasker:
    """The paper's mask: BiSeNet face parsing (class 0 = background) of the front render.

    The image is resized to 512 and ImageNet-normalised, parsed (argmax of the main head), and the
    512x512 background indicator is area-averaged down to the depth resolution; a depth pixel is
    background when at least ``min_background_fraction`` of the image pixels it covers are.
    Not an nn.Module on purpose: the frozen parser must stay out of checkpoints and DDP.
    """

    method = MaskMethod.BISENET

    def __init__(self, parser: BiSeNet, min_background_fraction: float = 0.5) -> None:
        self.parser = parser.eval().requires_grad_(False)
        self.min_background_fraction = min_background_fraction

    def to(self, device: torch.device | str) -> FaceParsingBackgroundMasker:
        self.parser.to(device)
        return self

    @torch.no_grad()
    def __call__(self, render: FrontViewRender) -> torch.Tensor:
        background = self.background_indicator(render.image)
        resolution = render.depth.shape[-2:]
        fraction = F.interpolate(background, size=resolution, mode="area")
        return (fraction >= self.min_background_fraction).to(render.depth.dtype)

    @torch.no_grad()
    def background_indicator(self, images: torch.Tensor) -> torch.Tensor:
        """[N, 1, 512, 512] hard indicator (0/1) that the parser's argmax class is background."""
        logits = self.parser(normalise_for_face_parser(images.detach().float()))
        return (logits.argmax(dim=1, keepdim=True) == BACKGROUND_CLASS).float()

    def parameters_for_record(self) -> dict[str, float | int | str]:
        return {
            "parser": "bisenet-19",
            "background_class": BACKGROUND_CLASS,
            "min_background_fraction": self.min_background_fraction,
            "downsampling": "area",
        }


def build_background_masker(
    method: MaskMethod | str,
    bisenet_weights: str | Path | None = None,
    device: torch.device | str = "cpu",
) -> BackgroundMasker:
    """The configured masker; 'bisenet' needs ``bisenet_weights`` (79999_iter.pth)."""
    method = MaskMethod(method)
    if method is MaskMethod.GEOMETRIC:
        return GeometricBackgroundMasker()
    if bisenet_weights is None:
        raise ValueError(
            "mask method 'bisenet' needs the face-parsing weights path (79999_iter.pth from "
            "zllrunning/face-parsing.PyTorch); give it, or use the 'geometric' mask"
        )
    return FaceParsingBackgroundMasker(load_face_parser(bisenet_weights, device=device))


# ---------------------------------------------------------------------------------------------- stats
class BackgroundDepthStatsError(ValueError):
    """A background-depth statistics file is missing, malformed, or does not fit the generator."""


@dataclass(frozen=True)
class BackgroundDepthStats:
    """D_avg and how it was obtained.

    mean_depth: average depth over ALL background pixels of all samples (pixel-weighted);
    per_pixel: [R, R] mean background depth per pixel over the samples where that pixel was
    background; pixels never background hold ``mean_depth`` (count in ``fallback_pixels``).
    """

    mean_depth: float
    per_pixel: torch.Tensor | None
    num_samples: int
    mask_method: str
    mask_parameters: dict[str, Any]
    generator_name: str
    generator_checkpoint: str | None
    generator_checkpoint_sha256: str | None
    neural_rendering_resolution: int
    background_fraction: float
    fallback_pixels: int
    seed: int
    truncation_psi: float
    created: str

    def check_matches(
        self, generator: FrontRenderingGenerator, source: str | Path = "background depth stats"
    ) -> None:
        """Raise if these statistics were made at another neural rendering resolution."""
        resolution = int(generator.neural_rendering_resolution)
        if resolution != self.neural_rendering_resolution:
            raise BackgroundDepthStatsError(
                f"{source}: D_avg was estimated at neural rendering resolution "
                f"{self.neural_rendering_resolution} (generator '{self.generator_name}'), but the generator "
                f"renders at {resolution}; re-run python -m data_prep.estimate_background_depth for it"
            )


def default_stats_path(checkpoint: str | Path) -> Path:
    """``<dir>/<checkpoint stem>.background_depth.json`` beside the generator checkpoint."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + STATS_SUFFIX)


def per_pixel_path_for(stats_path: Path) -> Path:
    name = stats_path.name
    stem = name[: -len(STATS_SUFFIX)] if name.endswith(STATS_SUFFIX) else stats_path.stem
    return stats_path.with_name(stem + PER_PIXEL_SUFFIX)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def _atomic_target(path: Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; os.replace it onto ``path`` on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def save_background_depth_stats(stats: BackgroundDepthStats, path: str | Path) -> Path:
    """Write the JSON (and the per-pixel map as a sibling .pt); each file appears atomically."""
    path = Path(path)
    record = {key: value for key, value in vars(stats).items() if key != "per_pixel"}
    record = {"format": STATS_FORMAT, **record, "per_pixel_file": None}
    if stats.per_pixel is not None:
        map_path = per_pixel_path_for(path)
        with _atomic_target(map_path) as temporary:
            torch.save({"per_pixel": stats.per_pixel.detach().cpu().float().contiguous()}, temporary)
        record["per_pixel_file"] = map_path.name
        record["per_pixel_sha256"] = file_sha256(map_path)
    with _atomic_target(path) as temporary:
        temporary.write_text(json.dumps(record, indent=2) + "\n")
    return path


_REQUIRED_FIELDS: dict[str, type | tuple[type, ...]] = {
    "mean_depth": (int, float),
    "num_samples": int,
    "mask_method": str,
    "mask_parameters": dict,
    "generator_name": str,
    "neural_rendering_resolution": int,
    "background_fraction": (int, float),
    "fallback_pixels": int,
    "seed": int,
    "truncation_psi": (int, float),
    "created": str,
}


def load_background_depth_stats(path: str | Path) -> BackgroundDepthStats:
    """Read and validate a stats file; every problem raises BackgroundDepthStatsError naming it."""
    path = Path(path)
    record = _read_record(path)
    _validate_record(record, path)
    per_pixel = _read_per_pixel(record, path)
    return BackgroundDepthStats(
        mean_depth=float(record["mean_depth"]),
        per_pixel=per_pixel,
        num_samples=record["num_samples"],
        mask_method=record["mask_method"],
        mask_parameters=record["mask_parameters"],
        generator_name=record["generator_name"],
        generator_checkpoint=record.get("generator_checkpoint"),
        generator_checkpoint_sha256=record.get("generator_checkpoint_sha256"),
        neural_rendering_resolution=record["neural_rendering_resolution"],
        background_fraction=float(record["background_fraction"]),
        fallback_pixels=record["fallback_pixels"],
        seed=record["seed"],
        truncation_psi=float(record["truncation_psi"]),
        created=record["created"],
    )


def _read_record(path: Path) -> dict[str, Any]:
    hint = "create it with python -m data_prep.estimate_background_depth"
    if not path.is_file():
        raise BackgroundDepthStatsError(f"background depth stats file '{path}' does not exist; {hint}")
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BackgroundDepthStatsError(f"'{path}' is not valid JSON ({error}); {hint}") from error
    if not isinstance(record, dict) or record.get("format") != STATS_FORMAT:
        raise BackgroundDepthStatsError(
            f"'{path}' is not a background depth stats file (format must be {STATS_FORMAT!r})"
        )
    return record


def _validate_record(record: dict[str, Any], path: Path) -> None:
    for name, kind in _REQUIRED_FIELDS.items():
        value = record.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise BackgroundDepthStatsError(f"'{path}': field '{name}' is missing or not {kind}: {value!r}")
    if not math.isfinite(record["mean_depth"]) or record["mean_depth"] <= 0:
        raise BackgroundDepthStatsError(
            f"'{path}': mean_depth {record['mean_depth']!r} is not a positive finite depth"
        )
    if record["num_samples"] < 1 or record["neural_rendering_resolution"] < 1:
        raise BackgroundDepthStatsError(
            f"'{path}': num_samples and neural_rendering_resolution must be positive"
        )
    if record["mask_method"] not in {method.value for method in MaskMethod}:
        raise BackgroundDepthStatsError(f"'{path}': unknown mask_method {record['mask_method']!r}")


def _read_per_pixel(record: dict[str, Any], path: Path) -> torch.Tensor | None:
    name = record.get("per_pixel_file")
    if name is None:
        return None
    map_path = path.parent / str(name)
    if not map_path.is_file():
        raise BackgroundDepthStatsError(
            f"'{path}' refers to per-pixel map '{map_path}', which does not exist"
        )
    if record.get("per_pixel_sha256") not in (None, file_sha256(map_path)):
        raise BackgroundDepthStatsError(
            f"'{map_path}' does not match the sha256 recorded in '{path}' (changed or mixed up)"
        )
    try:
        per_pixel = torch.load(map_path, map_location="cpu", weights_only=True)["per_pixel"]
    except Exception as error:  # any unreadable content is the same user error
        raise BackgroundDepthStatsError(
            f"per-pixel map '{map_path}' could not be read ({type(error).__name__})"
        ) from error
    resolution = record["neural_rendering_resolution"]
    if not isinstance(per_pixel, torch.Tensor) or tuple(per_pixel.shape) != (resolution, resolution):
        shape = list(per_pixel.shape) if isinstance(per_pixel, torch.Tensor) else type(per_pixel).__name__
        raise BackgroundDepthStatsError(
            f"'{map_path}': per-pixel map is {shape}, expected [{resolution}, {resolution}]"
        )
    if not bool(torch.isfinite(per_pixel).all()):
        raise BackgroundDepthStatsError(f"'{map_path}': per-pixel map has non-finite values")
    return per_pixel


# ---------------------------------------------------------------------------------------------- loss
class BackgroundLossForm(str, Enum):
    """How || D (.) M - D_avg (.) M || is normalised.

    mse: F.mse_loss(D*M, D_avg*M) = sum of squared masked errors / (N*R*R) (the pSp/e4e-style code
      form; independent of the resolution; the default);
    paper_l2_norm: eq. 4 literally, the (non-squared) L2 norm per sample, averaged over the batch
      (grows with R: about R times the RMS masked error).
    """

    MSE = "mse"
    PAPER_L2_NORM = "paper_l2_norm"


class BackgroundDepthLoss(nn.Module):
    """L_BG between the front-view depth [N, 1, R, R] and D_avg (scalar or [R, R] map) on mask M.

    The target is a non-persistent buffer: it follows .to(device) but stays out of checkpoints.
    The mask is detached here as well, so gradients reach the depth only.
    """

    target: torch.Tensor

    def __init__(
        self, target: float | torch.Tensor, form: BackgroundLossForm | str = BackgroundLossForm.MSE
    ) -> None:
        super().__init__()
        target_tensor = torch.as_tensor(target, dtype=torch.float32).detach().clone()
        if target_tensor.ndim not in (0, 2):
            raise ValueError(
                f"D_avg must be a scalar or an [R, R] map, got shape {list(target_tensor.shape)}"
            )
        self.register_buffer("target", target_tensor, persistent=False)
        self.form = BackgroundLossForm(form)

    @classmethod
    def from_stats(
        cls,
        stats: BackgroundDepthStats,
        target: str = "scalar",
        form: BackgroundLossForm | str = BackgroundLossForm.MSE,
    ) -> BackgroundDepthLoss:
        """``target``: 'scalar' (the paper's single D_avg) or 'per_pixel' (the [R, R] map)."""
        if target == "scalar":
            return cls(stats.mean_depth, form)
        if target != "per_pixel":
            raise ValueError(f"D_avg target must be 'scalar' or 'per_pixel', got {target!r}")
        if stats.per_pixel is None:
            raise BackgroundDepthStatsError("the stats have no per-pixel map; re-estimate with --per-pixel")
        return cls(stats.per_pixel, form)

    def forward(self, depth: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if depth.ndim != 4 or depth.shape[1] != 1 or mask.shape != depth.shape:
            raise ValueError(
                f"depth and mask must both be [N, 1, R, R], got {list(depth.shape)} and {list(mask.shape)}"
            )
        if self.target.ndim == 2 and tuple(self.target.shape) != tuple(depth.shape[-2:]):
            raise ValueError(
                f"per-pixel D_avg is {list(self.target.shape)} but depth is {list(depth.shape[-2:])}"
            )
        mask = mask.detach().to(depth.dtype)
        masked_error = (depth - self.target.to(depth.dtype)) * mask  # == D*M - D_avg*M
        if self.form is BackgroundLossForm.MSE:
            return masked_error.square().mean()
        return torch.linalg.vector_norm(masked_error.flatten(1), dim=1).mean()


# ---------------------------------------------------------------------------------------------- estimate
class BackgroundDepthAccumulator:
    """Running float64 sums of background depth: overall and per pixel."""

    def __init__(self, resolution: int) -> None:
        self.resolution = resolution
        self.depth_sum = torch.zeros(resolution, resolution, dtype=torch.float64)
        self.count = torch.zeros(resolution, resolution, dtype=torch.float64)
        self.num_samples = 0

    def add(self, depth: torch.Tensor, mask: torch.Tensor) -> None:
        """depth, mask [N, 1, R, R]; mask 1 = background."""
        if depth.shape[-2:] != (self.resolution, self.resolution) or mask.shape != depth.shape:
            raise ValueError(
                f"expected depth and mask [N, 1, {self.resolution}, {self.resolution}], "
                f"got {list(depth.shape)} and {list(mask.shape)}"
            )
        weights = mask.detach().double().cpu()
        self.depth_sum += (depth.detach().double().cpu() * weights).sum(dim=(0, 1))
        self.count += weights.sum(dim=(0, 1))
        self.num_samples += depth.shape[0]

    def mean_depth(self) -> float:
        total = float(self.count.sum())
        if total == 0:
            raise RuntimeError(
                f"no background pixel in {self.num_samples} samples: the mask found no background, so D_avg "
                "is undefined (check the mask method and its parameters)"
            )
        return float(self.depth_sum.sum()) / total

    def per_pixel(self) -> torch.Tensor:
        """[R, R] float32; pixels never background get the overall mean (see ``fallback_pixels``)."""
        fallback = torch.full_like(self.depth_sum, self.mean_depth())
        return torch.where(self.count > 0, self.depth_sum / self.count.clamp_min(1e-12), fallback).float()

    def fallback_pixels(self) -> int:
        return int((self.count == 0).sum())

    def background_fraction(self) -> float:
        return float(self.count.sum()) / max(1, self.num_samples * self.resolution**2)


@dataclass(frozen=True)
class GeneratorRecord:
    """Which generator the statistics belong to."""

    name: str
    checkpoint: str | None
    checkpoint_sha256: str | None


@torch.no_grad()
def estimate_background_depth(
    generator: FrontRenderingGenerator,
    masker: BackgroundMasker,
    num_samples: int,
    generator_record: GeneratorRecord,
    batch_size: int = 8,
    seed: int = 0,
    truncation_psi: float = 1.0,
    device: torch.device | str = "cpu",
    on_batch: Callable[[int, int], None] | None = None,
) -> BackgroundDepthStats:
    """D_avg over ``num_samples`` canonical samples, conditioned and rendered at c_front.

    z ~ N(0, I) from a torch.Generator seeded with ``seed`` (drawn batch by batch, so the same seed
    and batch size give the same samples); deterministic renderer draws; masks from ``masker``.
    """
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples and batch_size must be positive, got {num_samples} and {batch_size}")
    device = torch.device(device)
    resolution = int(generator.neural_rendering_resolution)
    accumulator = BackgroundDepthAccumulator(resolution)
    z_source = torch.Generator(device="cpu").manual_seed(seed)
    done = 0
    while done < num_samples:
        count = min(batch_size, num_samples - done)
        z = torch.randn(count, int(generator.z_dim), generator=z_source).to(device)  # type: ignore[attr-defined]
        ws = generator.mapping(z, canonical_camera_label(count, device=device), truncation_psi=truncation_psi)
        render = render_front_depth(generator, ws, draws=deterministic_draws(generator, count, device))
        accumulator.add(render.depth, masker(render))
        done += count
        if on_batch is not None:
            on_batch(done, num_samples)
    return BackgroundDepthStats(
        mean_depth=accumulator.mean_depth(),
        per_pixel=accumulator.per_pixel(),
        num_samples=num_samples,
        mask_method=masker.method.value,
        mask_parameters=masker.parameters_for_record(),
        generator_name=generator_record.name,
        generator_checkpoint=generator_record.checkpoint,
        generator_checkpoint_sha256=generator_record.checkpoint_sha256,
        neural_rendering_resolution=resolution,
        background_fraction=accumulator.background_fraction(),
        fallback_pixels=accumulator.fallback_pixels(),
        seed=seed,
        truncation_psi=truncation_psi,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )


def without_per_pixel_map(stats: BackgroundDepthStats) -> BackgroundDepthStats:
    """The same statistics with only the scalar (what is saved without --per-pixel)."""
    return BackgroundDepthStats(**{**vars(stats), "per_pixel": None})
