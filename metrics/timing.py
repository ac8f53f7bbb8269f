"""Inference time per image (GOAE Table 1 "Time (s)"), measured honestly on a GPU.

* CUDA launches are asynchronous: without a ``torch.cuda.synchronize()`` before starting and before
  stopping the clock, a timer measures kernel launches, not the work. :class:`InferenceTimer`
  synchronises the given device on both edges (a no-op on CPU).
* The first iterations pay for cuDNN autotuning, allocator growth and lazy initialisation: the first
  ``warmup_batches`` measured batches are excluded.
* Per-image time of a batch = batch time / batch size. The mean is total time / total images (so big
  batches are not under-weighted); the median is over batches of their per-image time.

Timing is per process; under DDP each rank times its own shard (report rank 0's, or run single-device).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class TimingSummary:
    mean_seconds_per_image: float  # total timed seconds / timed images; NaN if nothing was timed
    median_seconds_per_image: float  # median over timed batches of (batch seconds / batch size)
    timed_images: int
    timed_batches: int
    warmup_batches: int  # measured but excluded


def cuda_synchronizer(device: torch.device | str) -> Callable[[], None]:
    """A function that waits for the device's queued work (nothing to wait for on CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


@dataclass
class InferenceTimer:
    """Usage::

        timer = InferenceTimer(device=images.device, warmup_batches=3)
        for images in loader:
            with timer.measure(batch_size=images.shape[0]):
                encoder_and_generator(images)
        summary = timer.summary()

    :param clock: seconds as float (``time.perf_counter``; tests pass a fake clock).
    :param synchronize: called before reading the clock (defaults to :func:`cuda_synchronizer` of ``device``).
    """

    device: torch.device | str = "cpu"
    warmup_batches: int = 1
    clock: Callable[[], float] = time.perf_counter
    synchronize: Callable[[], None] | None = None
    _batch_seconds: list[float] = field(default_factory=list, init=False)
    _batch_sizes: list[int] = field(default_factory=list, init=False)
    _measured: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.warmup_batches < 0:
            raise ValueError("warmup_batches must be >= 0")
        if self.synchronize is None:
            self.synchronize = cuda_synchronizer(self.device)

    @contextmanager
    def measure(self, batch_size: int) -> Iterator[None]:
        """Time the body for ``batch_size`` images (an exception inside discards the measurement)."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        assert self.synchronize is not None
        self.synchronize()
        start = self.clock()
        yield
        self.synchronize()
        elapsed = self.clock() - start
        self._measured += 1
        if self._measured > self.warmup_batches:
            self._batch_seconds.append(elapsed)
            self._batch_sizes.append(batch_size)

    def reset(self) -> None:
        self._batch_seconds.clear()
        self._batch_sizes.clear()
        self._measured = 0

    def summary(self) -> TimingSummary:
        images = sum(self._batch_sizes)
        per_image = [seconds / size for seconds, size in zip(self._batch_seconds, self._batch_sizes)]
        return TimingSummary(
            mean_seconds_per_image=sum(self._batch_seconds) / images if images else float("nan"),
            median_seconds_per_image=statistics.median(per_image) if per_image else float("nan"),
            timed_images=images,
            timed_batches=len(per_image),
            warmup_batches=min(self._measured, self.warmup_batches),
        )
