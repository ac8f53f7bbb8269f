"""GOAE's canonical latent discriminator D_Wc and what it judges.

Architecture: e4e's `LatentCodesDiscriminator(style_dim=512, n_mlp=4)` (omertov/encoder4editing
`models/discriminator.py`, also in the GOAE authors' earlier training code):
(n_layers - 1) x [nn.Linear(512, 512), LeakyReLU(0.2)] -> nn.Linear(512, 1). Plain nn.Linear (no
equalised learning rate); the state-dict keys (`mlp.0.weight`, ..., `mlp.{2(n-1)}.bias`) are e4e's.

Real samples come from the canonical latent space W_c: w = mapping(z, canonical front camera)
(paper, Sec. 3.1/4.1). The authors' earlier code instead conditioned the mapping on a random pose
(yaw +-0.4, pitch +-0.15 around the pivot (0, 0, 0.2), one pose per batch): pose="random".
Fake samples are the encoder's absolute w+ rows (w_avg included) of the active progressive stage;
e4e's discriminator effectively judged only row 0 ("w0_only").
"""

from __future__ import annotations

from typing import Literal, Protocol

import torch
from torch import nn

from cameras import GOAE_UNIFORM_POSES, canonical_camera_label, sample_cameras
from networks.encoders.goae_encoder import active_row_count

E4E_DISCRIMINATOR_LAYERS = 4
DISCRIMINATOR_LEAKY_SLOPE = 0.2
RowSelection = Literal["all_active", "w0_only"]
RealLatentPose = Literal["canonical", "random"]
ROW_SELECTIONS: tuple[str, ...] = ("all_active", "w0_only")
REAL_LATENT_POSES: tuple[str, ...] = ("canonical", "random")


class LatentCodesDiscriminator(nn.Module):
    """MLP critic on single latents: [M, w_dim] -> logits [M, 1]."""

    def __init__(self, w_dim: int = 512, num_layers: int = E4E_DISCRIMINATOR_LAYERS) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"LatentCodesDiscriminator.num_layers must be >= 1, got {num_layers}")
        self.w_dim = w_dim
        layers: list[nn.Module] = []
        for _ in range(num_layers - 1):
            layers += [nn.Linear(w_dim, w_dim), nn.LeakyReLU(DISCRIMINATOR_LEAKY_SLOPE)]
        layers.append(nn.Linear(w_dim, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        if latents.ndim != 2 or latents.shape[1] != self.w_dim:
            raise ValueError(
                f"LatentCodesDiscriminator expects latents [M, {self.w_dim}] (select rows first), got {list(latents.shape)}"
            )
        return self.mlp(latents)


def select_rows_for_discriminator(
    ws: torch.Tensor, stage: int, mode: RowSelection = "all_active"
) -> torch.Tensor:
    """Rows of absolute w+ [N, 14, w_dim] the discriminator judges, flattened to [M, w_dim].

    "all_active": every row trained at `stage` (rows 0..k-1, k = 1/4/7/14; the paper: D "operates on
    w_c and each entry w_i of w+"); M = N * k, sample-major.
    "w0_only": row 0 of each sample (what e4e's discriminator ended up judging); M = N.
    """
    if ws.ndim != 3:
        raise ValueError(f"select_rows_for_discriminator expects ws [N, rows, w_dim], got {list(ws.shape)}")
    if mode == "all_active":
        return ws[:, : active_row_count(stage)].reshape(-1, ws.shape[-1])
    if mode == "w0_only":
        active_row_count(stage)  # validates the stage for both modes
        return ws[:, 0]
    raise ValueError(f"unknown discriminator row selection {mode!r}; expected one of {ROW_SELECTIONS}")


class MappingNetworkLike(Protocol):
    z_dim: int

    def mapping(
        self,
        z: torch.Tensor,
        c: torch.Tensor,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
    ) -> torch.Tensor: ...


def real_latent_cameras(
    batch_size: int, generator: torch.Generator, pose: RealLatentPose, device: torch.device
) -> torch.Tensor:
    """[N, 25] conditioning cameras for real latents: the canonical front camera, or one random pose per batch."""
    if pose == "canonical":
        return canonical_camera_label(batch_size, device=device)
    if pose == "random":
        # The authors' early variant: one uniform pose (yaw +-0.4, pitch +-0.15, pivot (0,0,0.2)) for the batch.
        return sample_cameras(1, generator, GOAE_UNIFORM_POSES, device=device).expand(batch_size, -1)
    raise ValueError(f"unknown real-latent pose {pose!r}; expected one of {REAL_LATENT_POSES}")


def sample_canonical_latents(
    G: MappingNetworkLike, batch_size: int, generator: torch.Generator, pose: RealLatentPose = "canonical"
) -> torch.Tensor:
    """Real samples for D_Wc: w = G.mapping(z, c)[:, 0] with z ~ N(0, I), no truncation -> [N, w_dim].

    z is drawn from `generator` (on the generator's device), then the pose (for "random"), so a fixed
    seed gives the same latents on any device. Without truncation all 14 rows of mapping's output are
    the same w, so row 0 is the latent (the authors averaged the rows, which is the same value).
    Runs without gradients: the mapping network is frozen and reals need none (R1 re-enables them on
    the returned tensor).
    """
    if batch_size < 1:
        raise ValueError(f"sample_canonical_latents: batch_size must be >= 1, got {batch_size}")
    device = _module_device(G)
    z = torch.randn(batch_size, G.z_dim, generator=generator, device=generator.device).to(device)
    cameras = real_latent_cameras(batch_size, generator, pose, device)
    with torch.no_grad():
        ws = G.mapping(z, cameras, truncation_psi=1.0, truncation_cutoff=None)
    return ws[:, 0]


def _module_device(module: object) -> torch.device:
    if isinstance(module, nn.Module):
        for tensor in list(module.parameters()) + list(module.buffers()):
            return tensor.device
    return torch.device("cpu")
