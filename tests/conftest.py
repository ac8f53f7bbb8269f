"""Shared test set-up: offline, few threads, and the REAL configs/train.yaml composed and shrunk.

Tests never keep a hand-written config of their own (that drifts); they compose train.yaml with
Hydra's compose API, then point every path at tmp_path and make the run small.
"""

from __future__ import annotations

import os

# Before anything imports huggingface_hub / wandb / torch.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("OMP_NUM_THREADS", "1")

from collections.abc import Callable, Iterator, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig, open_dict  # noqa: E402

import runtime  # noqa: E402,F401  (registers ${project_root:})
from runtime.resolvers import PROJECT_ROOT  # noqa: E402

# 2 shared cores: one intra-op thread per xdist worker (no oversubscription). scripts/check_portability.sh
# sets GOAE_TEST_THREADS=2 to run the numerics tests with other kernel blockings.
torch.set_num_threads(int(os.environ.get("GOAE_TEST_THREADS", "1")))

CONFIG_DIR = PROJECT_ROOT / "configs"

# Keeps the built-in preview small: 2 samples x 2 yaws.
SMALL_PREVIEW_OVERRIDES = ("stage=preview", "stage.num_samples=2", "stage.yaw_degrees=[-20.0,20.0]", "stage.device=cpu")


def compose_train_config(overrides: Sequence[str] = (), return_hydra_config: bool = True) -> DictConfig:
    """configs/train.yaml composed exactly as `python train.py <overrides>` would compose it."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=return_hydra_config)


def shrink_into(cfg: DictConfig, run_dir: Path) -> DictConfig:
    """Point the run at `run_dir` (as Hydra would), run on one CPU device, print nothing."""
    with open_dict(cfg):
        cfg.paths.log_dir = str(run_dir.parent)
        cfg.paths.output_dir = str(run_dir)
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.runtime.cwd = os.getcwd()
        cfg.extras.print_config = False
        cfg.trainer.accelerator = "cpu"
        cfg.trainer.devices = 1
    # ${hydra:...} interpolations resolve against the "current" Hydra config.
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.fixture
def make_train_config(tmp_path: Path) -> Iterator[Callable[..., DictConfig]]:
    """Factory: make_train_config("stage.num_samples=1", ...) -> shrunk config writing into tmp_path/run."""

    def make(*overrides: str) -> DictConfig:
        return shrink_into(compose_train_config(overrides), tmp_path / "run")

    yield make
    GlobalHydra.instance().clear()


@pytest.fixture
def cfg_preview(make_train_config: Callable[..., DictConfig]) -> DictConfig:
    """The preview job on the tiny generator (the default before stage 1), 2 samples x 2 yaws."""
    return make_train_config(*SMALL_PREVIEW_OVERRIDES)
