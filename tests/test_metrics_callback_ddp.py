"""The validation-metrics callback gives the same values under 2-process CPU DDP as in one process."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
from helpers_ddp import run_multiprocess_command

REPOSITORY = Path(__file__).resolve().parents[1]
WORKER = REPOSITORY / "tests/ddp_scripts/metrics_callback_worker.py"


def run_worker(out_dir: Path, devices: int) -> list[dict]:
    out_dir.mkdir(parents=True)
    run_multiprocess_command([sys.executable, str(WORKER), str(out_dir), str(devices)], cwd=out_dir, timeout=540)
    return [json.loads((out_dir / f"rank{rank}.json").read_text()) for rank in range(devices)]


@pytest.mark.ddp
@pytest.mark.slow
def test_two_ranks_log_the_one_process_values(tmp_path: Path) -> None:
    [single] = run_worker(tmp_path / "one", devices=1)
    ranks = run_worker(tmp_path / "two", devices=2)
    expected = single["values"]
    assert {"val_metrics/mse", "val_metrics/lpips", "val_metrics/fid", "val_metrics/geometry",
            "val_metrics/geometry/failures", "val_metrics/images"} <= set(expected)
    assert expected["val_metrics/images"] == 5
    assert [record["world_size"] for record in ranks] == [2, 2]
    for record in ranks:  # every rank computed the reduced value (compute on all ranks)
        assert record["values"].keys() == expected.keys()
        for name, value in expected.items():
            assert math.isfinite(value), name
            assert record["values"][name] == pytest.approx(value, rel=1e-5, abs=1e-6), name
