"""Canonical latent discriminator: e4e architecture, row selection, real-latent sampling."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cameras import canonical_camera_label, unpack_label, yaw_pitch_from_cam2world
from networks.latent_discriminator import (
    LatentCodesDiscriminator,
    sample_canonical_latents,
    select_rows_for_discriminator,
)


class StubMappingGenerator(nn.Module):
    """Any module with z_dim and mapping(z, c, ...) -> [N, 14, w_dim]; w depends on both z and c."""

    def __init__(self, z_dim: int = 8, w_dim: int = 6) -> None:
        super().__init__()
        self.z_dim = z_dim
        generator = torch.Generator().manual_seed(0)
        self.register_buffer("z_to_w", torch.randn(z_dim, w_dim, generator=generator))
        self.register_buffer("c_to_w", torch.randn(25, w_dim, generator=generator))
        self.seen_cameras: list[torch.Tensor] = []

    def mapping(
        self,
        z: torch.Tensor,
        c: torch.Tensor,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
    ) -> torch.Tensor:
        assert truncation_psi == 1.0 and truncation_cutoff is None
        self.seen_cameras.append(c.clone())
        w = z @ self.z_to_w + c @ self.c_to_w
        return w[:, None].repeat(1, 14, 1)


def test_discriminator_is_e4e_mlp() -> None:
    discriminator = LatentCodesDiscriminator(w_dim=512, num_layers=4)
    linears = [module for module in discriminator.mlp if isinstance(module, nn.Linear)]
    activations = [module for module in discriminator.mlp if isinstance(module, nn.LeakyReLU)]
    assert [(layer.in_features, layer.out_features) for layer in linears] == [(512, 512)] * 3 + [(512, 1)]
    assert len(activations) == 3 and all(act.negative_slope == 0.2 for act in activations)
    # e4e's state-dict keys, so e4e-format discriminator weights load as they are.
    assert list(discriminator.state_dict()) == [
        f"mlp.{i}.{p}" for i in (0, 2, 4, 6) for p in ("weight", "bias")
    ]
    assert discriminator(torch.randn(5, 512)).shape == (5, 1)


def test_discriminator_depth_is_configurable() -> None:
    assert len(LatentCodesDiscriminator(w_dim=16, num_layers=1).mlp) == 1
    assert sum(isinstance(m, nn.Linear) for m in LatentCodesDiscriminator(w_dim=16, num_layers=6).mlp) == 6
    with pytest.raises(ValueError, match="num_layers"):
        LatentCodesDiscriminator(num_layers=0)
    with pytest.raises(ValueError, match=r"\[M, 16\]"):
        LatentCodesDiscriminator(w_dim=16)(torch.randn(2, 14, 16))


@pytest.mark.parametrize(("stage", "rows"), [(0, 1), (1, 4), (2, 7), (3, 14)])
def test_all_active_rows_sample_major(stage: int, rows: int) -> None:
    ws = torch.randn(3, 14, 4)
    selected = select_rows_for_discriminator(ws, stage, "all_active")
    assert selected.shape == (3 * rows, 4)
    assert torch.equal(selected[rows], ws[1, 0])  # the second sample starts after the first one's rows
    assert torch.equal(selected.reshape(3, rows, 4), ws[:, :rows])


def test_w0_only_rows_and_errors() -> None:
    ws = torch.randn(3, 14, 4)
    assert torch.equal(select_rows_for_discriminator(ws, 3, "w0_only"), ws[:, 0])
    assert torch.equal(select_rows_for_discriminator(ws, 3), ws.reshape(-1, 4))  # default: all active
    with pytest.raises(ValueError, match="row selection"):
        select_rows_for_discriminator(ws, 3, "every_row")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="progressive stage"):
        select_rows_for_discriminator(ws, 4, "w0_only")


def test_canonical_latents_use_front_camera_and_are_reproducible() -> None:
    G = StubMappingGenerator()
    first = sample_canonical_latents(G, 4, torch.Generator().manual_seed(5))
    again = sample_canonical_latents(G, 4, torch.Generator().manual_seed(5))
    other = sample_canonical_latents(G, 4, torch.Generator().manual_seed(6))
    assert first.shape == (4, 6)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert torch.equal(G.seen_cameras[0], canonical_camera_label(4))
    z = torch.randn(4, 8, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(first, z @ G.z_to_w + canonical_camera_label(4) @ G.c_to_w)
    assert not first.requires_grad


def test_random_pose_latents_use_one_pose_per_batch_within_authors_ranges() -> None:
    G = StubMappingGenerator()
    for seed in range(5):
        sample_canonical_latents(G, 3, torch.Generator().manual_seed(seed), pose="random")
        cameras = G.seen_cameras[-1]
        assert torch.equal(cameras, cameras[:1].expand(3, -1))
        assert not torch.allclose(cameras, canonical_camera_label(3))
        angles = yaw_pitch_from_cam2world(unpack_label(cameras[:1]).cam2world)
        assert abs(float(angles.yaw)) <= 0.4 + 1e-4
        assert abs(float(angles.pitch)) <= 0.15 + 1e-3
        radius = unpack_label(cameras[:1]).cam2world[0, :3, 3].norm()
        assert math.isclose(float(radius), 2.7, rel_tol=1e-5)
    with pytest.raises(ValueError, match="pose"):
        sample_canonical_latents(G, 3, torch.Generator().manual_seed(0), pose="frontal")  # type: ignore[arg-type]
