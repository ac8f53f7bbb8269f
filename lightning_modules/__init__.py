"""Training stages as LightningModules.

Stage 1: :class:`GOAEEncoderStage` (``stage=encoder``); stage 2: :class:`GOAEAFAStage` (``stage=afa``).
Both implement ``invert(image, image_full, camera) -> inversion.result.InversionResult``.
"""

from lightning_modules.afa_stage import GOAEAFAStage, load_stage2_inverter
from lightning_modules.encoder_stage import (
    BackgroundDepthSource,
    DiscriminatorSettings,
    GOAEEncoderStage,
    InversionPreview,
    ValidationRecord,
)

__all__ = [
    "BackgroundDepthSource",
    "DiscriminatorSettings",
    "GOAEAFAStage",
    "GOAEEncoderStage",
    "InversionPreview",
    "ValidationRecord",
    "load_stage2_inverter",
]
