"""One LightningDataModule for every dataset: splits from SplitSpecs, loaders configured per split.

Distributed sampling: the DataModule shards indices itself with samplers that subclass
DistributedSampler (so Lightning keeps them): train is shuffled per epoch and padded to a
multiple of the world size like torch's DistributedSampler; val/test/predict are strided, ordered
and never padded (see datamodules.sampling). Batch sizes are PER DEVICE: the global batch is
batch_size_per_device x world size.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

import torch
import torch.distributed as dist
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, Dataset

from datamodules.labeled_index import (
    IMAGE_CHECK_CHOICES,
    ON_BAD_SAMPLE_CHOICES,
    DatasetReport,
    ImageCheck,
    OnBadSample,
)
from datamodules.sampling import EvaluationSampler, TrainSampler
from datamodules.samples import collate_samples
from datamodules.split_specs import BuildContext, SplitSpec
from datamodules.synthetic import GeneratorSource

SPLIT_NAMES = ("train", "val", "test", "predict")
_STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}


@dataclass
class LoaderConfig:
    """DataLoader settings of one split. ``shuffle`` only applies to the train split."""

    batch_size_per_device: int = 4
    num_workers: int = 0
    pin_memory: bool = False
    drop_last: bool = False
    shuffle: bool = False
    persistent_workers: bool = False

    def __post_init__(self) -> None:
        if self.batch_size_per_device < 1:
            raise ValueError(f"batch_size_per_device must be >= 1, got {self.batch_size_per_device}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")


def _loader_config(value: LoaderConfig | Mapping[str, object]) -> LoaderConfig:
    if isinstance(value, LoaderConfig):
        return value
    known = {item.name for item in fields(LoaderConfig)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(f"unknown loader settings {unknown}; known: {sorted(known)}")
    return LoaderConfig(**dict(value))


def _single_thread_worker(_: int) -> None:
    # WHY: each worker (rendering synthetic samples, decoding PNGs) would otherwise use every core.
    torch.set_num_threads(1)


class InversionDataModule(LightningDataModule):
    """Datasets for encoder training and evaluation, selected by name with ``data=<config>``.

    splits: split name (train, val, test, predict) -> SplitSpec; absent splits have no loader.
    loaders: split name -> LoaderConfig (or a mapping of its fields).
    seed: x-flip coins, train shuffling and synthetic samples all derive from it.
    on_bad_sample: "error" (default) or "skip" (bad files are counted in ``reports``, never silent).
    image_check: "header" (setup reads every image header) or "decode" (setup decodes every image).
    generator: how synthetic splits build the frozen generator, unless a split sets its own.
    """

    def __init__(
        self,
        splits: Mapping[str, SplitSpec],
        loaders: Mapping[str, LoaderConfig | Mapping[str, object]] | None = None,
        seed: int = 0,
        on_bad_sample: OnBadSample = "error",
        image_check: ImageCheck = "header",
        generator: GeneratorSource | Mapping[str, object] | None = None,
        name: str = "",
    ) -> None:
        super().__init__()
        unknown = sorted(set(splits) - set(SPLIT_NAMES))
        if unknown:
            raise ValueError(f"unknown split names {unknown}; use {list(SPLIT_NAMES)}")
        if on_bad_sample not in ON_BAD_SAMPLE_CHOICES:
            raise ValueError(f"on_bad_sample must be one of {ON_BAD_SAMPLE_CHOICES}, got {on_bad_sample!r}")
        if image_check not in IMAGE_CHECK_CHOICES:
            raise ValueError(f"image_check must be one of {IMAGE_CHECK_CHOICES}, got {image_check!r}")
        self.split_specs = dict(splits)
        self.loader_configs = {split: _loader_config(value) for split, value in (loaders or {}).items()}
        self.seed = seed
        self.on_bad_sample = on_bad_sample
        self.image_check = image_check
        self.generator_source = GeneratorSource(**dict(generator)) if isinstance(generator, Mapping) else generator
        self.name = name
        self.datasets: dict[str, Dataset] = {}
        self.reports: dict[str, DatasetReport] = {}
        self._index_cache: dict = {}

    # ----------------------------------------------------------------------------- setup
    def setup(self, stage: str | None = None) -> None:
        wanted = _STAGE_SPLITS.get(stage, SPLIT_NAMES) if stage is not None else SPLIT_NAMES
        if stage == "predict" and "predict" not in self.split_specs:
            wanted = ("test",)  # predict_dataloader falls back to the test split
        for split in wanted:
            if split in self.split_specs:
                self._build_split(split)

    def _build_split(self, split: str) -> Dataset:
        if split not in self.datasets:
            context = BuildContext(
                split=split,
                seed=self.seed,
                on_bad_sample=self.on_bad_sample,
                image_check=self.image_check,
                generator=self.generator_source,
                index_cache=self._index_cache,
                reports=self.reports,
            )
            dataset = self.split_specs[split].build(context)
            self.datasets[split] = dataset
            self._announce(split, dataset)
        return self.datasets[split]

    def _announce(self, split: str, dataset: Dataset) -> None:
        report = self.reports.get(split)
        rank_zero_info(f"data {self.name or '(unnamed)'} split {split!r}: {len(dataset)} samples")  # type: ignore[arg-type]
        if report is not None and (report.skipped or report.unlabeled_images):
            rank_zero_warn(f"data split {split!r}: {report.summary()}")
        if len(dataset) == 0:  # type: ignore[arg-type]
            raise ValueError(f"data split {split!r} is empty" + (f": {report.summary()}" if report else ""))

    # ----------------------------------------------------------------------------- loaders
    def _world(self) -> tuple[int, int]:
        trainer = self.trainer  # None until the DataModule is attached to a Trainer
        if trainer is not None:
            return trainer.world_size, trainer.global_rank
        if dist.is_available() and dist.is_initialized():
            return dist.get_world_size(), dist.get_rank()
        return 1, 0

    def loader_config(self, split: str) -> LoaderConfig:
        default = LoaderConfig(shuffle=split == "train", drop_last=split == "train")
        return self.loader_configs.get(split, default)

    def _dataset(self, split: str) -> Dataset:
        if split not in self.split_specs:
            raise ValueError(f"data config {self.name!r} has no {split!r} split (it has {sorted(self.split_specs)})")
        return self._build_split(split)

    def dataloader(self, split: str) -> DataLoader:
        dataset = self._dataset(split)
        config = self.loader_config(split)
        world_size, rank = self._world()
        if split == "train":
            sampler: torch.utils.data.Sampler = TrainSampler(
                dataset,  # type: ignore[arg-type]
                num_replicas=world_size,
                rank=rank,
                shuffle=config.shuffle,
                seed=self.seed,
                drop_last=config.drop_last,
            )
        else:
            sampler = EvaluationSampler(dataset, num_replicas=world_size, rank=rank)  # type: ignore[arg-type]
        return DataLoader(
            dataset,
            batch_size=config.batch_size_per_device,
            sampler=sampler,
            num_workers=config.num_workers,
            pin_memory=config.pin_memory,
            drop_last=config.drop_last,
            persistent_workers=config.persistent_workers and config.num_workers > 0,
            collate_fn=collate_samples,
            worker_init_fn=_single_thread_worker if config.num_workers > 0 else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self.dataloader("train")

    def val_dataloader(self) -> DataLoader | list:
        if "val" not in self.split_specs:
            return []  # Lightning then runs no validation
        return self.dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self.dataloader("test")

    def predict_dataloader(self) -> DataLoader:
        return self.dataloader("predict" if "predict" in self.split_specs else "test")
