"""A logger that speaks once per job, not once per DDP process."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from lightning.pytorch.utilities import rank_zero_only


class RankedLogger(logging.LoggerAdapter):
    """Python logger that, by default, only emits on global rank 0.

    ``log.info("...")`` prints once with 8 GPUs; ``log.info("...", rank=1)`` prints on rank 1 only;
    ``RankedLogger(__name__, rank_zero_only=False)`` prints on every rank, prefixed with its rank.
    """

    def __init__(self, name: str = __name__, rank_zero_only: bool = True, extra: Mapping[str, Any] | None = None):
        super().__init__(logging.getLogger(name), extra=extra)
        self.rank_zero_only = rank_zero_only

    def log(self, level: int, msg: object, *args: Any, rank: int | None = None, **kwargs: Any) -> None:
        if not self.isEnabledFor(level):
            return
        current_rank = getattr(rank_zero_only, "rank", 0)
        if self.rank_zero_only and rank is None and current_rank != 0:
            return
        if rank is not None and current_rank != rank:
            return
        msg, kwargs = self.process(msg, kwargs)
        if not self.rank_zero_only:
            msg = f"[rank: {current_rank}] {msg}"
        self.logger.log(level, msg, *args, **kwargs)
