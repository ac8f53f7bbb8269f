"""Loading a trained stage checkpoint as an ``Inverter`` (for the invert CLI and evaluation).

``load_inverter(cfg, ckpt_path)`` builds the generator from ``cfg.generator`` and the stage from
``cfg.stage`` (the same Hydra config tree as train.py, with the generator injected where the stage
declares ``generator: ???``), loads the checkpoint's ``state_dict`` and returns the stage in eval
mode. A stage class may take over with its own classmethod
``load_inverter(generator, ckpt_path, stage_cfg) -> Inverter`` (e.g. to skip training-only parts).

Checkpoints are read WITHOUT running code from the file: torch's weights-only unpickler, where every
non-tensor Python object a Lightning checkpoint may carry (hyper-parameters holding OmegaConf nodes,
Hydra partials of optimisers, ...) is replaced by an inert ``OpaqueObject``. Only the tensors of
``state_dict`` and plain data (the stage record) are used.

Optimisation methods (``configs/method``: PTI, Pose Opt.) need no checkpoint of their own:
``load_method_inverter(cfg)`` / ``inverter_from_method(method_cfg, stage_cfg, generator)`` build the
method around the generator, and its ``init_checkpoint`` (the hybrid start) is loaded into the
configured stage by the same path as any stage checkpoint.

Wrong-stage checks: stage modules record ``checkpoint["goae_stage"]["name"]`` in
``on_save_checkpoint``. We ask the configured stage what it would record and compare; a checkpoint
without a record is still checked key by key (missing / unexpected keys listed in the error).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from inversion.result import Inverter
from runtime.instantiate import instantiate_component

# Where a stage records its identity in a Lightning checkpoint (see lightning_modules/*_stage.py).
STAGE_RECORD_KEY = "goae_stage"
# Stage checkpoints never hold the frozen generator nor the frozen loss networks (rebuilt from configs).
DELIBERATELY_ABSENT_PREFIXES: tuple[str, ...] = ("generator.", "loss.")
# Key of a method config (configs/method) naming the stage checkpoint whose inverter starts it (hybrid).
METHOD_INIT_KEY = "init_checkpoint"
# Classmethod a stage class may define to build its own inverter from a checkpoint.
STAGE_LOADER_NAME = "load_inverter"
MAX_LISTED_KEYS = 8
LIGHTNING_CHECKPOINT_KEYS = ("state_dict", "pytorch-lightning_version")


class CheckpointError(ValueError):
    """A stage checkpoint is missing, unreadable, or does not fit the configured stage."""


class StageMismatchError(CheckpointError):
    """The checkpoint was written by another stage than the configured one."""


class OpaqueObject:
    """Stands in for any non-tensor Python object of a checkpoint: accepts and ignores its data."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:  # dict-like objects are rebuilt by SETITEMS
        pass

    def append(self, value: Any) -> None:  # list-like objects are rebuilt by APPENDS
        pass

    def extend(self, values: Any) -> None:
        pass


@dataclass(frozen=True)
class StageCheckpoint:
    path: Path
    state_dict: dict[str, torch.Tensor]
    record: dict[str, Any]  # what the writing stage recorded under "goae_stage" ({} when absent)
    is_lightning_checkpoint: bool  # False for a bare state-dict file (e.g. the authors' released weights)

    @property
    def stage_name(self) -> str | None:
        return self.record.get("name")


