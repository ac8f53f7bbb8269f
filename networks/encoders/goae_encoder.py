"""GOAE's geometry-aware Swin-transformer encoder (ICCV 2023, Sec. 4.1 and Appendix A).

Image [N, 3, S, S] in [-1, 1] -> w+ [N, 14, w_dim]. Structure, following the authors' released
`goae/training/goae.py::GOAEncoder` (facts only; see docs/encoder.md for every tap and head):

* backbone: SwinV2 (default SwinV2-Base: embed 128, depths 2/2/18/2, heads 4/8/16/32, window 16,
  pretrained windows 12/12/12/6 = Microsoft's `swinv2_base_patch4_window12to16_192to256_22kto1k_ft`),
  built from timm's `SwinTransformerV2` class;
* five feature taps (shapes for S = 256):
    fine   [N, 4096, 128]  patch embedding (+LN), before any Swin block
    mid    [N, 1024, 256]  after stage 0 and its patch merging
    coarse [N,  256, 512]  after stage 1 and its patch merging
    query  [N,   64, 1024] after stage 2 and its patch merging
    base   [N,   64, 1024] after stage 3 and the final LayerNorm
  timm merges patches at the START of stages 1..3 whereas Microsoft's code (used by the authors)
  merges at the END of stages 0..2, so "after Microsoft stage k incl. merging" is "after timm
  stage k+1's downsample, before its blocks";
* w0 from `base`, the queries of the coarse (3 rows), mid (3) and fine (7) groups from `query`, their
  keys/values from `coarse`, `mid`, `fine` through an FPN-like path whose "upsampling" is a Linear over
  the token axis, and one cross-attention block per group;
* w+ = w_avg + repeat14(w0) + [0 | coarse rows 1-3 | mid rows 4-6 | fine rows 7-13].
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from timm.models.swin_transformer_v2 import SwinTransformerV2
from torch import nn
from torch.utils.checkpoint import checkpoint

from networks.encoders.attention import LatentCrossAttention

NUM_WS = 14
GROUP_NAMES: tuple[str, ...] = ("coarse", "mid", "fine")
# Rows of w+ each group's cross-attention writes (the code's layout; the paper's eq. 11 says "1~3, 3~6").
GROUP_ROWS: dict[str, tuple[int, ...]] = {
    "coarse": (1, 2, 3),
    "mid": (4, 5, 6),
    "fine": tuple(range(7, NUM_WS)),
}
# Stage s trains w0 plus the first s groups: 0 = w0 only, 1 = +coarse, 2 = +mid, 3 = +fine (all).
FINAL_STAGE = len(GROUP_NAMES)
DEFAULT_STAGE_BOUNDARIES: tuple[int, ...] = (10_000, 20_000, 30_000)
# The authors' token MLPs use nn.LeakyReLU() with its default slope.
HEAD_LEAKY_SLOPE = 0.01
PATCH_SIZE = 4
# Patch size 4 and three 2x2 merges: the image side must be a multiple of 4 * 2**3.
IMAGE_SIZE_MULTIPLE = PATCH_SIZE * 2**3


def progressive_stage_for_step(step: int, boundaries: Sequence[int] = DEFAULT_STAGE_BOUNDARIES) -> int:
    """Progressive stage (0..3) at a global optimiser step: the number of boundaries <= step.

    Pure, so a resumed run gets its stage back from the restored global step alone.
    Quirk of the authors' `GOAEncoder.set_stage`: at exactly the LAST boundary (30000) it stays at
    stage 2 and only switches at 30001 (every other boundary switches at the boundary itself). We use
    `>=` consistently, so the fine group opens at step 30000.
    """
    validate_stage_boundaries(boundaries)
    if step < 0:
        raise ValueError(f"progressive_stage_for_step: step must be >= 0, got {step}")
    return sum(1 for boundary in boundaries if step >= boundary)


def validate_stage_boundaries(boundaries: Sequence[int]) -> None:
    """Boundaries must be one non-negative, strictly increasing step per group (coarse, mid, fine)."""
    values = list(boundaries)
    if len(values) != len(GROUP_NAMES):
        raise ValueError(
            f"progressive stage boundaries need one step per group {GROUP_NAMES}, got {len(values)}: {values}"
        )
    if any(int(value) != value or value < 0 for value in values):
        raise ValueError(f"progressive stage boundaries must be non-negative integers, got {values}")
    if any(later <= earlier for earlier, later in itertools.pairwise(values)):
        raise ValueError(f"progressive stage boundaries must be strictly increasing, got {values}")


def validate_stage(stage: int) -> None:
    if not (isinstance(stage, int) and 0 <= stage <= FINAL_STAGE):
        raise ValueError(f"progressive stage must be an int in [0, {FINAL_STAGE}], got {stage!r}")


def active_groups(stage: int) -> tuple[str, ...]:
    """Groups whose deltas are added to w+ at `stage` (the first `stage` of coarse, mid, fine)."""
    validate_stage(stage)
    return GROUP_NAMES[:stage]


def active_row_count(stage: int) -> int:
    """Rows 0..k-1 of w+ that carry a trained value at `stage`: 1, 4, 7 or 14."""
    return 1 + sum(len(GROUP_ROWS[group]) for group in active_groups(stage))


@dataclass(frozen=True)
class GOAEncoderConfig:
    """Architecture of the encoder; the defaults are the authors' full-size configuration.

    The cross-attention width equals `w_dim`: the queries are w-space vectors (from the channel MLPs)
    and the block outputs are w-space deltas, so there is no separate d_model.
    """

    image_size: int = 256
    embed_dim: int = 128
    depths: tuple[int, ...] = (2, 2, 18, 2)
    num_heads: tuple[int, ...] = (4, 8, 16, 32)
    window_size: int = 16
    pretrained_window_sizes: tuple[int, ...] = (12, 12, 12, 6)
    drop_path_rate: float = 0.2
    w_dim: int = 512
    attention_heads: int = 4
    attention_feedforward_dim: int = 1024
    attention_dropout: float = 0.1
    # Recompute Swin blocks in backward to save memory (does not change results).
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        # Hydra passes lists; keep hashable tuples.
        for name in ("depths", "num_heads", "pretrained_window_sizes"):
            object.__setattr__(self, name, tuple(int(value) for value in getattr(self, name)))
        for name in ("depths", "num_heads", "pretrained_window_sizes"):
            if len(getattr(self, name)) != 4:
                raise ValueError(
                    f"GOAEncoderConfig.{name} needs 4 stages (GOAE taps all four), got {getattr(self, name)}"
                )
        if self.image_size <= 0 or self.image_size % IMAGE_SIZE_MULTIPLE != 0:
            raise ValueError(
                f"GOAEncoderConfig.image_size must be a positive multiple of {IMAGE_SIZE_MULTIPLE}, got {self.image_size}"
            )
        for stage_index, heads in enumerate(self.num_heads):
            width = self.embed_dim * 2**stage_index
            if width % heads != 0:
                raise ValueError(
                    f"GOAEncoderConfig: stage {stage_index} width {width} not divisible by {heads} heads"
                )
        if self.w_dim % self.attention_heads != 0:
            raise ValueError(
                f"GOAEncoderConfig: w_dim {self.w_dim} not divisible by attention_heads {self.attention_heads}"
            )

    def token_counts(self) -> dict[str, int]:
        """Tokens per tap; they size the token-axis Linears, which tie the model to `image_size`."""
        side = self.image_size // PATCH_SIZE
        return {
            "fine": side**2,
            "mid": (side // 2) ** 2,
            "coarse": (side // 4) ** 2,
            "query": (side // 8) ** 2,
            "base": (side // 8) ** 2,
        }

    def tap_channels(self) -> dict[str, int]:
        width = self.embed_dim
        return {"fine": width, "mid": 2 * width, "coarse": 4 * width, "query": 8 * width, "base": 8 * width}

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class SwinFeatureTaps:
    """The five backbone taps, each token-major [N, tokens, channels] in row-major raster order."""

    fine: torch.Tensor
    mid: torch.Tensor
    coarse: torch.Tensor
    query: torch.Tensor
    base: torch.Tensor


@dataclass
class EncoderOutput:
    """What the encoder predicts for one batch.

    ws: absolute w+ [N, 14, w_dim] = w_avg + w0 (every row) + deltas; feed this to the generator.
    w0: the encoder's base code [N, w_dim], WITHOUT w_avg.
    deltas: per-row offsets from w0 [N, 14, w_dim]; row 0 and the rows of groups inactive at `stage`
      are exactly zero (e4e's delta regulariser acts on these).
    stage: the progressive stage the output was computed at.
    """

    ws: torch.Tensor
    w0: torch.Tensor
    deltas: torch.Tensor
    stage: int


def _token_mlp(width: int, out_width: int) -> nn.Sequential:
    """The authors' `get_mlp_layer(width, out, mlp_layer=2)`: Linear(w, w), LeakyReLU, Linear(w, out)."""
    return nn.Sequential(nn.Linear(width, width), nn.LeakyReLU(HEAD_LEAKY_SLOPE), nn.Linear(width, out_width))


def _linear_chain(widths: Sequence[int]) -> nn.Sequential:
    """Linear + LeakyReLU after every layer (the authors' key/value path)."""
    layers: list[nn.Module] = []
    for in_width, out_width in itertools.pairwise(widths):
        layers += [nn.Linear(in_width, out_width), nn.LeakyReLU(HEAD_LEAKY_SLOPE)]
    return nn.Sequential(*layers)


def _rows_from_tokens(token_mlp: nn.Module, channel_mlp: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """GOAE's token-to-row head: [N, T, C] -> [N, R, w_dim].

    Mixes the T tokens into R rows with a token-axis MLP, adds the max over tokens to every row,
    then maps channels to w space.
    """
    channels_first = features.transpose(1, 2)  # [N, C, T]
    token_max = channels_first.amax(dim=2).unsqueeze(1)  # [N, 1, C]
    mixed_rows = token_mlp(channels_first).transpose(1, 2)  # [N, R, C]
    return channel_mlp(mixed_rows + token_max)


class GOAEncoder(nn.Module):
    """GOAE's encoder; `forward(images, w_avg, stage)` -> EncoderOutput. Weights are randomly initialised.

    Use networks.encoders.build_goae_encoder for ImageNet backbone weights and
    networks.encoders.load_goae_encoder for the authors' released encoder.
    """

    def __init__(self, config: GOAEncoderConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else GOAEncoderConfig()
        config = self.config
        tokens = config.token_counts()
        channels = config.tap_channels()
        w_dim = config.w_dim

        # num_classes=0: no classifier; windows larger than a feature map shrink to it (no shift),
        # exactly like Microsoft's code, because timm's always_partition defaults to False.
        self.backbone = SwinTransformerV2(
            img_size=config.image_size,
            patch_size=PATCH_SIZE,
            num_classes=0,
            embed_dim=config.embed_dim,
            depths=config.depths,
            num_heads=config.num_heads,
            window_size=config.window_size,
            pretrained_window_sizes=config.pretrained_window_sizes,
            drop_path_rate=config.drop_path_rate,
        )

        self.w0_token_mlp = _token_mlp(tokens["base"], 1)
        self.w0_channel_mlp = _token_mlp(channels["base"], w_dim)
        self.query_token_mlps = nn.ModuleDict(
            {group: _token_mlp(tokens["query"], len(GROUP_ROWS[group])) for group in GROUP_NAMES}
        )
        self.query_channel_mlps = nn.ModuleDict(
            {group: _token_mlp(channels["query"], w_dim) for group in GROUP_NAMES}
        )
        # Keys/values: lift each tap's channels to w_dim ...
        self.kv_channel_projections = nn.ModuleDict(
            {
                "coarse": _linear_chain([channels["coarse"], w_dim]),
                "mid": _linear_chain([channels["mid"], w_dim]),
                # fine goes through the next stage's width first (128 -> 256 -> 512 at full size).
                "fine": _linear_chain([channels["fine"], channels["mid"], w_dim]),
            }
        )
        # ... plus the coarser group's keys/values "upsampled" by a Linear over the token axis
        # (256 -> 512 -> 1024 and 1024 -> 2048 -> 4096 tokens at full size), keyed by the target group.
        self.kv_token_upsamplers = nn.ModuleDict(
            {
                "mid": _linear_chain([tokens["coarse"], 2 * tokens["coarse"], tokens["mid"]]),
                "fine": _linear_chain([tokens["mid"], 2 * tokens["mid"], tokens["fine"]]),
            }
        )
        self.cross_attention = nn.ModuleDict(
            {
                group: LatentCrossAttention(
                    w_dim, config.attention_heads, config.attention_feedforward_dim, config.attention_dropout
                )
                for group in GROUP_NAMES
            }
        )

    def extract_taps(self, images: torch.Tensor) -> SwinFeatureTaps:
        """Run the backbone and take the five taps where the authors take them (see module docstring)."""
        expected = (3, self.config.image_size, self.config.image_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"GOAEncoder expects images [N, {expected[0]}, {expected[1]}, {expected[2]}], got {list(images.shape)}"
            )
        hidden = self.backbone.patch_embed(images)  # NHWC
        merged_inputs: list[
            torch.Tensor
        ] = []  # timm stage k>0 downsample output = Microsoft stage k-1 output
        for stage in self.backbone.layers:
            hidden = stage.downsample(hidden)
            merged_inputs.append(hidden)
            for block in stage.blocks:
                if self.config.gradient_checkpointing and self.training:
                    hidden = checkpoint(block, hidden, use_reentrant=False)
                else:
                    hidden = block(hidden)
        base = self.backbone.norm(hidden)
        return SwinFeatureTaps(
            fine=merged_inputs[0].flatten(1, 2),  # stage 0 has no downsample: the patch embedding
            mid=merged_inputs[1].flatten(1, 2),
            coarse=merged_inputs[2].flatten(1, 2),
            query=merged_inputs[3].flatten(1, 2),
            base=base.flatten(1, 2),
        )

    def forward(self, images: torch.Tensor, w_avg: torch.Tensor, stage: int) -> EncoderOutput:
        """Encode `images` at progressive `stage` (0..3); `w_avg` [w_dim] is the generator's mean w.

        Every head runs at every stage and inactive groups are zeroed with torch.where: their outputs
        are exactly 0, yet all parameters stay in the autograd graph and receive (zero) gradients, so
        DistributedDataParallel needs no find_unused_parameters. See docs/encoder.md for how the
        training step should treat the optimiser state of inactive heads.
        """
        validate_stage(stage)
        w_dim = self.config.w_dim
        if w_avg.numel() != w_dim:
            raise ValueError(
                f"GOAEncoder.forward: w_avg must have {w_dim} elements, got shape {list(w_avg.shape)}"
            )
        taps = self.extract_taps(images)

        w0 = _rows_from_tokens(self.w0_token_mlp, self.w0_channel_mlp, taps.base)[:, 0]  # [N, w_dim]
        group_rows = self._group_rows(taps)
        raw_deltas = torch.cat(
            [w0.new_zeros(w0.shape[0], 1, w_dim)] + [group_rows[g] for g in GROUP_NAMES], dim=1
        )
        row_is_active = torch.arange(NUM_WS, device=w0.device) < active_row_count(stage)
        deltas = torch.where(row_is_active[None, :, None], raw_deltas, torch.zeros_like(raw_deltas))
        ws = w_avg.reshape(1, 1, w_dim).to(w0.dtype) + w0.unsqueeze(1) + deltas
        return EncoderOutput(ws=ws, w0=w0, deltas=deltas, stage=stage)

    def _group_rows(self, taps: SwinFeatureTaps) -> dict[str, torch.Tensor]:
        """Cross-attention output rows of every group: coarse [N,3,w], mid [N,3,w], fine [N,7,w]."""
        queries = {
            group: _rows_from_tokens(self.query_token_mlps[group], self.query_channel_mlps[group], taps.query)
            for group in GROUP_NAMES
        }
        kv_coarse = self.kv_channel_projections["coarse"](taps.coarse)
        kv_mid = self.kv_channel_projections["mid"](taps.mid) + self._upsample_tokens("mid", kv_coarse)
        kv_fine = self.kv_channel_projections["fine"](taps.fine) + self._upsample_tokens("fine", kv_mid)
        memories = {"coarse": kv_coarse, "mid": kv_mid, "fine": kv_fine}
        return {group: self.cross_attention[group](queries[group], memories[group]) for group in GROUP_NAMES}

    def _upsample_tokens(self, target_group: str, tokens: torch.Tensor) -> torch.Tensor:
        return self.kv_token_upsamplers[target_group](tokens.transpose(1, 2)).transpose(1, 2)

    def head_parameters(self, group: str) -> list[nn.Parameter]:
        """Parameters used only by `group`'s deltas (its query MLPs, key/value path and cross-attention)."""
        if group not in GROUP_NAMES:
            raise ValueError(f"unknown group {group!r}; expected one of {GROUP_NAMES}")
        modules: list[nn.Module] = [
            self.query_token_mlps[group],
            self.query_channel_mlps[group],
            self.kv_channel_projections[group],
            self.cross_attention[group],
        ]
        if group in self.kv_token_upsamplers:
            modules.append(self.kv_token_upsamplers[group])
        return [parameter for module in modules for parameter in module.parameters()]

    def inactive_head_parameters(self, stage: int) -> list[nn.Parameter]:
        """Parameters of the groups not yet open at `stage` (their gradients are exactly zero)."""
        validate_stage(stage)
        return [parameter for group in GROUP_NAMES[stage:] for parameter in self.head_parameters(group)]


# A small encoder of the same structure for the 'tiny' generator and CPU runs (64 px input, w_dim 512).
TINY_GOAE_ENCODER_CONFIG = GOAEncoderConfig(
    image_size=64,
    embed_dim=16,
    depths=(1, 1, 1, 1),
    num_heads=(1, 2, 2, 4),
    window_size=4,
    pretrained_window_sizes=(0, 0, 0, 0),
    drop_path_rate=0.0,
    w_dim=512,
    attention_heads=4,
    attention_feedforward_dim=1024,
    attention_dropout=0.1,
)
