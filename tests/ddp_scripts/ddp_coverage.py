"""2-process CPU DDP run of InversionDataModule; each rank writes the identifiers it saw.

Usage: python tests/ddp_scripts/ddp_coverage.py TRAIN_ROOT VAL_ROOT OUT_DIR
Launched as a script (not inside pytest) because Lightning's `ddp` launcher re-runs sys.argv.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch

from datamodules import ImageBatch, ImageFolderSplit, InversionDataModule, LoaderConfig


class CoverageProbe(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.train_seen: dict[int, list[str]] = {}
        self.val_seen: dict[int, list[str]] = {}
        self.train_flipped: dict[str, bool] = {}

    def training_step(self, batch: ImageBatch, batch_index: int) -> torch.Tensor:
        assert isinstance(batch, ImageBatch)
        self.train_seen.setdefault(self.current_epoch, []).extend(batch.identifiers)
        for identifier, image in zip(batch.identifiers, batch.image_full):
            # the tiny images have a black left quarter; after an x-flip it is on the right
            self.train_flipped[f"{self.current_epoch}:{identifier}"] = bool((image[:, :, -1] == -1).all())
        return (self.weight * batch.image.mean()).sum()

    def validation_step(self, batch: ImageBatch, batch_index: int) -> None:
        if not self.trainer.sanity_checking:
            self.val_seen.setdefault(self.current_epoch, []).extend(batch.identifiers)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def main() -> None:
    train_root, val_root, out_dir = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    torch.set_num_threads(1)  # WHY: 2 ranks on 2 shared cores
    module = InversionDataModule(
        splits={
            "train": ImageFolderSplit(train_root, image_resolution=16, full_resolution=32, xflip=True),
            "val": ImageFolderSplit(val_root, image_resolution=16, full_resolution=32),
        },
        loaders={
            "train": LoaderConfig(batch_size_per_device=2, shuffle=True, drop_last=False),
            "val": LoaderConfig(batch_size_per_device=2),
        },
        seed=5,
    )
    probe = CoverageProbe()
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, default_root_dir=str(out_dir),
    )
    trainer.fit(probe, datamodule=module)
    record = {
        "rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "train": {str(epoch): ids for epoch, ids in probe.train_seen.items()},
        "val": {str(epoch): ids for epoch, ids in probe.val_seen.items()},
        "flipped": probe.train_flipped,
    }
    (out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
