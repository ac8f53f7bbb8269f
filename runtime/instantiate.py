"""Build runtime objects from config nodes (callbacks, loggers, stage and data components)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import hydra
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from runtime.pylogger import RankedLogger
from runtime.wandb_mode import resolve_wandb_offline, stable_run_id

log = RankedLogger(__name__)

# Key a stage/data config declares (as `generator: ???`) to receive the shared generator instance.
GENERATOR_ARGUMENT = "generator"

# Callbacks Lightning refuses to run without a logger.
LOGGER_DEPENDENT_CALLBACKS: tuple[type[Callback], ...] = (LearningRateMonitor,)


def instantiate_component(node: DictConfig, generator: Any) -> Any:
    """Instantiate a stage or datamodule config, passing the generator where it declares `generator: ???`.

    The generator is passed as an object (not through the config) because it is an nn.Module; a
    config without such a slot is built without it.
    """
    log.info(f"Instantiating <{node._target_}>")
    # Only a `???` slot is filled: a config may also hold its own `generator` sub-config (e.g. the
    # synthetic data describes how loader workers rebuild the generator) which must stay as written.
    if GENERATOR_ARGUMENT in node.keys() and OmegaConf.is_missing(node, GENERATOR_ARGUMENT):
        return hydra.utils.instantiate(node, **{GENERATOR_ARGUMENT: generator})
    return hydra.utils.instantiate(node)


def instantiate_callbacks(callbacks_cfg: DictConfig | None) -> list[Callback]:
    """Every `_target_` entry of the `callbacks` group, in config order."""
    callbacks: list[Callback] = []
    if not callbacks_cfg:
        return callbacks
    if not isinstance(callbacks_cfg, DictConfig):
        raise TypeError("callbacks config must be a dict of {name: {_target_: ...}}")
    for name, callback_cfg in callbacks_cfg.items():
        if isinstance(callback_cfg, DictConfig) and "_target_" in callback_cfg:
            log.info(f"Instantiating callback {name} <{callback_cfg._target_}>")
            callbacks.append(hydra.utils.instantiate(callback_cfg))
    return callbacks


def without_logger_dependent_callbacks(callbacks: list[Callback]) -> list[Callback]:
    """The callbacks minus those that need a logger (for runs with logger=null)."""
    kept = [cb for cb in callbacks if not isinstance(cb, LOGGER_DEPENDENT_CALLBACKS)]
    for dropped in set(map(type, callbacks)) - set(map(type, kept)):
        log.info(f"No logger configured: skipping callback {dropped.__name__}")
    return kept


def instantiate_loggers(logger_cfg: DictConfig | None, output_dir: Path) -> list[Logger]:
    """Every `_target_` entry of the `logger` group. WandbLogger is made offline-safe (see wandb_mode)."""
    loggers: list[Logger] = []
    if not logger_cfg:
        return loggers
    if not isinstance(logger_cfg, DictConfig):
        raise TypeError("logger config must be a dict of {name: {_target_: ...}}")
    for name, one_cfg in logger_cfg.items():
        if not (isinstance(one_cfg, DictConfig) and "_target_" in one_cfg):
            continue
        if _is_wandb(one_cfg):
            one_cfg = _offline_safe_wandb_config(one_cfg, output_dir)
        log.info(f"Instantiating logger {name} <{one_cfg._target_}>")
        loggers.append(hydra.utils.instantiate(one_cfg))
    return loggers


def _is_wandb(logger_cfg: DictConfig) -> bool:
    target = hydra.utils.get_class(logger_cfg._target_)
    return isinstance(target, type) and issubclass(target, WandbLogger)


def _offline_safe_wandb_config(logger_cfg: DictConfig, output_dir: Path) -> DictConfig:
    resolved = OmegaConf.create(OmegaConf.to_container(logger_cfg, resolve=True))
    with open_dict(resolved):
        resolved.offline = resolve_wandb_offline(resolved.get("offline"), os.environ)
        # Global rank 0 alone owns wandb_id.txt: ranks started together (torchrun, srun) would otherwise race
        # to create it, and a requeued job could read an id other than the one the run was logged under.
        # The other ranks never start a wandb run, so they need no id.
        if resolved.get("id") is None and rank_zero_only.rank == 0:
            resolved.id = stable_run_id(output_dir)
    mode = "offline" if resolved.offline else "online"
    log.info(f"wandb runs {mode} (run id {resolved.id}); set logger.wandb.offline=true/false to force it")
    return resolved
