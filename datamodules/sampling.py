"""Samplers that shard indices across ranks themselves and tell the dataset the epoch.

Why our own: (1) x-flip augmentation is seeded by (seed, epoch, index), and DataLoader workers
(persistent or not) never see an epoch counter, so the sampler yields ``EpochIndex(index, epoch)``
keys; (2) evaluation splits must not be padded with duplicates. Both samplers subclass
DistributedSampler, so Lightning (use_distributed_sampler=True) leaves them in place and calls
``set_epoch`` on them every epoch.

Train: torch's DistributedSampler semantics. Shuffled with (seed, epoch); when the split size is
not a multiple of the world size it is PADDED by repeating the first indices (drop_last=False)
or truncated (drop_last=True), so every rank runs the same number of steps.
Evaluation: rank r takes indices r, r+W, r+2W, ...: disjoint, complete, never padded; ranks may
therefore run one batch fewer than others, so never call collectives inside validation_step
(torchmetrics states and self.log(..., sync_dist=True) reduced at epoch end are fine).
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import NamedTuple

import numpy as np
from torch.utils.data import DistributedSampler


class EpochIndex(NamedTuple):
    """A dataset key carrying the epoch, so per-epoch augmentation is deterministic in any worker."""

    index: int
    epoch: int


def split_key(key: int | EpochIndex) -> EpochIndex:
    """A plain int index means epoch 0 (direct indexing, e.g. in tests or notebooks)."""
    if isinstance(key, EpochIndex):
        return key
    if isinstance(key, tuple) and len(key) == 2:
        return EpochIndex(int(key[0]), int(key[1]))
    return EpochIndex(int(key), 0)


def coin_flip(seed: int, epoch: int, index: int) -> bool:
    """A fair coin that depends only on (seed, epoch, index)."""
    return bool(np.random.default_rng([seed, epoch, index]).random() < 0.5)


class TrainSampler(DistributedSampler):
    """DistributedSampler that yields EpochIndex keys (works with num_replicas=1 without a process group)."""

    def __init__(
        self, dataset: Sized, num_replicas: int, rank: int, shuffle: bool, seed: int, drop_last: bool
    ) -> None:
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
        )

    def __iter__(self) -> Iterator[EpochIndex]:  # type: ignore[override]
        epoch = self.epoch
        for index in super().__iter__():
            yield EpochIndex(int(index), epoch)


class EvaluationSampler(DistributedSampler):
    """Strided, ordered, unpadded shard of the indices: rank r gets r, r+W, r+2W, ..."""

    def __init__(self, dataset: Sized, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.num_samples = len(range(rank, len(dataset), num_replicas))
        self.total_size = len(dataset)

    def __iter__(self) -> Iterator[EpochIndex]:  # type: ignore[override]
        for index in range(self.rank, len(self.dataset), self.num_replicas):  # type: ignore[arg-type]
            yield EpochIndex(index, 0)

    def __len__(self) -> int:
        return self.num_samples
