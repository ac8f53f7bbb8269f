"""2-process CPU DDP run of the metric suite: each rank sees a strided, uneven shard of 5 pairs.

Usage: python metrics_ddp_worker.py OUT_DIR. Writes OUT_DIR/rank{r}.json with the values every rank
computed under DDP, and rank 0 adds the same metrics computed in one process over all pairs.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

NUM_PAIRS = 5
IMAGE_SIZE = 256  # the ArcFace crop needs >= 256
SMALL_SIZE = 32


class TinyRecognizer(nn.Module):
    """112x112 faces -> 8-d embedding; gives a zero embedding (a failure) for very dark faces."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3 * 4 * 4, 8)

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        embedding = self.linear(nn.functional.adaptive_avg_pool2d(faces, 4).flatten(1))
        dark = faces.mean(dim=(1, 2, 3)) < -0.9
        return torch.where(dark[:, None], torch.zeros_like(embedding), embedding)


class TinyExtractor(nn.Module):
    num_features = 6

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3 * 2 * 2, self.num_features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.linear(nn.functional.adaptive_avg_pool2d(images, 2).flatten(1)))


def make_data() -> dict[str, torch.Tensor]:
    rng = torch.Generator().manual_seed(1234)
    target = torch.rand(NUM_PAIRS, 3, IMAGE_SIZE, IMAGE_SIZE, generator=rng) * 2 - 1
    prediction = (target + 0.3 * torch.randn(target.shape, generator=rng)).clamp(-1.2, 1.2)
    prediction[3] = -1.0  # a black reconstruction: the tiny recognizer fails on it
    small_target = torch.rand(NUM_PAIRS, 3, SMALL_SIZE, SMALL_SIZE, generator=rng) * 2 - 1
    small_prediction = (small_target + 0.2 * torch.randn(small_target.shape, generator=rng)).clamp(-1, 1)
    reference_depth = torch.rand(NUM_PAIRS, 1, 16, 16, generator=rng) + 2.0
    predicted_depth = reference_depth + 0.1 * torch.randn(reference_depth.shape, generator=rng)
    predicted_depth[1] = 2.5  # constant: a geometry failure
    mask = torch.rand(NUM_PAIRS, 1, 16, 16, generator=rng) > 0.3
    real = torch.rand(7, 3, SMALL_SIZE, SMALL_SIZE, generator=rng) * 2 - 1
    return {"target": target, "prediction": prediction, "small_target": small_target,
            "small_prediction": small_prediction, "reference_depth": reference_depth,
            "predicted_depth": predicted_depth, "mask": mask, "real": real}


def build_suite(**metric_kwargs: object):  # type: ignore[no-untyped-def]
    from metrics import (
        FrechetInceptionDistance,
        GeometryError,
        IdentitySimilarity,
        LearnedPerceptualSimilarity,
        MeanSquaredError,
        MetricSuite,
        PeakSignalNoiseRatio,
        StructuralSimilarity,
    )

    torch.manual_seed(0)  # identical random networks on every rank
    return MetricSuite({
        "mse": MeanSquaredError(**metric_kwargs), "psnr": PeakSignalNoiseRatio(**metric_kwargs),
        "ssim": StructuralSimilarity(**metric_kwargs),
        "lpips": LearnedPerceptualSimilarity("random", **metric_kwargs),
        "id": IdentitySimilarity(TinyRecognizer(), **metric_kwargs),
        "fid": FrechetInceptionDistance(TinyExtractor(), **metric_kwargs),
        "geometry": GeometryError(**metric_kwargs),
    })


def evaluate(suite, data: dict[str, torch.Tensor], indices: list[int]) -> dict[str, float]:  # type: ignore[no-untyped-def]
    for start in range(0, len(indices), 2):  # batches of up to 2
        chosen = indices[start:start + 2]
        for name in ("mse", "psnr", "ssim", "lpips"):
            suite[name].update(data["small_prediction"][chosen], data["small_target"][chosen])
        suite["id"].update(data["prediction"][chosen], data["target"][chosen])
        suite["fid"].update(data["small_prediction"][chosen], data["small_target"][chosen])
        suite.update_depths(data["predicted_depth"][chosen], data["reference_depth"][chosen], data["mask"][chosen])
    return suite.compute()


def fid_with_reference(cache_dir: Path, data: dict[str, torch.Tensor], real_indices: list[int],
                       fake_indices: list[int], **metric_kwargs: object) -> dict[str, float]:
    from metrics import FrechetInceptionDistance, ReferenceKey, ReferenceStatisticsCache, prepare_reference

    torch.manual_seed(0)
    metric = FrechetInceptionDistance(TinyExtractor(), **metric_kwargs)
    key = ReferenceKey(real_set="tiny-real", extractor="tiny", resolution=SMALL_SIZE, num_features=6)
    statistics = prepare_reference(metric, ReferenceStatisticsCache(cache_dir), key,
                                   (data["real"][[i]] for i in real_indices))
    for index in fake_indices:
        metric.update(data["small_prediction"][[index]], data["small_target"][[index]])
    first = float(metric.compute())
    metric.reset()  # keeps the reference
    for index in fake_indices:
        metric.update_fake(data["small_prediction"][[index]])
    return {"fid": first, "fid_after_reset": float(metric.compute()), "reference_count": statistics.count}


def run(rank: int, world_size: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    data = make_data()
    shard = list(range(rank, NUM_PAIRS, world_size))  # rank 0: 0, 2, 4; rank 1: 1, 3
    record: dict[str, object] = {"world_size": dist.get_world_size(), "shard": shard}
    record["ddp"] = evaluate(build_suite(), data, shard)
    record["ddp_fid_reference"] = fid_with_reference(
        Path(out_dir) / "cache", data, list(range(rank, 7, world_size)), shard)
    # A second pass finds the cache on every rank (no real image is read).
    record["ddp_fid_reference_cached"] = fid_with_reference(Path(out_dir) / "cache", data, [], shard)
    if rank == 0:
        # Same process, all pairs, no synchronisation: the one-process reference.
        record["single"] = evaluate(build_suite(sync_on_compute=False), data, list(range(NUM_PAIRS)))
        record["single_fid_reference"] = fid_with_reference(
            Path(out_dir) / "cache_single", data, list(range(7)), list(range(NUM_PAIRS)), sync_on_compute=False)
    dist.barrier()
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(record))
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


if __name__ == "__main__":
    mp.spawn(run, args=(2, free_port(), sys.argv[1]), nprocs=2, join=True)
