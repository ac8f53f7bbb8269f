"""Optimisable per-image noise maps for the pivot search (PTI optimises the StyleGAN noise with w).

The backbone's synthesis layers add ``noise_const * noise_strength`` (``noise_mode='const'``). PTI
re-draws those maps, optimises them together with w under a regulariser that keeps them white, and
renormalises them after every step. Here every image of a batch has its own maps ([N, 1, R, R]
instead of the layer's shared [R, R]; the layer's addition broadcasts over channels), installed into
a PRIVATE generator copy only while it renders (:meth:`PerImageNoise.installed`); the shared frozen
generator never sees them. As in PTI and the EG3D projector (which optimise the noise on a copy of
the generator that is thrown away), the maps do not outlive the pivot search: tuning and every later
render use the generator's own constant noise.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

NOISE_BUFFER = "noise_const"
# PTI's regulariser stops its pyramid at this size.
SMALLEST_REGULARISED_SIZE = 8


def noise_layers(generator: nn.Module) -> dict[str, nn.Module]:
    """The backbone layers with a constant-noise buffer (the super-resolution never uses noise)."""
    return {name: module for name, module in generator.backbone.synthesis.named_modules()
            if NOISE_BUFFER in getattr(module, "_buffers", {})}


class PerImageNoise:
    """One white-noise map per image and per noise layer, optimised as leaf tensors."""

    def __init__(self, generator: nn.Module, num_images: int, rng: torch.Generator) -> None:
        self.layers = noise_layers(generator)
        device = rng.device
        self.maps = {
            name: torch.randn([num_images, 1, *getattr(layer, NOISE_BUFFER).shape], generator=rng, device=device)
            .requires_grad_(True)
            for name, layer in self.layers.items()
        }
        self.normalise_()  # white from the start: the fixed maps of a pose pre-heat are the ones later steps see

    def parameters(self) -> list[torch.Tensor]:
        return list(self.maps.values())

    @contextmanager
    def installed(self) -> Iterator[None]:
        """The generator renders with these maps inside the block (its own buffers are put back after)."""
        originals = {name: getattr(layer, NOISE_BUFFER) for name, layer in self.layers.items()}
        try:
            for name, layer in self.layers.items():
                setattr(layer, NOISE_BUFFER, self.maps[name])
            yield
        finally:
            for name, layer in self.layers.items():
                setattr(layer, NOISE_BUFFER, originals[name])

    def regularisation(self) -> torch.Tensor:
        """PTI's noise regulariser per image [N]: over every map and every scale of its 2x pyramid,
        the squared mean correlation of the map with itself shifted by one pixel along x and along y."""
        total = None
        for noise in self.maps.values():
            while True:
                for dim in (2, 3):
                    term = (noise * torch.roll(noise, shifts=1, dims=dim)).mean(dim=(1, 2, 3)).square()
                    total = term if total is None else total + term
                if noise.shape[-1] <= SMALLEST_REGULARISED_SIZE:
                    break
                noise = F.avg_pool2d(noise, kernel_size=2)
        assert total is not None, "the generator has no noise layers"
        return total

    @torch.no_grad()
    def normalise_(self) -> None:
        """Zero mean and unit RMS per image, after every optimiser step (as PTI does)."""
        for noise in self.maps.values():
            noise -= noise.mean(dim=(1, 2, 3), keepdim=True)
            noise *= noise.square().mean(dim=(1, 2, 3), keepdim=True).rsqrt()


__all__ = ["PerImageNoise", "noise_layers"]
