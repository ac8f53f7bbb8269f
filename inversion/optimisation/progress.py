"""A progress bar per optimisation phase (steps, current loss), or nothing when switched off."""

from __future__ import annotations

from typing import Any


class StepProgress:
    """tqdm bar ``description: step/steps, loss``; ``enabled=False`` makes every call a no-op."""

    def __init__(self, description: str, total: int, enabled: bool = True) -> None:
        self._bar: Any = None
        if enabled and total > 0:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=description, leave=False, dynamic_ncols=True)

    def update(self, loss: float) -> None:
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> StepProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["StepProgress"]
