"""Beyond one process and one run (docs/scaling.md): what a sweep optimises, and the one launch
combination that cannot work.

Multi-node DDP itself needs no code here: Lightning picks its cluster environment (torchrun ->
TorchElasticEnvironment, srun -> SLURMEnvironment) from the environment variables of the launcher.
"""

from __future__ import annotations

from collections.abc import Mapping

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher

from runtime.config import ConfigError

VALIDATION_PREFIX = "val/"


def objective_value(metrics: Mapping[str, float], optimized_metric: str | None) -> float | None:
    """The value a Hydra sweeper optimises: the final value of the metric the config names
    (``optimized_metric``, e.g. ``val/mse``); None when the config names none."""
    if optimized_metric is None:
        return None
    if optimized_metric not in metrics:
        raise ConfigError(
            f"optimized_metric={optimized_metric} was not logged by this run (logged: {sorted(metrics)}). "
            "Name a validation metric and make sure validation runs (trainer.val_check_interval, "
            "trainer.limit_val_batches)."
        )
    return float(metrics[optimized_metric])


def check_objective_is_validated(cfg: DictConfig) -> None:
    """A validation metric as the objective needs validation: fail before training, not after it."""
    metric = cfg.get("optimized_metric")
    if metric is None or not str(metric).startswith(VALIDATION_PREFIX):
        return
    data_name = OmegaConf.select(cfg, "data.name")
    if OmegaConf.select(cfg, "data.splits.val") is None:
        raise ConfigError(
            f"optimized_metric={metric} is a validation metric, but data={data_name} has no val split: the "
            "run would end without its objective. Add one (+data.splits.val=...) or name another metric."
        )
    if OmegaConf.select(cfg, "trainer.limit_val_batches") == 0:
        raise ConfigError(f"optimized_metric={metric} is a validation metric, but validation is off "
                          "(trainer.limit_val_batches=0)")


def refuse_script_relaunch_in_multirun(trainer: L.Trainer) -> None:
    """Hydra `-m` plus a trainer that makes Lightning start this script again for each extra device.

    Lightning's `ddp` launcher re-runs the command line (with `-m`) in every child process, so each
    child would run the whole sweep. Checked before `fit` starts any process. Ranks started by the cluster
    (srun: SLURM jobs of hydra/launcher=slurm; torchrun) are fine: Lightning starts none then.
    """
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return
    strategy = trainer.strategy
    starts_processes = isinstance(strategy.launcher, _SubprocessScriptLauncher) and trainer.num_devices > 1
    if starts_processes and not strategy.cluster_environment.creates_processes_externally:
        raise ConfigError(
            f"Hydra multirun (-m) cannot run a job whose trainer starts processes itself "
            f"(strategy={type(strategy).__name__}, {trainer.num_devices} devices x {trainer.num_nodes} "
            "nodes): Lightning would re-run the whole sweep in every extra process. Sweep jobs with one "
            "device each, submit them with hydra/launcher=slurm (one SLURM task per device, "
            "hydra.launcher.tasks_per_node=trainer.devices), or run the wandb agent (one train.py per run)."
        )
