"""Where the project's shared reference data lives (../shared beside the checkout, as in CI).

Override with GOAE_SHARED_DIR. Tests that need a shared file call ``require_shared_file``: a missing
file skips the test on a developer machine but FAILS under CI (CI=true), so the golden parity checks
can never silently stop running.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DIR = Path(os.environ.get("GOAE_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))


def require_shared_file(relative: str) -> Path:
    path = SHARED_DIR / relative
    if not path.is_file():
        message = f"shared reference file missing: {path} (set GOAE_SHARED_DIR to the shared/ folder)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path
