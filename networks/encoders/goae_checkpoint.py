"""Loading weights into GOAEncoder: the authors' released encoder and ImageNet SwinV2 backbones.

Authors' `encoder_FFHQ.pt` (GOAE README, Google Drive): a plain `GOAEncoder.state_dict()` (their
`Net.set_encoder` calls `E.load_state_dict(torch.load(...))` strictly, so no prefix). Its keys and
shapes, derived from their code, are in tests/data/goae_encoder_keys.json; docs/encoder.md lists
the rename rules below in a table.

Rules (theirs -> ours):
* `swin_model.<Microsoft SwinV2 key>` -> `backbone.<timm SwinV2 key>`: identical names except that
  Microsoft's `layers.k.downsample.*` (merge at the END of stage k) is timm's `layers.{k+1}.downsample.*`
  (merge at the START of stage k+1); the derived buffers `relative_position_index`,
  `relative_coords_table` and `attn_mask` are dropped (timm recomputes them; their shapes are checked
  against ours when loading, which catches a checkpoint made with another window size). This is the
  rule of timm's own `checkpoint_filter_fn` for Microsoft checkpoints.
* the heads: a fixed prefix table, HEAD_KEY_RENAMES. No tensor is reshaped or transposed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from timm.models.swin_transformer_v2 import checkpoint_filter_fn

from networks.encoders.goae_encoder import GOAEncoder, GOAEncoderConfig

AUTHORS_BACKBONE_PREFIX = "swin_model."
OUR_BACKBONE_PREFIX = "backbone."
DERIVED_BUFFER_NAMES: tuple[str, ...] = ("relative_position_index", "relative_coords_table", "attn_mask")
GOAE_CHECKPOINT_SOURCE = (
    "the authors' released GOAE encoder (encoder_FFHQ.pt, from the Google Drive link in the README of "
    "https://github.com/jiangyzy/GOAE)"
)
BACKBONE_WEIGHTS_RANDOM = "random"

# (authors' prefix, our prefix); applied to every key outside the backbone, first match wins.
HEAD_KEY_RENAMES: tuple[tuple[str, str], ...] = (
    ("mapper_base_spatial.", "w0_token_mlp."),
    ("mapper_base_channel.", "w0_channel_mlp."),
    *(
        rename
        for group in ("coarse", "mid", "fine")
        for rename in (
            (f"mapper_query_spatial_{group}.", f"query_token_mlps.{group}."),
            (f"mapper_query_channel_{group}.", f"query_channel_mlps.{group}."),
            (f"mapper_{group}_channel.", f"kv_channel_projections.{group}."),
            (f"cross_att_{group}.multihead_attn.", f"cross_attention.{group}.attention."),
            (f"cross_att_{group}.linear1.", f"cross_attention.{group}.feedforward_in."),
            (f"cross_att_{group}.linear2.", f"cross_attention.{group}.feedforward_out."),
        )
    ),
    ("mapper_coarse_to_mid_spatial.", "kv_token_upsamplers.mid."),
    ("mapper_mid_to_fine_spatial.", "kv_token_upsamplers.fine."),
)
# Wrappers seen around encoder state dicts in the GOAE / e4e ecosystem (training-code checkpoints,
# DataParallel). The cat checkpoint is said to have "mismatched keys" (jiangyzy/GOAE#3), cause unknown.
_WRAPPER_KEYS: tuple[str, ...] = ("encoder_state_dict", "state_dict", "model", "encoder")
_STRIPPABLE_PREFIXES: tuple[str, ...] = ("module.", "encoder.")


def is_derived_buffer(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in DERIVED_BUFFER_NAMES


def microsoft_swinv2_key_to_timm(key: str) -> str:
    """Microsoft SwinV2 key -> timm key: only the patch-merging layers move one stage on."""
    return re.sub(
        r"^layers\.(\d+)\.downsample\.", lambda match: f"layers.{int(match.group(1)) + 1}.downsample.", key
    )


def map_goae_encoder_state_dict(theirs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The authors' GOAEncoder state dict -> ours (same tensors, renamed; derived buffers dropped).

    Raises KeyError naming every key no rule covers.
    """
    ours: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    for key, tensor in theirs.items():
        if key.startswith(AUTHORS_BACKBONE_PREFIX):
            backbone_key = key[len(AUTHORS_BACKBONE_PREFIX) :]
            if is_derived_buffer(backbone_key):
                continue
            ours[OUR_BACKBONE_PREFIX + microsoft_swinv2_key_to_timm(backbone_key)] = tensor
            continue
        for their_prefix, our_prefix in HEAD_KEY_RENAMES:
            if key.startswith(their_prefix):
                ours[our_prefix + key[len(their_prefix) :]] = tensor
                break
        else:
            unmapped.append(key)
    if unmapped:
        raise KeyError(
            f"GOAE encoder state dict has {len(unmapped)} key(s) no mapping rule covers: {unmapped}"
        )
    return ours


