"""The Delta-w+ regulariser L_w+ of GOAE (Appendix A, lambda_6 = 0.001).

The paper: ``Delta w+ = (w_1 - w_0, ..., w_13 - w_0)`` and ``L_w+ = lambda_6 ||Delta w+||_2``.
That notation admits two readings, both provided:

* :func:`delta_w_regularization` (default, ``norm: row_sum``) - e4e's ``delta_norm`` loss, which
  GOAE inherits (its training code descends from e4e; the official-code notes, section 6):
  the sum over rows i of the (un-squared) L2 norm ``||w_i - w_0||_2``, averaged over the batch.
  It acts like a group lasso: rows are pushed to be exactly w_0, one row at a time.
* :func:`delta_w_stacked_norm` (``norm: stacked``) - the literal reading: one L2 norm of the whole
  stacked offset tensor (13 x 512 numbers) per sample, averaged over the batch. It is never larger
  than the row sum (triangle inequality) and equals it when a single row differs from w_0.

``rows`` restricts the sum to the rows open in the current progressive stage (e4e sums only over
those); rows whose offset is exactly zero contribute 0 and a zero (not NaN) gradient either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

import torch


class DeltaWNorm(str, Enum):
    """Which reading of ||Delta w+||_2 to use (config value ``loss.options.delta_w.norm``)."""

    ROW_SUM = "row_sum"  # e4e: sum_i ||w_i - w_0||_2  (default)
    STACKED = "stacked"  # ||(w_1 - w_0, ..., w_13 - w_0)||_2 as one vector


def latent_offsets(ws: torch.Tensor, rows: Sequence[int] | None = None) -> torch.Tensor:
    """Delta w+: the offsets w_i - w_0 of w+ [N, R, C] for rows i (default 1..R-1), [N, len(rows), C]."""
    if ws.ndim != 3:
        raise ValueError(f"expected w+ of shape [N, rows, channels], got {list(ws.shape)}")
    row_index = [i for i in (range(1, ws.shape[1]) if rows is None else rows) if i != 0]
    return ws[:, row_index] - ws[:, :1]


def _safe_l2_norm(x: torch.Tensor, dim: int | tuple[int, ...]) -> torch.Tensor:
    # torch.linalg.vector_norm's backward at exactly 0 is 0 in current PyTorch, but a closed row is the
    # normal case at the start of progressive training, so make the zero-gradient explicit.
    squared = x.pow(2).sum(dim=dim)
    positive = squared > 0
    return torch.where(positive, squared.clamp_min(torch.finfo(x.dtype).tiny).sqrt(), torch.zeros_like(squared))


def delta_w_regularization(ws: torch.Tensor, rows: Sequence[int] | None = None) -> torch.Tensor:
    """L_w+ (e4e convention): mean over the batch of sum_i ||w_i - w_0||_2 (un-squared L2 per row)."""
    return _safe_l2_norm(latent_offsets(ws, rows), dim=2).sum(dim=1).mean()


def delta_w_stacked_norm(ws: torch.Tensor, rows: Sequence[int] | None = None) -> torch.Tensor:
    """L_w+ (literal paper reading): mean over the batch of ||(w_1 - w_0, ..., w_13 - w_0)||_2."""
    return _safe_l2_norm(latent_offsets(ws, rows), dim=(1, 2)).mean()


DELTA_W_LOSSES = {DeltaWNorm.ROW_SUM: delta_w_regularization, DeltaWNorm.STACKED: delta_w_stacked_norm}
