"""Image encoders that invert EG3D: GOAE's Swin-transformer encoder and its checkpoint loaders.

Public API::

    encoder = GOAEncoder(GOAEncoderConfig())                  # full size, random weights
    encoder = build_goae_encoder(backbone_weights="random" | "<swinv2 imagenet .pth>", **config_fields)
    encoder = load_goae_encoder("pretrained/encoder_FFHQ.pt")  # the authors' released weights
    out = encoder(images_256, w_avg=G.mapping.w_avg, stage=progressive_stage_for_step(global_step))
    out.ws  # [N, 14, 512] absolute w+, out.w0 [N, 512], out.deltas [N, 14, 512], out.stage

See docs/encoder.md for the taps, heads, progressive stages and the checkpoint key mapping.
"""

from networks.encoders.attention import LatentCrossAttention
from networks.encoders.goae_checkpoint import (
    BACKBONE_WEIGHTS_RANDOM,
    HEAD_KEY_RENAMES,
    build_goae_encoder,
    load_backbone_weights,
    load_goae_encoder,
    map_goae_encoder_state_dict,
    microsoft_swinv2_key_to_timm,
    unwrap_encoder_state_dict,
)
from networks.encoders.goae_encoder import (
    DEFAULT_STAGE_BOUNDARIES,
    FINAL_STAGE,
    GROUP_NAMES,
    GROUP_ROWS,
    NUM_WS,
    TINY_GOAE_ENCODER_CONFIG,
    EncoderOutput,
    GOAEncoder,
    GOAEncoderConfig,
    SwinFeatureTaps,
    active_groups,
    active_row_count,
    progressive_stage_for_step,
    validate_stage_boundaries,
)

__all__ = [
    "BACKBONE_WEIGHTS_RANDOM",
    "DEFAULT_STAGE_BOUNDARIES",
    "FINAL_STAGE",
    "GROUP_NAMES",
    "GROUP_ROWS",
    "HEAD_KEY_RENAMES",
    "NUM_WS",
    "TINY_GOAE_ENCODER_CONFIG",
    "EncoderOutput",
    "GOAEncoder",
    "GOAEncoderConfig",
    "LatentCrossAttention",
    "SwinFeatureTaps",
    "active_groups",
    "active_row_count",
    "build_goae_encoder",
    "load_backbone_weights",
    "load_goae_encoder",
    "map_goae_encoder_state_dict",
    "microsoft_swinv2_key_to_timm",
    "progressive_stage_for_step",
    "unwrap_encoder_state_dict",
    "validate_stage_boundaries",
]
