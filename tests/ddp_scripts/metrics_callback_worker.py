"""The validation-metrics callback under 2-process CPU DDP (Lightning `ddp`, gloo), and in one process.

Usage: python metrics_callback_worker.py OUT_DIR DEVICES. Writes OUT_DIR/rank{r}.json with the values the
callback logged on each rank. Launched as a script because Lightning's `ddp` launcher re-runs sys.argv.
The test runs it with DEVICES=1 and DEVICES=2 and compares.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ (evaluation_fakes)

from callbacks.metrics import ValidationMetrics  # noqa: E402
from datamodules import GeneratorSource, InversionDataModule, SyntheticSplit  # noqa: E402
from evaluation_fakes import FakeInverterStage  # noqa: E402
from metrics import FrechetInceptionDistance, LearnedPerceptualSimilarity  # noqa: E402

VAL_LENGTH = 5  # uneven shards under 2 ranks: 3 and 2 samples
METRICS = ["mse", "psnr", "ssim", "lpips", "fid", "geometry"]


class TinyExtractor(torch.nn.Module):
    num_features = 6

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3 * 2 * 2, self.num_features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.linear(torch.nn.functional.adaptive_avg_pool2d(images, 2).flatten(1)))


def prebuilt_metrics() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)  # the same random networks in every process
    return {"lpips": LearnedPerceptualSimilarity("random"), "fid": FrechetInceptionDistance(TinyExtractor())}


def datamodule() -> InversionDataModule:
    return InversionDataModule(
        splits={"val": SyntheticSplit(length=VAL_LENGTH, image_resolution=64, full_resolution=64)},
        loaders={"val": {"batch_size_per_device": 2}}, generator=GeneratorSource("tiny"), name="synthetic_ddp",
    )


def main(out_dir: Path, devices: int) -> None:
    torch.set_num_threads(1)
    stage = FakeInverterStage(GeneratorSource("tiny").build(), mode="linear", seed=3)
    callback = ValidationMetrics(metrics=METRICS, reference_depth="dataset", prebuilt_metrics=prebuilt_metrics(),
                                 table_samples=0)
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                        callbacks=[callback], logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, default_root_dir=str(out_dir))
    trainer.validate(stage, datamodule=datamodule(), verbose=False)
    record = {"world_size": trainer.world_size, "values": callback.last_values}
    (out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
