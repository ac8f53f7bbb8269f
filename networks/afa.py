"""Adaptive Feature Alignment (AFA, GOAE Sec. 4.2): refine the generator feature map F with the residual.

    residual = reconstruction(w+) - input              (the authors' sign: reconstruction first)
    K, V     = LN(tokens(ResidualEncoder(residual)))   [N, T, C], T <= max_kv_grid^2
    Q        = LN(tokens(F))                           [N, H*W, C]
    gamma, beta = heads(Q, K, V)                        [N, C, H, W] each
    F*       = gamma * F + beta          ("direct", released)
             | (1 + gamma) * F + beta    ("residual", zero-initialised so F* == F at init)

Variants (AFAConfig):
* `heads="attention"` (released `afa_FFHQ.pt`): gamma and beta each come from their own full
  cross-attention block (d_model C, 4 heads, FFN 1024, dropout 0.1).
* `heads="conv"` (the paper's eq. 7-9): ONE cross-attention block gives F_align, then Conv_gamma and
  Conv_beta (kernel `conv_head_kernel_size`) on F_align.
* `PlainCNNAlignment` (paper Table 3, "w/ conv"): no cross-attention at all; the residual features are
  resized to F's grid and the same conv heads predict gamma and beta.

The refined block may be `b32` (released, F is 512x32x32) or `b64` (512x64x64). The KV grid is
residual_resolution / 2^groups (512 -> 64x64); it is average-pooled to at most `max_kv_grid` per side
so the attention cost stays bounded. The query count is always F's H*W, so b64 needs no other change.

Architecture facts (module order, widths, strides, SE reduction 16, equalised-lr output convs) were read
from the authors' `goae/models/afa.py` and pSp's IR-SE helpers; the code here is ours. The mapping to
the released state-dict keys lives in networks/afa_checkpoint.py; see docs/afa.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from networks.ir_se import ir_se_body, ir_se_input_layer

from networks.eg3d.outputs import BackboneFeatures
from networks.encoders.attention import LatentCrossAttention

HeadKind = Literal["attention", "conv"]
ModulationForm = Literal["direct", "residual"]
REFINABLE_BLOCKS: tuple[str, ...] = ("b32", "b64")
SCALED_LRELU_SLOPE = 0.2


@dataclass(frozen=True)
class ResidualEncoderConfig:
    """Residual CNN: stem conv -> IR-SE groups (first unit of each strides by 2) -> 2 equalised convs."""

    stem_channels: int = 64
    group_channels: tuple[int, ...] = (64, 128, 256)
    units_per_group: int = 3
    se_reduction: int = 16
    output_channels: int = 512  # = the KV width = the attention width C

    @property
    def downsampling_factor(self) -> int:
        return 2 ** len(self.group_channels)


@dataclass(frozen=True)
class AFAConfig:
    """Everything that shapes an AFA network; the defaults are the released `afa_FFHQ.pt` configuration."""

    feature_channels: int = 512  # C of F (EG3D b32 and b64 both have 512)
    refined_block: str = "b32"
    residual_resolution: int = 512  # side of the input / reconstruction images
    residual_encoder: ResidualEncoderConfig = field(default_factory=ResidualEncoderConfig)
    num_heads: int = 4
    feedforward_dim: int = 1024
    dropout: float = 0.1
    heads: HeadKind = "attention"
    modulation: ModulationForm = "direct"
    conv_head_kernel_size: int = 3
    max_kv_grid: int = 64

    def __post_init__(self) -> None:
        if self.refined_block not in REFINABLE_BLOCKS:
            raise ValueError(
                f"AFAConfig: refined_block must be one of {REFINABLE_BLOCKS}, got {self.refined_block!r}"
            )
        if self.heads not in ("attention", "conv"):
            raise ValueError(f"AFAConfig: heads must be 'attention' or 'conv', got {self.heads!r}")
        if self.modulation not in ("direct", "residual"):
            raise ValueError(f"AFAConfig: modulation must be 'direct' or 'residual', got {self.modulation!r}")
        if self.residual_encoder.output_channels != self.feature_channels:
            raise ValueError(
                "AFAConfig: residual_encoder.output_channels must equal feature_channels (keys/values share "
                f"the query width), got {self.residual_encoder.output_channels} vs {self.feature_channels}"
            )
        if self.residual_resolution % self.residual_encoder.downsampling_factor != 0:
            raise ValueError(
                f"AFAConfig: residual_resolution {self.residual_resolution} is not divisible by "
                f"{self.residual_encoder.downsampling_factor} (one stride-2 unit per group)"
            )
        if self.conv_head_kernel_size % 2 != 1:
            raise ValueError(
                f"AFAConfig: conv_head_kernel_size must be odd, got {self.conv_head_kernel_size}"
            )

    @property
    def kv_grid(self) -> int:
        """Side of the key/value token grid after the optional pooling."""
        return min(self.residual_resolution // self.residual_encoder.downsampling_factor, self.max_kv_grid)


# A tiny configuration for tests and CPU smoke runs (pair it with a tiny EG3D whose F has 32 channels).
TINY_AFA_CONFIG = AFAConfig(
    feature_channels=32,
    residual_resolution=64,
    residual_encoder=ResidualEncoderConfig(
        stem_channels=8, group_channels=(8, 16, 32), units_per_group=2, se_reduction=4, output_channels=32
    ),
    num_heads=4,
    feedforward_dim=64,
    max_kv_grid=8,
)


@dataclass
class AFAOutput:
    """F* and the FiLM maps that produced it (all [N, C, H, W], F's grid)."""

    refined_features: torch.Tensor
    gamma: torch.Tensor
    beta: torch.Tensor


# ---------------------------------------------------------------------------------------------- layers
class EqualizedConv2d(nn.Module):
    """Conv with the weight stored at unit variance and scaled by 1/sqrt(fan_in) at run time (StyleGAN2)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.padding = padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.weight_gain, self.bias, padding=self.padding)


class ScaledLeakyReLU(nn.Module):
    """leaky_relu(x, 0.2) * sqrt(2): keeps the activation variance of equalised layers at 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, SCALED_LRELU_SLOPE) * math.sqrt(2.0)


