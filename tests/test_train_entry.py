"""train.py end to end: the built-in preview job, the Lightning path with a toy stage, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from conftest import SMALL_PREVIEW_OVERRIDES
from runtime.config import ConfigError
from runtime.preview import GRID_FILENAME
from runtime.resolvers import PROJECT_ROOT
from train import train


class ToyStage(L.LightningModule):
    """A minimal stage following the framework convention: it receives the shared generator."""

    def __init__(self, generator: torch.nn.Module, learning_rate: float = 0.1):
        super().__init__()
        self.generator = generator  # frozen; a real stage keeps it out of its checkpoint
        self.learning_rate = learning_rate
        self.head = torch.nn.Linear(4, 1)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        loss = torch.nn.functional.mse_loss(self.head(inputs), targets)
        self.log("train/loss", loss)
        return loss

    def train_dataloader(self) -> DataLoader:
        data = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
        return DataLoader(TensorDataset(data, data.sum(dim=1, keepdim=True)), batch_size=4)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.head.parameters(), lr=self.learning_rate)




def test_default_job_renders_a_samples_by_yaws_grid(cfg_preview: DictConfig) -> None:
    summary = train(cfg_preview)
    grid_path = summary["files"]["output"]
    assert grid_path == Path(cfg_preview.paths.output_dir) / GRID_FILENAME and grid_path.is_file()

    from networks.eg3d.configs import build_generator

    resolution = build_generator(cfg_preview.generator.name).img_resolution
    pixels = np.asarray(Image.open(grid_path).convert("RGB"), dtype=np.float64)
    rows, cols = cfg_preview.stage.num_samples, len(cfg_preview.stage.yaw_degrees)
    assert pixels.shape == (rows * resolution, cols * resolution, 3)  # no padding between tiles
    assert pixels.std() > 1.0, "grid is constant"
    tiles = [[pixels[r * resolution:(r + 1) * resolution, c * resolution:(c + 1) * resolution]
              for c in range(cols)] for r in range(rows)]
    assert np.abs(tiles[0][0] - tiles[0][1]).mean() > 0.5, "different yaws rendered the same view"
    assert np.abs(tiles[0][0] - tiles[1][0]).mean() > 0.0, "different samples rendered the same image"


def test_preview_is_reproducible_for_a_seed(cfg_preview: DictConfig, tmp_path: Path) -> None:
    import hydra

    from runtime.preview import GeneratorPreviewJob

    generator = hydra.utils.instantiate(cfg_preview.generator)
    job_kwargs = OmegaConf.to_container(cfg_preview.stage, resolve=True)
    for key in ("_target_", "generator"):
        job_kwargs.pop(key)
    torch.manual_seed(0)
    first = GeneratorPreviewJob(generator, **job_kwargs).render_grid()
    torch.manual_seed(0)
    again = GeneratorPreviewJob(generator, **job_kwargs).render_grid()
    job_kwargs["seed"] += 1
    torch.manual_seed(0)
    other_seed = GeneratorPreviewJob(generator, **job_kwargs).render_grid()
    assert torch.equal(first, again)
    assert not torch.equal(first, other_seed)


def _with_toy_stage(cfg: DictConfig, max_steps: int) -> DictConfig:
    with open_dict(cfg):
        cfg.stage = OmegaConf.create({"_target_": f"{__name__}.ToyStage", "generator": "???", "learning_rate": 0.1})
        cfg.data = None  # the toy stage brings its own loader (the default data is synthetic_tiny)
        cfg.trainer.max_steps = max_steps
        cfg.trainer.val_check_interval = None  # the default's interval (10 steps) exceeds the toy epoch
        cfg.trainer.enable_progress_bar = False
        cfg.trainer.log_every_n_steps = 1
        cfg.callbacks.model_checkpoint.every_n_train_steps = 2
        cfg.callbacks.pop("progress_bar")
    return cfg


def test_lightning_stage_gets_the_generator_checkpoints_and_resumes_with_last(
    make_train_config: Callable[..., DictConfig],
) -> None:
    cfg = _with_toy_stage(make_train_config("logger=csv"), max_steps=2)
    summary = train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    assert summary["files"]["checkpoints"] == run_dir / "checkpoints" and last.is_file()
    assert "train/loss" in summary["metrics"]
    assert list(run_dir.glob("csv/version_*/metrics.csv")), "csv logger wrote nothing into the run dir"
    assert torch.load(last, weights_only=False)["global_step"] == 2

    resumed = _with_toy_stage(make_train_config("~logger", "ckpt_path=last"), max_steps=4)
    train(resumed)  # no logger: the LearningRateMonitor must be dropped, not crash
    assert torch.load(last, weights_only=False)["global_step"] == 4  # continued from step 2


def test_ckpt_path_last_without_a_checkpoint_fails_before_training(
    make_train_config: Callable[..., DictConfig],
) -> None:
    cfg = _with_toy_stage(make_train_config("ckpt_path=last"), max_steps=1)
    with pytest.raises(ConfigError, match="run_name"):
        train(cfg)


def test_cli_writes_into_logs_task_runs_run_name(tmp_path: Path) -> None:
    """`python train.py` from another working directory: Hydra's run dir convention, no chdir needed."""
    log_dir = tmp_path / "logs"
    command = [
        sys.executable, str(PROJECT_ROOT / "train.py"), "run_name=cli_smoke", f"paths.log_dir={log_dir}",
        "extras.print_config=false", "stage=preview", "stage.num_samples=1", "stage.yaw_degrees=[0.0]",
        *[override for override in SMALL_PREVIEW_OVERRIDES if override.startswith("stage.device")],
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = log_dir / "train" / "runs" / "cli_smoke"
    assert (run_dir / GRID_FILENAME).is_file()
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert (run_dir / "train.log").is_file()
    assert str(run_dir / GRID_FILENAME) in (result.stdout + result.stderr)  # tells the user where it is