def derived_buffer_shapes(theirs: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """Shapes of the authors' derived Swin buffers, under OUR key names (for the window-size check)."""
    return {
        OUR_BACKBONE_PREFIX + microsoft_swinv2_key_to_timm(key[len(AUTHORS_BACKBONE_PREFIX) :]): tuple(
            tensor.shape
        )
        for key, tensor in theirs.items()
        if key.startswith(AUTHORS_BACKBONE_PREFIX) and is_derived_buffer(key)
    }


def unwrap_encoder_state_dict(loaded: object, source: str) -> dict[str, torch.Tensor]:
    """Find the tensor dict inside a loaded checkpoint and strip a uniform `module.`/`encoder.` prefix."""
    state = loaded
    while isinstance(state, Mapping) and not _is_tensor_mapping(state):
        wrapper = next((key for key in _WRAPPER_KEYS if key in state), None)
        if wrapper is None:
            raise KeyError(
                f"{source}: no state dict found; top-level keys are {sorted(map(str, state))[:20]}"
            )
        state = state[wrapper]
    if not isinstance(state, Mapping):
        raise TypeError(f"{source}: expected a state dict, got {type(state).__name__}")
    tensors = dict(state)
    for prefix in _STRIPPABLE_PREFIXES:
        if tensors and all(key.startswith(prefix) for key in tensors):
            tensors = {key[len(prefix) :]: value for key, value in tensors.items()}
    return tensors


def _is_tensor_mapping(state: Mapping) -> bool:
    return len(state) > 0 and all(isinstance(value, torch.Tensor) for value in state.values())


def load_goae_state_into(encoder: GOAEncoder, theirs: Mapping[str, torch.Tensor], source: str) -> None:
    """Map the authors' state dict and load it into `encoder` strictly, with readable errors."""
    mapped = map_goae_encoder_state_dict(theirs)
    our_buffers = dict(encoder.named_buffers())
    wrong_windows = {
        key: (shape, tuple(our_buffers[key].shape))
        for key, shape in derived_buffer_shapes(theirs).items()
        if key in our_buffers and our_buffers[key] is not None and tuple(our_buffers[key].shape) != shape
    }
    if wrong_windows:
        raise ValueError(
            f"{source}: Swin window buffers differ from this encoder's configuration (theirs, ours): {wrong_windows}"
        )
    _load_strictly(encoder, mapped, source)


def _load_strictly(module: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shapes = {
        key: (tuple(state[key].shape), tuple(expected[key].shape))
        for key in set(state) & set(expected)
        if state[key].shape != expected[key].shape
    }
    if missing or unexpected or wrong_shapes:
        raise KeyError(
            f"{source} does not fit {type(module).__name__}: missing {missing}; unexpected {unexpected}; "
            f"wrong shapes (checkpoint, model) {wrong_shapes}"
        )
    module.load_state_dict(state, strict=True)


def _torch_load(path: Path) -> object:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def load_goae_encoder(path: str | Path, config: GOAEncoderConfig | None = None) -> GOAEncoder:
    """Build the full-size encoder and load the authors' released `encoder_FFHQ.pt` into it."""
    checkpoint_path = Path(path)
    if not checkpoint_path.is_file():
        raise FileNotFoundError(f"{checkpoint_path} not found: expected {GOAE_CHECKPOINT_SOURCE}")
    source = f"{checkpoint_path} ({GOAE_CHECKPOINT_SOURCE})"
    theirs = unwrap_encoder_state_dict(_torch_load(checkpoint_path), source)
    encoder = GOAEncoder(config if config is not None else GOAEncoderConfig())
    load_goae_state_into(encoder, theirs, source)
    return encoder


def load_backbone_weights(encoder: GOAEncoder, path: str | Path) -> None:
    """Load ImageNet SwinV2 weights (Microsoft's .pth or a timm .pth/.bin/.safetensors) into the backbone.

    For GOAE use `swinv2_base_patch4_window12to16_192to256_22kto1k_ft.pth` (Microsoft) or timm's
    `swinv2_base_window12to16_192to256.ms_in22k_ft_in1k`; the classifier head is dropped.
    """
    weights_path = Path(path)
    if not weights_path.is_file():
        raise FileNotFoundError(
            f"backbone weights {weights_path} not found: give a local SwinV2 ImageNet checkpoint, e.g. Microsoft's "
            "swinv2_base_patch4_window12to16_192to256_22kto1k_ft.pth, or backbone_weights=random to train from scratch"
        )
    loaded = _torch_load(weights_path)
    state = unwrap_encoder_state_dict(loaded, str(weights_path))
    filtered = checkpoint_filter_fn(state, encoder.backbone)
    backbone_state = {key: value for key, value in filtered.items() if not key.startswith("head.")}
    _load_strictly(encoder.backbone, backbone_state, f"backbone weights {weights_path}")


def build_goae_encoder(
    backbone_weights: str, goae_checkpoint: str | None = None, **config_fields: object
) -> GOAEncoder:
    """Hydra entry point: the architecture from `config_fields`, then weights.

    backbone_weights: a local SwinV2 ImageNet checkpoint path, or "random" (an explicit choice; no default).
    goae_checkpoint: optionally the authors' released encoder, loaded over everything (then
      backbone_weights must be "random", since it would be overwritten anyway).
    """
    config = GOAEncoderConfig(**config_fields)  # type: ignore[arg-type]
    if goae_checkpoint is not None:
        if backbone_weights != BACKBONE_WEIGHTS_RANDOM:
            raise ValueError(
                "build_goae_encoder: goae_checkpoint replaces all weights; set backbone_weights=random"
            )
        return load_goae_encoder(goae_checkpoint, config)
    encoder = GOAEncoder(config)
    if backbone_weights != BACKBONE_WEIGHTS_RANDOM:
        load_backbone_weights(encoder, backbone_weights)
    return encoder
