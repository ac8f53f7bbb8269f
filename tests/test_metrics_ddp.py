"""The metric suite under 2-process CPU DDP (gloo) gives the one-process values over the same pairs."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
from helpers_ddp import run_multiprocess_command

REPOSITORY = Path(__file__).resolve().parents[1]


@pytest.mark.ddp
@pytest.mark.slow
def test_two_rank_metrics_equal_one_process(tmp_path: Path) -> None:
    run_multiprocess_command(
        [sys.executable, str(REPOSITORY / "tests/ddp_scripts/metrics_ddp_worker.py"), str(tmp_path)],
        cwd=tmp_path, timeout=540,
    )
    records = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert [record["world_size"] for record in records] == [2, 2]
    assert records[0]["shard"] == [0, 2, 4] and records[1]["shard"] == [1, 3]
    single = records[0]["single"]
    assert set(single) >= {"mse", "psnr", "ssim", "lpips", "fid", "id", "id/failed_pairs", "geometry",
                           "geometry/failures"}
    for record in records:  # every rank computes the reduced value
        assert record["ddp"].keys() == single.keys()
        for name, value in single.items():
            assert math.isfinite(value), name
            assert record["ddp"][name] == pytest.approx(value, rel=1e-5, abs=1e-6), name
    # failures are reduced, not dropped: pair 3 (rank 1) has a black reconstruction, depth 1 (rank 1) is flat
    assert single["id/failed_pairs"] == 1 and single["id/failed_predictions"] == 1 and single["id/evaluated"] == 4
    assert single["geometry/failures"] == 1 and single["geometry/evaluated"] == 4
    # cached reference statistics are counted once, not once per rank
    expected = records[0]["single_fid_reference"]
    assert expected["reference_count"] == 7
    for record in records:
        for run in ("ddp_fid_reference", "ddp_fid_reference_cached"):
            assert record[run]["reference_count"] == 7
            assert record[run]["fid"] == pytest.approx(expected["fid"], rel=1e-5)
            assert record[run]["fid_after_reset"] == pytest.approx(expected["fid"], rel=1e-5)
    assert not list((tmp_path / "cache").glob("*.tmp"))
