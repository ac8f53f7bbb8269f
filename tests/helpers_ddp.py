"""Launching multi-process (gloo) runs from tests: one environment and one failure report for all."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]


def run_multiprocess_command(command: Sequence[str], cwd: Path, timeout: int = 900) -> str:
    """Run ``command`` (which starts several ranks) and return its stdout + stderr; fail with its tail.

    No MASTER_PORT/MASTER_ADDR is passed on: Lightning and torch pick a free port, a fixed one would
    clash with runs in parallel (pytest-xdist). One OpenMP thread per rank on 2 cores; offline hub and
    wandb; the repository on PYTHONPATH so worker scripts import the project.
    """
    environment = {key: value for key, value in os.environ.items() if key not in ("MASTER_PORT", "MASTER_ADDR")}
    environment.update(
        HF_HUB_OFFLINE="1", WANDB_MODE="offline", OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(REPOSITORY), environment.get("PYTHONPATH", "")]),
    )
    result = subprocess.run(list(command), cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout)
    output = result.stdout + result.stderr
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return output
