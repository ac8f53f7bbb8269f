"""Latent supervision on synthetic data: the inverted w+ against the w+ that rendered the image.

Only synthetic samples have a ground-truth latent (``SyntheticBatch.ws_true``), so this term is
not part of GOAE's objective (weight 0 in every paper config). It is the synthetic branch of the
Feature-Style encoder (Yao et al., Sec. 4.2: "in the case of a synthetic image ... the ground-truth
latent code exists") and what IDE-3D's synthetic multi-view training relies on, and it is how the
built-in CPU default makes the latent error fall: with the randomly initialised tiny generator the
image barely constrains w (docs/losses.md, "Latent supervision"), so image losses alone cannot.

    L_latent = mean over samples, rows and channels of (w+ - w+_true)^2
"""

from __future__ import annotations

import torch


def latent_l2_loss(ws: torch.Tensor, ws_true: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the inverted w+ [N, R, C] and the ground-truth w+ [N, R, C]."""
    if ws.shape != ws_true.shape:
        raise ValueError(
            f"latent supervision: inverted w+ {list(ws.shape)} and ground-truth w+ {list(ws_true.shape)} differ in shape"
        )
    return (ws - ws_true.to(ws.dtype)).square().mean()
