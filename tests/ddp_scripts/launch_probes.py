"""Callbacks that tests add to a real `train.py` run (`+callbacks.x._target_=ddp_scripts.launch_probes.X`).

RankRecord writes what one rank saw; PreemptAt plays the cluster's preemption signal at a chosen step.
The launching test puts tests/ on PYTHONPATH (tests/helpers_ddp.py) so that these targets import.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import lightning as L
import torch


class RankRecord(L.Callback):
    """Per rank: the sample identifiers of every step, the training loss of every step, the cluster
    environment and ranks Lightning chose, and the final encoder/discriminator weights, saved (tensors,
    lists and strings only: loadable with weights_only=True) to ``<directory>/rank<global rank>.pt``."""

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)
        self.identifiers: dict[int, list[str]] = {}
        self.losses: dict[int, float] = {}

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self.identifiers[trainer.global_step] = list(batch.identifiers)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # global_step has already advanced: the step just taken is global_step - 1.
        self.losses[trainer.global_step - 1] = float(trainer.callback_metrics["train/loss"])

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        weights = {key: value.detach().cpu().clone() for key, value in pl_module.state_dict().items()
                   if key.startswith(("encoder.", "discriminator."))}
        record = {
            # The environment Lightning detected (also for single-device strategies, which keep none).
            "cluster_environment": type(trainer._accelerator_connector.cluster_environment).__name__,
            "global_rank": trainer.global_rank, "local_rank": trainer.local_rank,
            "node_rank": trainer.node_rank, "world_size": trainer.world_size,
            "identifiers": self.identifiers, "losses": self.losses, "weights": weights,
            "resumed_from": str(trainer.ckpt_path) if trainer.ckpt_path else "",
        }
        torch.save(record, self.directory / f"rank{trainer.global_rank}.pt")


class PreemptAt(L.Callback):
    """Sends ``signal_name`` to this process once the run has finished ``step`` steps (checkpoints of
    that step already written), as a cluster does before it preempts a job; only on a fresh start, so
    the requeued run that resumes goes on to the end."""

    def __init__(self, step: int, signal_name: str) -> None:
        self.step = step
        self.signal = signal.Signals[signal_name]

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if trainer.global_step == self.step and trainer.ckpt_path is None and trainer.is_global_zero:
            handler = signal.getsignal(self.signal)
            if handler in (None, signal.SIG_DFL, signal.SIG_IGN):  # the default action would kill pytest
                raise RuntimeError(f"nothing handles {self.signal.name} in this process; refusing to send it")
            os.kill(os.getpid(), self.signal)
