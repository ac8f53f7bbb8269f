"""Losses of encoder-based 3D GAN inversion (GOAE stage 1 and the pSp/e4e family).

Small named loss functions (rosinality style) plus the frozen-network loss modules, and
:class:`WeightedLossTerms`, which builds only the terms whose weight is > 0. See docs/losses.md.
Optimiser factories live in :mod:`losses.optimizers` (imported on demand: it needs pytorch_optimizer).
"""

from losses.adversarial import (
    R1Regularization,
    d_logistic_loss,
    d_r1_loss,
    encoder_latent_adversarial_loss,
    g_nonsaturating_loss,
    lazy_r1_regularization,
    set_requires_grad,
)
from losses.composite import (
    GOAE_LOSS_WEIGHTS,
    LossInputs,
    LossTerm,
    LossTermsResult,
    TermValue,
    WeightedLossTerms,
    register_loss_term,
)
from losses.frozen import RANDOM_INIT, PretrainedWeightsError
from losses.identity import IdentityComparison, IdentityLoss, IdentityWeightsError, IRSE50, load_ir_se50
from losses.reconstruction import LPIPSLoss, LPIPSWeightsError, pixel_l2_loss
from losses.regularizers import DeltaWNorm, delta_w_regularization, delta_w_stacked_norm

__all__ = [
    "GOAE_LOSS_WEIGHTS",
    "IRSE50",
    "RANDOM_INIT",
    "DeltaWNorm",
    "IdentityComparison",
    "IdentityLoss",
    "IdentityWeightsError",
    "LPIPSLoss",
    "LPIPSWeightsError",
    "LossInputs",
    "LossTerm",
    "LossTermsResult",
    "PretrainedWeightsError",
    "R1Regularization",
    "TermValue",
    "WeightedLossTerms",
    "d_logistic_loss",
    "d_r1_loss",
    "delta_w_regularization",
    "delta_w_stacked_norm",
    "encoder_latent_adversarial_loss",
    "g_nonsaturating_loss",
    "lazy_r1_regularization",
    "load_ir_se50",
    "pixel_l2_loss",
    "register_loss_term",
    "set_requires_grad",
]
