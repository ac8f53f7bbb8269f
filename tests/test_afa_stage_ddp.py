"""Stage 2 under DDP: the real `python train.py stage=afa_tiny` with 2 CPU processes (trainer=ddp_sim, gloo)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from helpers_ddp import run_multiprocess_command

from lightning_modules.afa_stage import GeneratorFingerprint
from networks.eg3d.configs import generator_from_config
from networks.encoders import TINY_GOAE_ENCODER_CONFIG, GOAEncoder

REPOSITORY = Path(__file__).resolve().parents[1]


def write_tiny_stage1_checkpoint(path: Path) -> Path:
    """A stage-1-format checkpoint: random tiny encoder, the default tiny generator's fingerprint."""
    torch.manual_seed(0)
    encoder = GOAEncoder(TINY_GOAE_ENCODER_CONFIG)
    generator = generator_from_config("tiny", random_init=True, seed=0)
    torch.save({
        "state_dict": {f"encoder.{key}": value for key, value in encoder.state_dict().items()},
        "pytorch-lightning_version": "2.6.0",
        "goae_stage": {"name": "encoder", "generator": GeneratorFingerprint.of(generator).as_dict()},
    }, path)
    return path


@pytest.mark.ddp
@pytest.mark.slow
def test_two_process_cpu_ddp_run_of_stage2(tmp_path: Path) -> None:
    stage1 = write_tiny_stage1_checkpoint(tmp_path / "stage1.ckpt")
    log_dir = tmp_path / "logs"
    command = [
        sys.executable, str(REPOSITORY / "train.py"), "stage=afa_tiny", "trainer=ddp_sim", f"init_from={stage1}",
        "run_name=ddp_afa", f"paths.log_dir={log_dir}", "extras.print_config=false", "trainer.max_steps=2",
        "trainer.val_check_interval=2", "trainer.num_sanity_val_steps=0", "~callbacks.progress_bar",
        "callbacks.model_checkpoint.every_n_train_steps=2", "callbacks.inversion_images.every_n_steps=2",
        "callbacks.inversion_images.num_samples=2", "data.loaders.train.batch_size_per_device=2",
        "data.splits.train.length=8", "data.splits.val.length=3",  # odd: one rank validates 2, the other 1
        "stage.background_depth.estimate_num_samples=2",
    ]
    output = run_multiprocess_command(command, cwd=tmp_path)
    assert "unused parameters" not in output.lower()
    run_dir = log_dir / "train" / "runs" / "ddp_afa"
    checkpoints = sorted(path.name for path in (run_dir / "checkpoints").iterdir())
    assert checkpoints == ["last.ckpt", "step_0000002.ckpt"], checkpoints  # written once, by rank 0
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 2 and state["goae_stage"]["name"] == "afa"
    assert all(key.startswith(("afa.", "encoder.")) or key == "encoder_stage" for key in state["state_dict"])
    assert list((run_dir / "images").glob("step_*.png")), "rank 0 wrote no image grid"
    assert "val/mse_wplus" in output
