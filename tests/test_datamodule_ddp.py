"""Distributed sampling with 2 CPU processes (gloo): disjoint, complete, no padded evaluation."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from helpers_ddp import run_multiprocess_command

sys.path.insert(0, str(Path(__file__).parent))
from ddp_scripts.tiny_dataset import write_tiny_dataset  # noqa: E402

REPOSITORY = Path(__file__).resolve().parents[1]


@pytest.mark.ddp
@pytest.mark.slow
def test_two_rank_ddp_covers_each_split_disjointly(tmp_path: Path) -> None:
    train_root = write_tiny_dataset(tmp_path / "train", count=8)
    val_root = write_tiny_dataset(tmp_path / "val", count=5)  # odd: padding would duplicate one
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    run_multiprocess_command(
        [sys.executable, str(REPOSITORY / "tests/ddp_scripts/ddp_coverage.py"), str(train_root), str(val_root),
         str(out_dir)],
        cwd=tmp_path, timeout=540,
    )
    records = [json.loads((out_dir / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert [record["world_size"] for record in records] == [2, 2]
    every_train = {f"00000/img{index:08d}.png" for index in range(8)}
    for epoch in ("0", "1"):
        shards = [record["train"][epoch] for record in records]
        assert len(shards[0]) == len(shards[1]) == 4
        assert not set(shards[0]) & set(shards[1]) and set(shards[0]) | set(shards[1]) == every_train
    assert records[0]["train"]["0"] != records[0]["train"]["1"]  # reshuffled per epoch
    for epoch in ("0", "1"):
        val_shards = [record["val"][epoch] for record in records]
        # strided and unpadded: rank 0 gets 0, 2, 4 and rank 1 gets 1, 3; nothing evaluated twice
        assert sorted(val_shards[0] + val_shards[1]) == [f"00000/img{index:08d}.png" for index in range(5)]
        assert [len(shard) for shard in val_shards] == [3, 2]
    flipped = {**records[0]["flipped"], **records[1]["flipped"]}
    assert 0 < sum(flipped.values()) < len(flipped)  # x-flip happened, not always
