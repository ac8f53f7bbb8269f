"""PTI's pivot search on EG3D: the latent (w or w+) that best renders each image at its camera.

Facts from danielroich/PTI and the EG3D projector (shared/notes/peers.md §5): w_avg and w_std from
samples mapped at the canonical camera; the search renders at the image's own camera; Adam (0.9, 0.999)
over w and the noise maps with the scheduled learning rate and w noise of :mod:`.schedule`; the loss is
the VGG16 LPIPS distance at 256 px (area-downsampled) plus 1e5 x the noise regulariser; the pivot is the
optimised latent without the step noise. With pose optimisation the camera of each image is optimised
too (:mod:`.pose_optimisation`).

Images of a batch are searched together: every image has its own latent, noise maps and camera, the
loss is the SUM of per-image losses and Adam is element-wise, so each image follows its own
trajectory (the same as alone, up to float rounding of batched kernels).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from cameras import canonical_camera_label
from inversion.optimisation.noise import PerImageNoise
from inversion.optimisation.pose_optimisation import CameraAdjustment, PoseSettings
from inversion.optimisation.progress import StepProgress
from inversion.optimisation.schedule import cosine_rampdown, pti_learning_rate, w_noise_scale

SPACES = ("w", "w+")
# images [N, 3, H, W] and targets -> per-image distances [N]
ImageDistance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class PivotSettings:
    """The pivot search (docs/pti.md). Defaults: PTI's (W space, 450 steps, 600 w_avg samples)."""

    steps: int = 450
    space: str = "w"
    learning_rate: float = 0.01
    lr_rampdown: float = 0.25
    lr_rampup: float = 0.05
    w_noise_factor: float = 0.05
    w_noise_ramp: float = 0.75
    optimise_noise: bool = True
    noise_regularisation: float = 1e5
    w_avg_samples: int = 600
    truncation_psi: float = 1.0

    def __post_init__(self) -> None:
        if self.space not in SPACES:
            raise ValueError(f"pivot.space must be one of {SPACES}, got {self.space!r}")
        if self.steps < 0 or self.w_avg_samples < 2:
            raise ValueError("pivot.steps must be >= 0 and pivot.w_avg_samples >= 2")


@dataclass(frozen=True)
class LatentStatistics:
    """w_avg [w_dim] and w_std (the RMS distance of the samples from w_avg, a scalar) of mapped samples."""

    w_avg: torch.Tensor
    w_std: float


@torch.no_grad()
def latent_statistics(generator: nn.Module, num_samples: int, seed: int, truncation_psi: float = 1.0) -> LatentStatistics:
    """PTI's w_avg / w_std from ``num_samples`` z's mapped at the canonical camera."""
    device = generator.w_avg.device
    z = torch.randn(num_samples, generator.z_dim, generator=torch.Generator().manual_seed(seed)).to(device)
    w = generator.mapping(z, canonical_camera_label(num_samples, device=device), truncation_psi=truncation_psi)[:, 0]
    w_avg = w.mean(dim=0)
    w_std = float(((w - w_avg).square().sum() / num_samples).sqrt())
    return LatentStatistics(w_avg=w_avg, w_std=w_std)


@dataclass
class PivotSearchResult:
    """ws: the pivots [N, num_ws, w_dim]; cameras: the cameras they were found at [N, 25] (optimised
    ones with pose optimisation); distances: the pivot loss of every image at every step [steps, N]."""

    ws: torch.Tensor
    cameras: torch.Tensor
    distances: torch.Tensor


def initial_latents(settings: PivotSettings, statistics: LatentStatistics, num_images: int, num_ws: int,
                    start_ws: torch.Tensor | None) -> torch.Tensor:
    """The optimised tensor at step 0: [N, 1, w_dim] (w) or [N, num_ws, w_dim] (w+), from w_avg or ``start_ws``."""
    rows = 1 if settings.space == "w" else num_ws
    if start_ws is None:
        return statistics.w_avg.reshape(1, 1, -1).repeat(num_images, rows, 1)
    if settings.space == "w" and not torch.equal(start_ws, start_ws[:, :1].expand_as(start_ws)):
        raise ValueError(
            "the initial inverter returned a w+ with different rows, which the W-space pivot search cannot start "
            "from: set pivot.space=w+ for an encoder-initialised (hybrid) search"
        )
    return start_ws[:, :rows].detach().clone()


