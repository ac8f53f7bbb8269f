"""Loading the authors' released AFA weights (`afa_FFHQ.pt`) into our AdaptiveFeatureAlignment.

The file is a plain `AFA.state_dict()`: the authors' `Net.set_afa` calls
`afa.load_state_dict(torch.load(...))` strictly, so there is no prefix. Its 174 keys and shapes, derived
from their code, are listed in tests/data/goae_afa_keys.json. Only the released configuration fits:
AFAConfig() with heads="attention" and modulation="direct" (the defaults). Tensors are renamed, never
reshaped or transposed:

| theirs                                  | ours                                            |
|-----------------------------------------|-------------------------------------------------|
| input_layer.{0,1,2}                     | residual_encoder.stem.{0,1,2}                   |
| body.i.*  (IR-SE units, pSp names)      | residual_encoder.units.i.*                      |
| output_layer.{0,2}                      | residual_encoder.to_features.{0,2}              |
| cross_att_{gamma,beta}.multihead_attn   | {gamma,beta}_head.attention                     |
| cross_att_{gamma,beta}.linear1 / linear2 | {gamma,beta}_head.feedforward_in / feedforward_out |

The authors' LayerNorms (norm_x, norm_kv, the cross-attention norms) have no affine parameters, hence no keys.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch

from networks.afa import AdaptiveFeatureAlignment, AFAConfig

AFA_CHECKPOINT_SOURCE = (
    "the authors' released AFA weights (afa_FFHQ.pt, from the Google Drive folder linked under "
    "'pretrained model checkpoint' in the README of https://github.com/jiangyzy/GOAE; "
    "put it e.g. in pretrained/afa_FFHQ.pt)"
)

# (pattern on the authors' key, replacement); the first matching rule renames the key.
AFA_KEY_RULES: tuple[tuple[str, str], ...] = (
    (r"^input_layer\.", "residual_encoder.stem."),
    (r"^body\.", "residual_encoder.units."),  # IR-SE units keep pSp's names (networks/ir_se.py)
    (r"^output_layer\.", "residual_encoder.to_features."),
    (r"^cross_att_(gamma|beta)\.multihead_attn\.", r"\1_head.attention."),
    (r"^cross_att_(gamma|beta)\.linear1\.", r"\1_head.feedforward_in."),
    (r"^cross_att_(gamma|beta)\.linear2\.", r"\1_head.feedforward_out."),
)
_DATA_PARALLEL_PREFIX = "module."


class AFACheckpointError(KeyError):
    """The file does not hold the released AFA state dict, or it does not fit the configured network."""

    def __str__(self) -> str:  # KeyError would quote the message; print it as written
        return str(self.args[0])


def map_released_afa_key(key: str) -> str | None:
    """The authors' key -> ours, or None when no rule covers it."""
    for pattern, replacement in AFA_KEY_RULES:
        if re.match(pattern, key):
            return re.sub(pattern, replacement, key, count=1)
    return None


def map_released_afa_state_dict(theirs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename every key of the authors' AFA state dict; raises AFACheckpointError listing unmapped keys."""
    ours: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    for key, tensor in theirs.items():
        our_key = map_released_afa_key(key)
        if our_key is None:
            unmapped.append(key)
        else:
            ours[our_key] = tensor
    if unmapped:
        raise AFACheckpointError(
            f"AFA state dict has {len(unmapped)} key(s) no mapping rule covers: {unmapped}"
        )
    return ours


def _strip_data_parallel_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if state and all(key.startswith(_DATA_PARALLEL_PREFIX) for key in state):
        return {key[len(_DATA_PARALLEL_PREFIX) :]: value for key, value in state.items()}
    return state


def load_released_afa_state_into(
    afa: AdaptiveFeatureAlignment, theirs: Mapping[str, torch.Tensor], source: str
) -> None:
    """Map and load strictly; the error lists missing, unexpected and wrong-shaped keys (in OUR names)."""
    mapped = map_released_afa_state_dict(_strip_data_parallel_prefix(dict(theirs)))
    expected = afa.state_dict()
    missing = sorted(set(expected) - set(mapped))
    unexpected = sorted(set(mapped) - set(expected))
    wrong_shapes = {
        key: (tuple(mapped[key].shape), tuple(expected[key].shape))
        for key in sorted(set(mapped) & set(expected))
        if mapped[key].shape != expected[key].shape
    }
    if missing or unexpected or wrong_shapes:
        raise AFACheckpointError(
            f"{source} does not fit this AFA (only AFAConfig() with heads='attention', modulation='direct' "
            "does): "
            f"missing {missing}; unexpected {unexpected}; wrong shapes (checkpoint, model) {wrong_shapes}"
        )
    afa.load_state_dict(mapped, strict=True)


def _read_state_dict(path: Path, source: str) -> dict[str, torch.Tensor]:
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    if (
        not isinstance(loaded, Mapping)
        or not loaded
        or not all(isinstance(v, torch.Tensor) for v in loaded.values())
    ):
        raise AFACheckpointError(
            f"{source}: expected a plain state dict of tensors, got {type(loaded).__name__}"
        )
    return dict(loaded)


def load_released_afa(path: str | Path, config: AFAConfig | None = None) -> AdaptiveFeatureAlignment:
    """Build the released-configuration AFA (or `config`) and load `afa_FFHQ.pt` into it strictly."""
    checkpoint_path = Path(path)
    if not checkpoint_path.is_file():
        raise FileNotFoundError(f"{checkpoint_path} not found: expected {AFA_CHECKPOINT_SOURCE}")
    source = f"{checkpoint_path} ({AFA_CHECKPOINT_SOURCE})"
    afa = AdaptiveFeatureAlignment(config if config is not None else AFAConfig())
    load_released_afa_state_into(afa, _read_state_dict(checkpoint_path, source), source)
    return afa


__all__ = [
    "AFA_CHECKPOINT_SOURCE",
    "AFA_KEY_RULES",
    "AFACheckpointError",
    "load_released_afa",
    "load_released_afa_state_into",
    "map_released_afa_key",
    "map_released_afa_state_dict",
]
