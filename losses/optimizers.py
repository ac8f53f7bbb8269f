"""Optimiser factories of GOAE stage 1, usable as Hydra partials (completed with the parameters in
``configure_optimizers``).

Encoder: Ranger (RAdam + Lookahead + gradient centralisation), lr 1e-4 (paper). We use the maintained
``pytorch_optimizer.Ranger`` (pytorch-optimizer 4.1), configured to behave like the Ranger 20.4.11 file
that pSp/e4e ship (``training/ranger.py``, called as ``Ranger(params, lr=...)``):

===================  ==========================  ====================================  =====================
pSp/e4e Ranger        value                       pytorch_optimizer.Ranger              set here
===================  ==========================  ====================================  =====================
alpha, k              0.5, 6                      alpha, k (same defaults)              0.5, 6
N_sma_threshhold      5 (rectify when N_sma > 5)  n_sma_threshold (rectify when >= 5)   5
betas                 (0.95, 0.999)               betas (same default)                  (0.95, 0.999)
eps                   6.1e-5 (code default; its   eps (default 1e-5)                    6.1e-5
                      comment says 1e-5)
weight_decay          0 (decoupled p -= wd*lr*p)  weight_decay, weight_decouple=True     0
use_gc, gc_conv_only  True, False (GC on conv     use_gc, gc_conv_only (same defaults;  True, False
                      and linear weights, dim>1)  same dim > 1 rule)
warm-up (N_sma <= 5)  SGD with momentum:          degenerated_to_sgd. DEFAULT False,    True
                      p -= lr/(1-b1^t) * m_t      which in 4.1.0 applies the step with
                                                  the sign flipped (gradient ASCENT for
                                                  the first 5 steps; tested)
===================  ==========================  ====================================  =====================

Remaining difference: the rectification comparison is ``>`` in pSp and ``>=`` here; N_sma is never
exactly 5 for beta2 = 0.999, so the trajectories agree (tests/test_losses.py compares them step by step
with an independent implementation of the pSp update rule).

Hydra (``_partial_: true``)::

    encoder_optimizer: {_target_: losses.optimizers.ranger, _partial_: true, lr: 1.0e-4}
    discriminator_optimizer: {_target_: torch.optim.Adam, _partial_: true, lr: 2.0e-5}

``_target_: pytorch_optimizer.Ranger`` works too, but then ``degenerated_to_sgd: true`` and
``eps: 6.1e-5`` must be given explicitly.

Discriminator: Adam, lr 2e-5 (paper), betas not given: e4e uses torch's defaults (0.9, 0.999).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from pytorch_optimizer import Ranger

PSP_RANGER_DEFAULTS: dict[str, Any] = {
    "betas": (0.95, 0.999),
    "alpha": 0.5,
    "k": 6,
    "n_sma_threshold": 5,
    "degenerated_to_sgd": True,
    "eps": 6.1e-5,
    "weight_decay": 0.0,
    "use_gc": True,
    "gc_conv_only": False,
}


def ranger(
    params: Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]],
    lr: float = 1e-4,
    betas: tuple[float, float] | list[float] = (0.95, 0.999),
    alpha: float = 0.5,
    k: int = 6,
    n_sma_threshold: int = 5,
    degenerated_to_sgd: bool = True,
    eps: float = 6.1e-5,
    weight_decay: float = 0.0,
    use_gc: bool = True,
    gc_conv_only: bool = False,
) -> Ranger:
    """``pytorch_optimizer.Ranger`` with pSp/e4e's Ranger behaviour as defaults (GOAE encoder, lr 1e-4)."""
    return Ranger(
        params,
        lr=lr,
        betas=tuple(betas),
        alpha=alpha,
        k=k,
        n_sma_threshold=n_sma_threshold,
        degenerated_to_sgd=degenerated_to_sgd,
        eps=eps,
        weight_decay=weight_decay,
        use_gc=use_gc,
        gc_conv_only=gc_conv_only,
    )


def adam(
    params: Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]],
    lr: float = 2e-5,
    betas: tuple[float, float] | list[float] = (0.9, 0.999),
) -> torch.optim.Adam:
    """``torch.optim.Adam`` with the latent discriminator's lr (2e-5, paper) and e4e's (torch default) betas."""
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas))