def search_pivot(
    generator: nn.Module,
    target: torch.Tensor,
    cameras: torch.Tensor,
    settings: PivotSettings,
    statistics: LatentStatistics,
    distance: ImageDistance,
    rng: torch.Generator,
    start_ws: torch.Tensor | None = None,
    pose: PoseSettings | None = None,
    progress: StepProgress | None = None,
) -> PivotSearchResult:
    """Search the pivots of ``target`` [N, 3, H, W] (in [-1, 1]) seen from ``cameras`` [N, 25].

    ``generator`` must be a private copy (its noise buffers are swapped while it renders);
    ``start_ws``: the hybrid start (an encoder's w+), else w_avg.
    """
    num_images, num_ws = target.shape[0], generator.num_ws
    latent = initial_latents(settings, statistics, num_images, num_ws, start_ws).requires_grad_(True)
    noise = PerImageNoise(generator, num_images, rng) if settings.optimise_noise else None
    latent_optimizer = torch.optim.Adam([latent] + (noise.parameters() if noise else []), betas=(0.9, 0.999))
    pivot = tuple(float(v) for v in generator.rendering_kwargs.get("avg_camera_pivot", (0.0, 0.0, 0.2)))
    adjustment = CameraAdjustment(num_images, pivot, device=target.device) if pose is not None else None
    camera_optimizer = adjustment.optimizer(pose) if adjustment is not None else None
    preheat = pose.preheat_steps if pose is not None else 0
    latent_steps = max(settings.steps - preheat, 1)

    distances = []
    preheat_planes: torch.Tensor | None = None
    for step in range(settings.steps):
        latent_step = step - preheat  # negative while only the camera moves (pose optimisation's pre-heat)
        for group in latent_optimizer.param_groups:
            group["lr"] = pti_learning_rate(max(latent_step, 0), latent_steps, settings.learning_rate,
                                            settings.lr_rampdown, settings.lr_rampup)
        scale = w_noise_scale(latent_step, latent_steps, statistics.w_std, settings.w_noise_factor,
                              settings.w_noise_ramp) if latent_step >= 0 else 0.0
        ws = latent + scale * torch.randn(latent.shape, generator=rng, device=latent.device)
        ws = ws.expand(num_images, num_ws, -1) if settings.space == "w" else ws
        step_cameras = cameras if adjustment is None else adjustment.labels(cameras)
        draws = generator.sample_draws(num_images, generator=rng, device=target.device)
        if latent_step < 0:  # pre-heat: the latent and noise maps are fixed, so are the tri-planes
            if preheat_planes is None:
                with torch.no_grad(), (noise.installed() if noise is not None else nullcontext()):
                    preheat_planes = generator.synthesize_planes(ws)
            image = generator.render_planes(preheat_planes, ws.detach(), step_cameras, draws=draws).image
        else:
            with noise.installed() if noise is not None else nullcontext():
                image = generator.synthesis(ws, step_cameras, draws=draws).image
        per_image = distance(image, target)
        loss = per_image.sum()
        if noise is not None:
            loss = loss + settings.noise_regularisation * noise.regularisation().sum()

        latent_optimizer.zero_grad(set_to_none=True)
        if camera_optimizer is not None:
            camera_optimizer.zero_grad(set_to_none=True)
            for group in camera_optimizer.param_groups:
                group["lr"] = group["base_lr"] * cosine_rampdown(step, settings.steps)
        loss.backward()
        if latent_step >= 0:
            latent_optimizer.step()
        if camera_optimizer is not None:
            camera_optimizer.step()
        if noise is not None:
            noise.normalise_()
        distances.append(per_image.detach())
        if progress is not None:
            progress.update(float(per_image.detach().mean()))

    with torch.no_grad():
        pivots = latent.detach().expand(num_images, num_ws, -1) if settings.space == "w" else latent.detach()
        final_cameras = cameras if adjustment is None else adjustment.labels(cameras).detach()
    history = torch.stack(distances) if distances else torch.zeros(0, num_images, device=target.device)
    return PivotSearchResult(ws=pivots.contiguous(), cameras=final_cameras, distances=history)


__all__ = ["LatentStatistics", "PivotSearchResult", "PivotSettings", "latent_statistics", "search_pivot"]
