"""The pose-conditioned mapping network and the StyleGAN2 synthesis network that produces the tri-planes."""

from __future__ import annotations

import math

import torch
from torch import nn

from networks.eg3d.layers import FullyConnectedLayer, SynthesisBlock, normalize_2nd_moment
from networks.eg3d.outputs import BackboneFeatures


class MappingNetwork(nn.Module):
    """z (+ camera c) -> w, broadcast to ``num_ws`` rows, with optional truncation towards ``w_avg``.

    z and the embedded c are each normalised to unit second moment and concatenated (z first), then
    ``num_layers`` leaky-ReLU FC layers with learning-rate multiplier 0.01 (BEHAVIOUR §3).
    """

    def __init__(
        self,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        num_ws: int,
        num_layers: int = 8,
        embed_features: int | None = None,
        layer_features: int | None = None,
        lr_multiplier: float = 0.01,
        w_avg_beta: float = 0.998,
        **_unused,
    ) -> None:
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = z_dim, c_dim, w_dim, num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta
        embed_features = 0 if c_dim == 0 else (w_dim if embed_features is None else embed_features)
        layer_features = w_dim if layer_features is None else layer_features
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(num_layers):
            layer = FullyConnectedLayer(features[idx], features[idx + 1], activation="lrelu", lr_multiplier=lr_multiplier)
            setattr(self, f"fc{idx}", layer)
        self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(
        self,
        z: torch.Tensor,
        c: torch.Tensor,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
    ) -> torch.Tensor:
        parts = []
        compute_dtype = self.w_avg.dtype  # float32 (also under autocast), float64 for reference runs
        if self.z_dim > 0:
            parts.append(normalize_2nd_moment(z.to(compute_dtype)))
        if self.c_dim > 0:
            parts.append(normalize_2nd_moment(self.embed(c.to(compute_dtype))))
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        ws = x.unsqueeze(1).repeat(1, self.num_ws, 1)
        if truncation_psi != 1:
            cutoff = self.num_ws if truncation_cutoff is None else truncation_cutoff
            truncated = self.w_avg.lerp(ws[:, :cutoff], truncation_psi)
            ws = torch.cat([truncated, ws[:, cutoff:]], dim=1)
        return ws


class SynthesisNetwork(nn.Module):
    """StyleGAN2 'skip' synthesis network; for EG3D it outputs 96 channels at 256x256 (the tri-planes)."""

    def __init__(
        self,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        channel_base: int = 32768,
        channel_max: int = 512,
        num_fp16_res: int = 4,
        **block_kwargs,
    ) -> None:
        super().__init__()
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.block_resolutions = [2**i for i in range(2, int(math.log2(img_resolution)) + 1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        self.block_channels = channels
        self.num_ws = 0
        self.first_ws_index: dict[str, int] = {}
        for res in self.block_resolutions:
            in_channels = channels[res // 2] if res > 4 else 0
            block = SynthesisBlock(
                in_channels,
                channels[res],
                w_dim=w_dim,
                resolution=res,
                img_channels=img_channels,
                is_last=res == img_resolution,
                **block_kwargs,
            )
            self.first_ws_index[f"b{res}"] = self.num_ws
            self.num_ws += block.num_conv
            if res == img_resolution:
                self.num_ws += block.num_torgb
            setattr(self, f"b{res}", block)

    @property
    def block_names(self) -> list[str]:
        return [f"b{res}" for res in self.block_resolutions]

    def _block_ws(self, ws: torch.Tensor, name: str) -> torch.Tensor:
        block = getattr(self, name)
        start = self.first_ws_index[name]
        return ws.narrow(1, start, block.num_conv + block.num_torgb)

    def _run_blocks(
        self, names: list[str], x: torch.Tensor | None, img: torch.Tensor | None, ws: torch.Tensor, noise_mode: str
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        for name in names:
            x, img = getattr(self, name)(x, img, self._block_ws(ws, name), noise_mode)
        return x, img

    def _check_ws(self, ws: torch.Tensor) -> None:
        if ws.ndim != 3 or ws.shape[1] != self.num_ws or ws.shape[2] != self.w_dim:
            raise ValueError(f"ws must have shape [N, {self.num_ws}, {self.w_dim}], got {list(ws.shape)}")

    def forward(self, ws: torch.Tensor, noise_mode: str = "const") -> torch.Tensor:
        self._check_ws(ws)
        _, img = self._run_blocks(self.block_names, None, None, ws, noise_mode)
        return img

    def features_until(self, ws: torch.Tensor, block: str, noise_mode: str = "const") -> BackboneFeatures:
        """Run the blocks up to and including ``block``; return its feature map and the skip image."""
        self._check_ws(ws)
        names = self.block_names
        if block not in names:
            raise ValueError(f"unknown backbone block {block!r}; expected one of {names}")
        x, img = self._run_blocks(names[: names.index(block) + 1], None, None, ws, noise_mode)
        return BackboneFeatures(block=block, features=x, skip_image=img)

    def resume_from(self, ws: torch.Tensor, state: BackboneFeatures, noise_mode: str = "const") -> torch.Tensor:
        """Continue synthesis after ``state.block`` from a (possibly edited) feature map and skip image."""
        self._check_ws(ws)
        names = self.block_names
        if state.block not in names:
            raise ValueError(f"unknown backbone block {state.block!r}; expected one of {names}")
        rest = names[names.index(state.block) + 1 :]
        _, img = self._run_blocks(rest, state.features, state.skip_image, ws, noise_mode)
        return img


class StyleGAN2Backbone(nn.Module):
    """Container matching the official module tree: ``backbone.synthesis`` then ``backbone.mapping``."""

    def __init__(
        self,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        mapping_kwargs: dict | None = None,
        **synthesis_kwargs,
    ) -> None:
        super().__init__()
        self.synthesis = SynthesisNetwork(w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels, **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws, **(mapping_kwargs or {}))