class ResidualEncoder(nn.Module):
    """Residual image [N, 3, R, R] -> features [N, output_channels, R/8, R/8] (three groups)."""

    def __init__(self, config: ResidualEncoderConfig) -> None:
        super().__init__()
        self.stem = ir_se_input_layer(3, config.stem_channels)
        widths = (config.stem_channels, *config.group_channels)
        stages = tuple((w_in, w_out, config.units_per_group) for w_in, w_out in zip(widths, widths[1:]))
        self.units = ir_se_body(stages, config.se_reduction)
        in_channels = widths[-1]
        self.to_features = nn.Sequential(
            EqualizedConv2d(in_channels, config.output_channels, kernel_size=3, padding=1),
            ScaledLeakyReLU(),
            EqualizedConv2d(config.output_channels, config.output_channels, kernel_size=3, padding=1),
        )

    def forward(self, residual: torch.Tensor) -> torch.Tensor:
        return self.to_features(self.units(self.stem(residual)))


class ZeroInitConv1x1(nn.Conv2d):
    """1x1 conv starting at exactly zero (weight and bias), so a residual FiLM starts as the identity."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, channels, kernel_size=1)
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)


# ---------------------------------------------------------------------------------------------- helpers
def image_residual(input_image: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """The AFA input: reconstruction - input (the authors' order; loaded weights depend on the sign)."""
    if input_image.shape != reconstruction.shape:
        raise ValueError(
            f"AFA: input {list(input_image.shape)} and reconstruction {list(reconstruction.shape)} differ"
        )
    return reconstruction - input_image


def feature_tokens(feature_map: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] -> [N, H*W, C] in row-major raster order."""
    return feature_map.flatten(2).transpose(1, 2)


def tokens_to_map(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[N, H*W, C] -> [N, C, H, W] (inverse of feature_tokens)."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], height, width)


def normalize_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """LayerNorm over channels without affine parameters (the authors' norm_x / norm_kv)."""
    return F.layer_norm(tokens, tokens.shape[-1:])


def apply_film(
    features: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, modulation: ModulationForm
) -> torch.Tensor:
    """F* = gamma*F + beta ("direct") or (1+gamma)*F + beta ("residual")."""
    if modulation == "direct":
        return gamma * features + beta
    if modulation == "residual":
        return (1.0 + gamma) * features + beta
    raise ValueError(f"unknown FiLM modulation {modulation!r}; expected 'direct' or 'residual'")


def delta_feature_penalty(refined_features: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """The stage-2 regulariser on Delta F = F* - F: mean squared entry (weighted by lambda_7 elsewhere)."""
    return (refined_features - features).square().mean()


def resume_state(state: BackboneFeatures, output: AFAOutput, config: AFAConfig) -> BackboneFeatures:
    """The generator state with F replaced by F*, ready for `synthesize_planes_from_features`.

    The skip image is kept unchanged (the authors refine only x, not the skip-accumulated tri-plane image).
    """
    if state.block != config.refined_block:
        raise ValueError(
            f"AFA was configured for block {config.refined_block!r} but got features of {state.block!r}"
        )
    return replace(state, features=output.refined_features)


def _check_inputs(config: AFAConfig, input_image: torch.Tensor, features: torch.Tensor) -> None:
    side = config.residual_resolution
    if input_image.ndim != 4 or tuple(input_image.shape[1:]) != (3, side, side):
        raise ValueError(f"AFA expects images [N, 3, {side}, {side}], got {list(input_image.shape)}")
    if features.ndim != 4 or features.shape[1] != config.feature_channels:
        raise ValueError(f"AFA expects F [N, {config.feature_channels}, H, W], got {list(features.shape)}")


def pooled_residual_features(
    encoder: ResidualEncoder, config: AFAConfig, input_image: torch.Tensor, reconstruction: torch.Tensor
) -> torch.Tensor:
    """Images -> residual feature map [N, C, g, g] with g = config.kv_grid (shared by both variants)."""
    features = encoder(image_residual(input_image, reconstruction))
    grid = config.kv_grid
    if features.shape[-1] > grid or features.shape[-2] > grid:
        # Bounded attention cost: at most max_kv_grid^2 key/value tokens (4096 for 64).
        features = F.adaptive_avg_pool2d(features, grid)
    return features


def _conv_head(config: AFAConfig) -> nn.Conv2d:
    kernel = config.conv_head_kernel_size
    return nn.Conv2d(config.feature_channels, config.feature_channels, kernel, padding=kernel // 2)


def _film_output(config: AFAConfig) -> nn.Module:
    """Identity for the direct form; a zero-initialised 1x1 conv for the residual form (F* == F at init)."""
    return ZeroInitConv1x1(config.feature_channels) if config.modulation == "residual" else nn.Identity()


# ---------------------------------------------------------------------------------------------- networks
class AdaptiveFeatureAlignment(nn.Module):
    """GOAE's AFA: cross-attention from F (queries) to the residual features (keys/values), then FiLM.

    Parameters by `config.heads`:
    * "attention": `gamma_head`, `beta_head` (two LatentCrossAttention blocks), as released;
    * "conv": `alignment` (one LatentCrossAttention) and `gamma_conv`, `beta_conv`, as in the paper.
    With `modulation="residual"` each of gamma and beta goes through a zero-initialised 1x1 conv
    (`gamma_output`, `beta_output`).
    """

    def __init__(self, config: AFAConfig = AFAConfig()) -> None:
        super().__init__()
        self.config = config
        self.residual_encoder = ResidualEncoder(config.residual_encoder)
        width = config.feature_channels
        if config.heads == "attention":
            self.gamma_head = LatentCrossAttention(
                width, config.num_heads, config.feedforward_dim, config.dropout
            )
            self.beta_head = LatentCrossAttention(
                width, config.num_heads, config.feedforward_dim, config.dropout
            )
        elif config.heads == "conv":
            self.alignment = LatentCrossAttention(
                width, config.num_heads, config.feedforward_dim, config.dropout
            )
            self.gamma_conv = _conv_head(config)
            self.beta_conv = _conv_head(config)
        else:
            raise ValueError(f"unknown AFA heads {config.heads!r}; expected 'attention' or 'conv'")
        self.gamma_output = _film_output(config)
        self.beta_output = _film_output(config)

    def residual_tokens(self, input_image: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        """The normalised key/value tokens [N, T, C] (T = kv_grid^2)."""
        features = pooled_residual_features(self.residual_encoder, self.config, input_image, reconstruction)
        return normalize_tokens(feature_tokens(features))

    def _raw_film_maps(
        self, queries: torch.Tensor, memory: torch.Tensor, height: int, width: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.config.heads == "attention":
            gamma = tokens_to_map(self.gamma_head(queries, memory), height, width)
            beta = tokens_to_map(self.beta_head(queries, memory), height, width)
            return gamma, beta
        aligned = tokens_to_map(self.alignment(queries, memory), height, width)
        return self.gamma_conv(aligned), self.beta_conv(aligned)

    def forward(
        self, input_image: torch.Tensor, reconstruction: torch.Tensor, features: torch.Tensor
    ) -> AFAOutput:
        """input_image, reconstruction: [N, 3, R, R] in [-1, 1]; features: F [N, C, H, W] -> AFAOutput."""
        _check_inputs(self.config, input_image, features)
        memory = self.residual_tokens(input_image, reconstruction)
        queries = normalize_tokens(feature_tokens(features))
        height, width = features.shape[-2:]
        raw_gamma, raw_beta = self._raw_film_maps(queries, memory, height, width)
        gamma, beta = self.gamma_output(raw_gamma), self.beta_output(raw_beta)
        refined = apply_film(features, gamma, beta, self.config.modulation)
        return AFAOutput(refined_features=refined, gamma=gamma, beta=beta)


class PlainCNNAlignment(nn.Module):
    """Ablation "w/ conv" (paper Table 3): AFA without cross-attention.

    The residual features are bilinearly resized to F's grid and the paper's conv heads predict gamma and
    beta from them directly; F is only modulated, never attended to. Everything else (residual CNN,
    FiLM form, zero-initialised residual outputs) is shared with AdaptiveFeatureAlignment, so the
    comparison isolates the alignment step. `config.heads`, `num_heads`, `feedforward_dim` are unused.
    """

    def __init__(self, config: AFAConfig = AFAConfig()) -> None:
        super().__init__()
        self.config = config
        self.residual_encoder = ResidualEncoder(config.residual_encoder)
        self.gamma_conv = _conv_head(config)
        self.beta_conv = _conv_head(config)
        self.gamma_output = _film_output(config)
        self.beta_output = _film_output(config)

    def forward(
        self, input_image: torch.Tensor, reconstruction: torch.Tensor, features: torch.Tensor
    ) -> AFAOutput:
        _check_inputs(self.config, input_image, features)
        residual_features = pooled_residual_features(
            self.residual_encoder, self.config, input_image, reconstruction
        )
        on_feature_grid = F.interpolate(
            residual_features, size=features.shape[-2:], mode="bilinear", align_corners=False
        )
        gamma = self.gamma_output(self.gamma_conv(on_feature_grid))
        beta = self.beta_output(self.beta_conv(on_feature_grid))
        refined = apply_film(features, gamma, beta, self.config.modulation)
        return AFAOutput(refined_features=refined, gamma=gamma, beta=beta)


AlignmentVariant = Literal["afa", "plain_cnn"]


def afa_config_from_fields(**fields: object) -> AFAConfig:
    """AFAConfig from plain (Hydra/YAML) values: `residual_encoder` may be a mapping; lists become tuples."""
    encoder_fields = dict(fields.pop("residual_encoder", None) or {})  # type: ignore[call-overload]
    if "group_channels" in encoder_fields:
        encoder_fields["group_channels"] = tuple(encoder_fields["group_channels"])
    encoder_config = ResidualEncoderConfig(**encoder_fields)
    return AFAConfig(residual_encoder=encoder_config, **fields)  # type: ignore[arg-type]


def build_feature_alignment(variant: AlignmentVariant, **config_fields: object) -> nn.Module:
    """Hydra-friendly factory from plain values: the AFA ("afa") or Table 3's ablation ("plain_cnn")."""
    config = afa_config_from_fields(**config_fields)
    if variant == "afa":
        return AdaptiveFeatureAlignment(config)
    if variant == "plain_cnn":
        return PlainCNNAlignment(config)
    raise ValueError(f"unknown feature-alignment variant {variant!r}; expected 'afa' or 'plain_cnn'")


__all__ = [
    "REFINABLE_BLOCKS",
    "TINY_AFA_CONFIG",
    "AFAConfig",
    "AFAOutput",
    "AdaptiveFeatureAlignment",
    "EqualizedConv2d",
    "PlainCNNAlignment",
    "ResidualEncoder",
    "ResidualEncoderConfig",
    "ScaledLeakyReLU",
    "afa_config_from_fields",
    "apply_film",
    "build_feature_alignment",
    "delta_feature_penalty",
    "feature_tokens",
    "image_residual",
    "normalize_tokens",
    "pooled_residual_features",
    "resume_state",
    "tokens_to_map",
]
