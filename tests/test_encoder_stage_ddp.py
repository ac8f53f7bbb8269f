"""Stage 1 under DDP: the real `python train.py` with 2 CPU processes (trainer=ddp_sim, gloo)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from helpers_ddp import run_multiprocess_command

REPOSITORY = Path(__file__).resolve().parents[1]


@pytest.mark.ddp
@pytest.mark.slow
def test_two_process_cpu_ddp_run_of_train_py(tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    command = [
        sys.executable, str(REPOSITORY / "train.py"), "trainer=ddp_sim", "run_name=ddp_smoke",
        f"paths.log_dir={log_dir}", "extras.print_config=false", "trainer.max_steps=2",
        "trainer.val_check_interval=2", "trainer.num_sanity_val_steps=0", "~callbacks.progress_bar", "+trainer.enable_progress_bar=false",
        "callbacks.model_checkpoint.every_n_train_steps=2", "callbacks.inversion_images.every_n_steps=2",
        "data.splits.train.length=16", "data.splits.val.length=3",  # odd: one rank validates 2, the other 1
        "stage.background_depth.estimate_num_samples=2", "stage.discriminator_settings.d_reg_every=1",
    ]
    output = run_multiprocess_command(command, cwd=tmp_path)
    assert "unused parameters" not in output.lower()
    run_dir = log_dir / "train" / "runs" / "ddp_smoke"
    checkpoints = sorted(path.name for path in (run_dir / "checkpoints").iterdir())
    assert checkpoints == ["last.ckpt", "step_0000002.ckpt"], checkpoints  # written once, by rank 0
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["global_step"] == 2
    assert all(key.startswith(("encoder.", "discriminator.")) or key == "reached_stage" for key in state["state_dict"])
    assert list((run_dir / "images").glob("step_*.png")), "rank 0 wrote no image grid"
