"""PTI's pivotal tuning: the generator's weights for ONE image, around its pivot.

Facts (shared/notes/peers.md §5): Adam lr 3e-4 on all of G (here: the configured parts), loss
1 x MSE + 1 x LPIPS (AlexNet) at the generator's resolution, 350 steps, stopping as soon as the LPIPS
is <= 0.06 (checked before the step, as PTI does); the optional locality regulariser keeps the
generator unchanged at w_r = w_p + alpha (w_z - w_p) / ||w_z - w_p|| for sampled w_z.

The tuning works on a private working copy that :func:`reset_generator_` restores from the frozen
generator before every image, so nothing of one image reaches the next.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cameras import canonical_camera_label
from inversion.optimisation.progress import StepProgress

# Everything that renders from a pivot (the mapping network is not used by a pivot's render).
RENDERING_PARTS = ("backbone.synthesis", "decoder", "superresolution")


@dataclass(frozen=True)
class LocalitySettings:
    """PTI's locality regulariser (off by default in PTI and the EG3D projectors)."""

    alpha: float = 30.0
    truncation_psi: float = 0.5
    num_samples: int = 1
    interval: int = 1
    l2_weight: float = 0.1
    lpips_weight: float = 0.1


@dataclass(frozen=True)
class TuningSettings:
    """Pivotal tuning (docs/pti.md). Defaults: PTI's on EG3D."""

    steps: int = 350
    learning_rate: float = 3e-4
    l2_weight: float = 1.0
    lpips_weight: float = 1.0
    lpips_threshold: float = 0.06
    parts: Sequence[str] = RENDERING_PARTS
    locality: LocalitySettings | None = None

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"tuning.steps must be >= 0, got {self.steps}")


@dataclass
class TuningRecord:
    """mse / lpips: the image's loss terms at every step that ran [steps]; steps: optimiser steps taken;
    stopped_early: the LPIPS threshold was reached."""

    mse: torch.Tensor
    lpips: torch.Tensor
    steps: int
    stopped_early: bool


def tuned_parameter_names(generator: nn.Module, parts: Sequence[str]) -> list[str]:
    """Parameter names under the prefixes ``parts`` ("backbone.synthesis", "decoder", ...)."""
    names = [name for name, _ in generator.named_parameters()]
    selected = [name for name in names if any(name == part or name.startswith(part + ".") for part in parts)]
    unmatched = [part for part in parts if not any(name == part or name.startswith(part + ".") for name in names)]
    if unmatched or not selected:
        top_level = sorted({name.split(".")[0] for name in names})
        raise ValueError(
            f"tuning.parts {list(unmatched) or list(parts)} name no generator parameters; use prefixes of parameter "
            f"names such as {list(RENDERING_PARTS)} (top-level parts: {top_level})"
        )
    return selected


@torch.no_grad()
def reset_generator_(working: nn.Module, frozen: nn.Module) -> None:
    """Every parameter and buffer of ``working`` back to ``frozen``'s values (bit for bit)."""
    frozen_state = frozen.state_dict(keep_vars=True)
    for name, tensor in working.state_dict(keep_vars=True).items():
        tensor.copy_(frozen_state[name])


def locality_latents(frozen: nn.Module, pivot: torch.Tensor, settings: LocalitySettings, rng: torch.Generator) -> torch.Tensor:
    """[S, num_ws, w_dim] latents at distance alpha from the pivot, towards sampled w's."""
    device = pivot.device
    z = torch.randn(settings.num_samples, frozen.z_dim, generator=rng, device=device)
    with torch.no_grad():
        sampled = frozen.mapping(z, canonical_camera_label(settings.num_samples, device=device),
                                 truncation_psi=settings.truncation_psi)
    direction = sampled - pivot
    norms = direction.flatten(1).norm(dim=1).clamp_min(1e-8)
    return pivot + settings.alpha * direction / norms[:, None, None]


def locality_loss(working: nn.Module, frozen: nn.Module, pivot: torch.Tensor, camera: torch.Tensor,
                  settings: LocalitySettings, lpips: nn.Module, rng: torch.Generator) -> torch.Tensor:
    """Mean over the sampled latents of l2_weight MSE + lpips_weight LPIPS between old and new renders."""
    total = pivot.new_zeros(())
    for ws in locality_latents(frozen, pivot, settings, rng).split(1):
        draws = working.sample_draws(1, generator=rng, device=pivot.device)
        new = working.synthesis(ws, camera, draws=draws).image
        with torch.no_grad():
            old = frozen.synthesis(ws, camera, draws=draws).image
        total = total + settings.l2_weight * F.mse_loss(new, old) + settings.lpips_weight * lpips(new, old)
    return total / settings.num_samples


def tune_generator(
    working: nn.Module,
    frozen: nn.Module,
    pivot: torch.Tensor,
    camera: torch.Tensor,
    target: torch.Tensor,
    settings: TuningSettings,
    lpips: nn.Module,
    rng: torch.Generator,
    progress: StepProgress | None = None,
) -> TuningRecord:
    """Tune ``working`` (already reset to ``frozen``) so that it renders ``target`` [1, 3, H, W] from
    ``pivot`` [1, num_ws, w_dim] at ``camera`` [1, 25]. Only the parameters of ``settings.parts`` move."""
    names = set(tuned_parameter_names(working, settings.parts))
    parameters = [p for name, p in working.named_parameters() if name in names]
    for name, parameter in working.named_parameters():
        parameter.requires_grad_(name in names)
    optimizer = torch.optim.Adam(parameters, lr=settings.learning_rate)
    mse_history, lpips_history = [], []
    stopped_early = False
    steps_taken = 0
    try:
        for step in range(settings.steps):
            draws = working.sample_draws(1, generator=rng, device=target.device)
            image = working.synthesis(pivot, camera, draws=draws).image
            mse = F.mse_loss(image, target)
            perceptual = lpips(image, target)
            mse_history.append(mse.detach())
            lpips_history.append(perceptual.detach())
            if progress is not None:
                progress.update(float(perceptual.detach()))
            if float(perceptual.detach()) <= settings.lpips_threshold:
                stopped_early = True
                break
            loss = settings.l2_weight * mse + settings.lpips_weight * perceptual
            if settings.locality is not None and step % settings.locality.interval == 0:
                loss = loss + locality_loss(working, frozen, pivot, camera, settings.locality, lpips, rng)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps_taken += 1
    finally:
        working.requires_grad_(False)
    empty = target.new_zeros(0)
    return TuningRecord(
        mse=torch.stack(mse_history) if mse_history else empty,
        lpips=torch.stack(lpips_history) if lpips_history else empty,
        steps=steps_taken, stopped_early=stopped_early,
    )


__all__ = [
    "RENDERING_PARTS",
    "LocalitySettings",
    "TuningRecord",
    "TuningSettings",
    "locality_loss",
    "reset_generator_",
    "tune_generator",
    "tuned_parameter_names",
]