def read_stage_checkpoint(path: str | Path) -> StageCheckpoint:
    """The tensors and stage record of a Lightning checkpoint (or of a bare state_dict file)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path} (set ckpt_path=<a stage checkpoint .ckpt>)")
    # WHY a static scan first: torch lists the globals the file would call without unpickling it;
    # each is mapped to the inert OpaqueObject so that nothing from the file is ever executed.
    try:
        foreign = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        with torch.serialization.safe_globals([(OpaqueObject, name) for name in foreign]):
            content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt zip, truncated file, not a torch file
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(error).__name__}: {error})") from error
    if not isinstance(content, dict):
        raise CheckpointError(f"{path}: expected a checkpoint dict, got {type(content).__name__}")
    state = content.get("state_dict", content)
    tensors = {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: holds no weights (no 'state_dict' of tensors)")
    record = content.get(STAGE_RECORD_KEY)
    return StageCheckpoint(
        path=path, state_dict=tensors, record=dict(record) if isinstance(record, dict) else {},
        is_lightning_checkpoint=all(key in content for key in LIGHTNING_CHECKPOINT_KEYS),
    )


def recorded_stage_name(stage: Any) -> str | None:
    """The name ``stage`` writes into its checkpoints (asked through its own on_save_checkpoint)."""
    on_save = getattr(stage, "on_save_checkpoint", None)
    if not callable(on_save):
        return None
    probe: dict[str, Any] = {}
    on_save(probe)
    record = probe.get(STAGE_RECORD_KEY)
    return record.get("name") if isinstance(record, dict) else None


def check_stage_matches(checkpoint: StageCheckpoint, stage: Any, stage_target: str) -> None:
    expected = recorded_stage_name(stage)
    if checkpoint.stage_name is not None and expected is not None and checkpoint.stage_name != expected:
        raise StageMismatchError(
            f"{checkpoint.path} is a checkpoint of stage '{checkpoint.stage_name}', but the configured stage is "
            f"'{expected}' (<{stage_target}>). Pick the matching stage config (e.g. stage=<config of "
            f"'{checkpoint.stage_name}'>) or the checkpoint of a '{expected}' run."
        )


def load_state_into_stage(stage: torch.nn.Module, checkpoint: StageCheckpoint, stage_target: str) -> None:
    """Load the weights; only the deliberately absent frozen networks may be missing."""
    try:
        result = torch.nn.Module.load_state_dict(stage, checkpoint.state_dict, strict=False)
    except RuntimeError as error:  # tensors of another shape: raised even with strict=False
        raise CheckpointError(
            f"{checkpoint.path} does not fit the configured stage <{stage_target}>: {error}"
        ) from error
    missing = [key for key in result.missing_keys if not key.startswith(DELIBERATELY_ABSENT_PREFIXES)]
    unexpected = list(result.unexpected_keys)
    if missing or unexpected:
        recorded = f" (written by stage '{checkpoint.stage_name}')" if checkpoint.stage_name else ""
        raise CheckpointError(
            f"{checkpoint.path}{recorded} does not fit the configured stage <{stage_target}>: "
            f"{len(missing)} missing keys {missing[:MAX_LISTED_KEYS]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:MAX_LISTED_KEYS]}. "
            "Is it a checkpoint of this stage, trained with the same network settings?"
        )


def require_inverter(stage: Any, stage_target: str) -> Inverter:
    if not callable(getattr(stage, "invert", None)) or getattr(stage, "generator", None) is None:
        raise CheckpointError(
            f"stage <{stage_target}> does not implement the Inverter protocol "
            "(inversion/result.py: a `generator` attribute and invert(image, image_full, camera))"
        )
    return stage


def stage_for_inference(cfg: DictConfig) -> DictConfig:
    """A copy of ``cfg.stage`` with ``cfg.stage_inference_overrides`` (dotted keys) applied where those
    keys exist.

    WHY: building a stage for inference must not need the files only training uses (pretrained
    backbones that the checkpoint overwrites anyway, loss-network weights); keys a stage lacks
    are left alone so one override list serves every stage.
    """
    copied = copy.deepcopy(cfg)  # the whole tree, so ${paths...} / ${seed} interpolations still resolve
    with open_dict(copied):
        for dotted_key, value in (cfg.get("stage_inference_overrides") or {}).items():
            parent_key, _, leaf = f"stage.{dotted_key}".rpartition(".")
            parent = OmegaConf.select(copied, parent_key)
            if isinstance(parent, DictConfig) and leaf in parent:
                parent[leaf] = value
    return copied.stage


def load_inverter(
    cfg: DictConfig, ckpt_path: str | Path, device: torch.device | str = "cpu"
) -> Inverter:
    """The stage of ``cfg.stage`` with the weights of ``ckpt_path``, in eval mode on ``device``."""
    generator = hydra.utils.instantiate(cfg.generator)
    return inverter_from_checkpoint(stage_for_inference(cfg), generator, ckpt_path).to(device).eval()


def inverter_from_checkpoint(stage_cfg: DictConfig, generator: torch.nn.Module, ckpt_path: str | Path) -> Inverter:
    """Build the stage of ``stage_cfg`` around ``generator`` and load ``ckpt_path`` into it (or let the
    stage class load it with its own ``load_inverter`` classmethod); checks the recorded stage."""
    checkpoint = read_stage_checkpoint(ckpt_path)
    stage_target = str(stage_cfg._target_)
    stage_class = hydra.utils.get_class(stage_target)
    own_loader = getattr(stage_class, STAGE_LOADER_NAME, None)
    if callable(own_loader):
        stage = own_loader(generator, str(checkpoint.path), stage_cfg)
        check_stage_matches(checkpoint, stage, stage_target)
    else:
        stage = instantiate_component(stage_cfg, generator)
        check_stage_matches(checkpoint, stage, stage_target)
        load_state_into_stage(stage, checkpoint, stage_target)
    return require_inverter(stage, stage_target)


def inverter_from_method(method_cfg: DictConfig, stage_cfg: DictConfig, generator: torch.nn.Module) -> Inverter:
    """The optimisation method of ``method_cfg`` (a ``configs/method`` node) around ``generator``.

    With ``init_checkpoint`` set, the stage of ``stage_cfg`` loaded from that checkpoint (checked like
    any stage checkpoint) becomes the method's ``init``: its w+ starts the optimisation (hybrid).
    """
    node = copy.deepcopy(method_cfg)
    with open_dict(node):
        init_checkpoint = node.pop(METHOD_INIT_KEY, None)
    init = None
    if init_checkpoint:
        init = inverter_from_checkpoint(stage_cfg, generator, init_checkpoint)
        init.eval()  # type: ignore[attr-defined]
    method = instantiate_component(node, generator) if init is None else hydra.utils.instantiate(
        node, generator=generator, init=init)
    return require_inverter(method, str(node._target_))


def load_method_inverter(cfg: DictConfig, device: torch.device | str = "cpu") -> Inverter:
    """The method of ``cfg.method`` (with ``cfg.stage`` for its hybrid start), in eval mode on ``device``."""
    generator = hydra.utils.instantiate(cfg.generator)
    inverter = inverter_from_method(cfg.method, stage_for_inference(cfg), generator)
    return inverter.to(device).eval()  # type: ignore[attr-defined]
