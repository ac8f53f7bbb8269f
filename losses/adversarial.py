"""Losses of GOAE's canonical latent discriminator D_Wc (eq. 2 and 3), e4e conventions.

D outputs logits; with D = sigmoid(logit), the paper's ``-E[log D(w_c)] - E[log(1 - D(w_i))]``
is ``softplus(-logit_real) + softplus(logit_fake)`` (the non-saturating GAN loss).

R1 (Mescheder et al. 2018): ``gamma/2 * E[||grad_w D(w_c)||^2]`` on real samples only. Eq. (2)
writes the norm without the square; R1 is squared by definition and every implementation (e4e,
StyleGAN2) squares it. It is applied lazily, every ``d_reg_every`` discriminator steps, and then
scaled by ``d_reg_every`` so that its average strength equals applying it every step (e4e:
``r1 / 2 * r1_loss * d_reg_every``; e4e defaults r1 = 10, d_reg_every = 16; GOAE gamma = 10).

Typical discriminator step (what ``lightning_modules`` does; shown for reference)::

    set_requires_grad(discriminator, True)
    loss_d = d_logistic_loss(discriminator(real_w), discriminator(fake_w.detach()))
    ...step...
    if step % d_reg_every == 0:
        real_w = real_w.detach().requires_grad_(True)
        r1 = lazy_r1_regularization(discriminator(real_w), real_w, gamma=10.0, d_reg_every=16)
        r1.objective.backward(); ...step...
    set_requires_grad(discriminator, False)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def set_requires_grad(module: nn.Module, flag: bool) -> None:
    """Switch ``requires_grad`` of every parameter of ``module`` (freeze D during the encoder step)."""
    for parameter in module.parameters():
        parameter.requires_grad_(flag)


def d_logistic_loss(real_pred: torch.Tensor, fake_pred: torch.Tensor) -> torch.Tensor:
    """Non-saturating discriminator loss, GOAE eq. (2) without R1: E[softplus(-D(w_c))] + E[softplus(D(w_i))]."""
    return F.softplus(-real_pred).mean() + F.softplus(fake_pred).mean()


def g_nonsaturating_loss(fake_pred: torch.Tensor) -> torch.Tensor:
    """Encoder adversarial loss, GOAE eq. (3): E[softplus(-D(w_i))] = -E[log sigmoid(D(w_i))]."""
    return F.softplus(-fake_pred).mean()


def d_r1_loss(real_pred: torch.Tensor, real_w: torch.Tensor) -> torch.Tensor:
    """R1 penalty E_b[||grad_w D(w_b)||^2] (sum of squares per sample, mean over the batch).

    ``real_w`` must require grad and ``real_pred`` must be computed from it. The graph is kept
    (create_graph=True) so the penalty can be back-propagated into D.
    """
    (grad_real,) = torch.autograd.grad(outputs=real_pred.sum(), inputs=real_w, create_graph=True)
    return grad_real.pow(2).reshape(grad_real.shape[0], -1).sum(dim=1).mean()


@dataclass
class R1Regularization:
    """A lazy R1 step.

    penalty: E[||grad D(w_c)||^2] (unscaled; log this);
    objective: gamma/2 * penalty * d_reg_every + 0 * sum(real_pred), what to back-propagate. The
    zero term ties every D parameter (the last bias included, which the input gradient does not
    depend on) into the graph, so DDP does not report unused parameters.
    """

    penalty: torch.Tensor
    objective: torch.Tensor


def lazy_r1_regularization(
    real_pred: torch.Tensor, real_w: torch.Tensor, gamma: float, d_reg_every: int
) -> R1Regularization:
    """R1 of GOAE eq. (2), applied every ``d_reg_every`` steps with e4e's scaling gamma/2 * R1 * d_reg_every."""
    penalty = d_r1_loss(real_pred, real_w)
    objective = gamma / 2.0 * penalty * d_reg_every + 0.0 * real_pred.sum()
    return R1Regularization(penalty=penalty, objective=objective)


def select_latent_rows(ws: torch.Tensor, rows: Sequence[int] | None) -> torch.Tensor:
    """The judged rows of w+ [N, R, C] as one batch of latents [N * len(rows), C] (all rows when None)."""
    if ws.ndim != 3:
        raise ValueError(f"expected w+ of shape [N, rows, channels], got {list(ws.shape)}")
    selected = ws if rows is None else ws[:, list(rows)]
    return selected.reshape(-1, ws.shape[-1])


def encoder_latent_adversarial_loss(
    discriminator: Callable[[torch.Tensor], torch.Tensor], ws: torch.Tensor, rows: Sequence[int] | None
) -> torch.Tensor:
    """L_adv^E of GOAE eq. (3) on each judged entry w_i of w+, averaged over the judged rows (e4e).

    e4e averages ``softplus(-D(w_i)).mean()`` over the rows; every row has the same batch size, so
    that equals the mean over all N * len(rows) judged latents, computed here in one D call.
    """
    return g_nonsaturating_loss(discriminator(select_latent_rows(ws, rows)))
