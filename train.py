"""Train (or run) a stage of the GOAE framework. Configs: configs/train.yaml (Hydra).

Built-in default (GOAE stage 1 on synthetic data from the tiny generator, on CPU, a few minutes):
$ python train.py

Override anything, pick config groups:
$ python train.py stage=preview generator=ffhq512-128 generator.checkpoint=pretrained/ffhqrebalanced512-128.pkl
$ python train.py experiment=goae_ffhq_stage1 generator.checkpoint=... trainer.devices=8   # stage 1, 8 GPUs (DDP)
$ python train.py experiment=preview_tiny                             # a whole setup from configs/experiment/

Resume in a stable run directory (logs/train/runs/<run_name>):
$ python train.py run_name=ffhq_stage1 ...
$ python train.py run_name=ffhq_stage1 ... ckpt_path=last

Debug presets and DDP on the CPU:
$ python train.py debug=fdr
$ python train.py trainer=ddp_sim

Several nodes (torchrun, SLURM), submission through Hydra, Optuna sweeps: docs/scaling.md
$ python train.py -m hparams_search=stage1_loss_weights experiment=goae_ffhq_stage1 generator.checkpoint=...
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

import runtime  # noqa: F401  (registers the config resolvers before Hydra composes)
from runtime.config import apply_extras, check_required_values, resolve_ckpt_path
from runtime.instantiate import (
    GENERATOR_ARGUMENT,
    instantiate_callbacks,
    instantiate_component,
    instantiate_loggers,
    without_logger_dependent_callbacks,
)
from runtime.pylogger import RankedLogger
from runtime.scaling import check_objective_is_validated, objective_value, refuse_script_relaunch_in_multirun

log = RankedLogger(__name__)

# `???` values that train() fills in code rather than from the command line.
FILLED_BY_CODE = (f"stage.{GENERATOR_ARGUMENT}", f"data.{GENERATOR_ARGUMENT}")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Build everything from `cfg` and run the stage.

    Returns {"output_dir": run directory, "metrics": {name: float}, "files": {name: path},
    "learning_curve": [...]}: for a LightningModule stage the trainer's final callback metrics, the
    checkpoint directory and the stage's validation records (``validation_history``, including the
    sanity check before the first step; empty if the stage keeps none); for a plain job the path its
    run() returned.
    """
    check_required_values(cfg, filled_by_code=FILLED_BY_CODE)
    check_objective_is_validated(cfg)
    output_dir = Path(cfg.paths.output_dir)
    apply_extras(cfg, output_dir)

    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)

    log.info(f"Instantiating generator <{cfg.generator._target_}> ({cfg.generator.get('name')})")
    generator = hydra.utils.instantiate(cfg.generator)
    stage = instantiate_component(cfg.stage, generator)

    if not isinstance(stage, L.LightningModule):
        if not callable(getattr(stage, "run", None)):
            raise TypeError(
                f"stage <{cfg.stage._target_}> is neither a LightningModule nor a job with run(output_dir)"
            )
        result = Path(stage.run(output_dir))
        return {"output_dir": output_dir, "metrics": {}, "files": {"output": result}, "learning_curve": []}

    datamodule = instantiate_component(cfg.data, generator) if cfg.get("data") else None
    loggers = instantiate_loggers(cfg.get("logger"), output_dir)
    callbacks = instantiate_callbacks(cfg.get("callbacks"))
    if not loggers:
        callbacks = without_logger_dependent_callbacks(callbacks)

    log.info(f"Instantiating trainer <{cfg.trainer._target_}>")
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    refuse_script_relaunch_in_multirun(trainer)
    for logger in loggers:
        logger.log_hyperparams(_loggable_config(cfg))

    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir)
    log.info("Starting training" + (f" from {ckpt_path}" if ckpt_path else ""))
    trainer.fit(model=stage, datamodule=datamodule, ckpt_path=ckpt_path)

    metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
    files: dict[str, Path] = {}
    if trainer.checkpoint_callback is not None and getattr(trainer.checkpoint_callback, "dirpath", None):
        files["checkpoints"] = Path(trainer.checkpoint_callback.dirpath)
    for logger in loggers:
        if logger.log_dir:
            files[f"logs ({type(logger).__name__})"] = Path(logger.log_dir)
    learning_curve = list(getattr(stage, "validation_history", []))
    return {"output_dir": output_dir, "metrics": metrics, "files": files, "learning_curve": learning_curve}


def _loggable_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain containers (wandb/TensorBoard cannot take OmegaConf nodes)."""
    return {
        str(key): OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
        for key in cfg
        if key != "hydra"  # Hydra's own node (present only in configs composed by tests)
    }


def print_summary(summary: dict[str, Any]) -> None:
    """Where the results are, printed once (rank 0)."""
    log.info(f"Run directory: {summary['output_dir']}")
    for name, path in summary["files"].items():
        log.info(f"  {name}: {path}")
    for name, value in summary["metrics"].items():
        log.info(f"  {name} = {value:.6g}")


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    summary = train(cfg)
    print_summary(summary)
    return objective_value(summary["metrics"], cfg.get("optimized_metric"))  # what a Hydra sweeper optimises


if __name__ == "__main__":  # required: the DDP launcher re-runs this script once per extra device
    main()
