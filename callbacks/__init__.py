"""Lightning callbacks: the inversion image grid (rank 0, fixed validation batch; stage 2 adds the
visibility mask) and the validation metrics (computed on every rank, frozen metric networks kept here)."""

from callbacks.afa_images import AFAImageLogger
from callbacks.image_logging import InversionImageLogger
from callbacks.metrics import ValidationMetrics

__all__ = ["AFAImageLogger", "InversionImageLogger", "ValidationMetrics"]
