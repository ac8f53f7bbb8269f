"""The encoder objective of GOAE stage 1 as a weighted sum of named loss terms.

    L^E = l2 * L_2 + lpips * L_LPIPS + id * L_ID + adv * L_adv^E + bg * L_BG + delta_w * L_w+
          (GOAE eq. 13-14 and the Delta-w+ regulariser of Appendix A)
          [+ latent * L_latent: supervision by the ground-truth w+ of synthetic data; not GOAE's, 0 by default]

:class:`WeightedLossTerms` builds ONLY the terms whose weight is > 0. A weight of 0 means the term,
and the network it would need (LPIPS' AlexNet, ArcFace IR-SE50, the background parser), is never
built and its weights file is never opened: this is how ablations are expressed (e4e's
``*_lambda`` convention). Every term reads what it needs from one :class:`LossInputs`; a built term
whose input is missing raises an error naming the term and the field.

Hydra config (``module.loss`` in the stage config)::

    loss:
      _target_: losses.WeightedLossTerms
      weights: {l2: 1.0, lpips: 0.8, id: 0.25, adv: 0.05, bg: 5.0, delta_w: 0.001}
      options:
        lpips: {backbone_weights: /path/alexnet-owt-7be5be79.pth}   # or: random
        id: {weights: /path/model_ir_se50.pth}                       # or: random
        delta_w: {norm: row_sum}                                      # or: stacked
        bg: {stats: /path/ffhq.background_depth.json, target: scalar, form: mse, mask_method: geometric}

New terms plug in by name: :func:`register_loss_term`. ``losses.background`` is imported only when
the background term is switched on.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from losses.adversarial import encoder_latent_adversarial_loss
from losses.identity import IdentityLoss
from losses.latent_supervision import latent_l2_loss
from losses.reconstruction import LPIPSLoss, pixel_l2_loss
from losses.regularizers import DELTA_W_LOSSES, DeltaWNorm

# GOAE's weights (paper, Appendix A). adv: the paper says 0.05, the authors' train script used 0.1 (GOAE #24).
GOAE_LOSS_WEIGHTS: dict[str, float] = {
    "l2": 1.0, "lpips": 0.8, "id": 0.25, "adv": 0.05, "bg": 5.0, "delta_w": 0.001,
}


@dataclass
class LossInputs:
    """Everything the terms may read. Only the fields of the built terms are required.

    reconstruction / target: I_w+ and I, [N, 3, H, W] in [-1, 1] (l2, lpips, id);
    ws: the inverted w+ [N, R, C] (adv, delta_w), including w_avg;
    active_rows: rows open in the current progressive stage (delta_w sums over these; None = all);
    judged_rows: rows the latent discriminator judges (adv; None = all);
    latent_discriminator: D_Wc, called on [M, C] latents -> [M, 1] logits (adv). Frozen by the caller;
    front_render: the rendering of w+ at the canonical front camera (bg), a
        ``losses.background.FrontViewRender`` (depth [N,1,R,R], image, weights_sum);
    ws_true: the ground-truth w+ [N, R, C] of synthetic samples (latent); None for real data.
    """

    reconstruction: torch.Tensor | None = None
    target: torch.Tensor | None = None
    ws: torch.Tensor | None = None
    active_rows: Sequence[int] | None = None
    judged_rows: Sequence[int] | None = None
    latent_discriminator: Callable[[torch.Tensor], torch.Tensor] | None = None
    front_render: Any | None = None
    ws_true: torch.Tensor | None = None

    def require(self, term: str, *names: str) -> tuple[Any, ...]:
        """The named fields; a clear error if one is None."""
        values = tuple(getattr(self, name) for name in names)
        missing = [name for name, value in zip(names, values) if value is None]
        if missing:
            fields = ", LossInputs.".join(missing)
            raise ValueError(f"loss term '{term}' is switched on but LossInputs.{fields} is None")
        return values


@dataclass
class TermValue:
    """What a term returns: its (unweighted) value and optional detached diagnostics to log."""

    value: torch.Tensor
    diagnostics: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class LossTermsResult:
    """total: the weighted sum (back-propagate this); values: unweighted term values (graph kept);
    weights: the weight of each built term; diagnostics: detached extras (e.g. per-sample id similarity)."""

    total: torch.Tensor
    values: dict[str, torch.Tensor]
    weights: dict[str, float]
    diagnostics: dict[str, torch.Tensor]

    def weighted(self, name: str) -> torch.Tensor:
        """weight * value of one term."""
        return self.weights[name] * self.values[name]

    def log_dict(self, prefix: str = "train/") -> dict[str, torch.Tensor]:
        """Detached scalars for ``LightningModule.log_dict``: ``<prefix>loss``, ``<prefix>loss_<term>``,
        and the mean of each diagnostic (``<prefix><name>``)."""
        logs = {f"{prefix}loss": self.total.detach()}
        logs.update({f"{prefix}loss_{name}": value.detach() for name, value in self.values.items()})
        logs.update({f"{prefix}{name}": value.detach().float().mean() for name, value in self.diagnostics.items()})
        return logs


class LossTerm(nn.Module):
    """A named term: computes its unweighted value from :class:`LossInputs`."""

    def forward(self, inputs: LossInputs) -> TermValue:  # pragma: no cover - interface
        raise NotImplementedError


class PixelL2Term(LossTerm):
    """L_2 (pSp MSE) between reconstruction and target."""

    def forward(self, inputs: LossInputs) -> TermValue:
        reconstruction, target = inputs.require("l2", "reconstruction", "target")
        return TermValue(pixel_l2_loss(reconstruction, target))


class LPIPSTerm(LossTerm):
    """L_LPIPS (AlexNet) between reconstruction and target; owns the frozen :class:`LPIPSLoss`."""

    def __init__(self, backbone_weights: str) -> None:
        super().__init__()
        self.lpips = LPIPSLoss(backbone_weights)

    def forward(self, inputs: LossInputs) -> TermValue:
        reconstruction, target = inputs.require("lpips", "reconstruction", "target")
        return TermValue(self.lpips(reconstruction, target))


class IdentityTerm(LossTerm):
    """L_ID (ArcFace IR-SE50); logs the per-sample cosine similarity as ``id_similarity``."""

    def __init__(self, weights: str) -> None:
        super().__init__()
        self.identity = IdentityLoss.from_weights(weights)

    def forward(self, inputs: LossInputs) -> TermValue:
        reconstruction, target = inputs.require("id", "reconstruction", "target")
        comparison = self.identity(reconstruction, target)
        return TermValue(comparison.loss, {"id_similarity": comparison.similarity})


class LatentAdversarialTerm(LossTerm):
    """L_adv^E: the encoder's non-saturating loss on the judged rows of w+ (D passed in LossInputs)."""

    def forward(self, inputs: LossInputs) -> TermValue:
        ws, discriminator = inputs.require("adv", "ws", "latent_discriminator")
        return TermValue(encoder_latent_adversarial_loss(discriminator, ws, inputs.judged_rows))


class DeltaWTerm(LossTerm):
    """L_w+: the Delta-w+ regulariser over the active rows (``norm``: row_sum (e4e, default) or stacked)."""

    def __init__(self, norm: str = DeltaWNorm.ROW_SUM.value) -> None:
        super().__init__()
        self.norm = DeltaWNorm(norm)

    def forward(self, inputs: LossInputs) -> TermValue:
        (ws,) = inputs.require("delta_w", "ws")
        return TermValue(DELTA_W_LOSSES[self.norm](ws, inputs.active_rows))


class LatentSupervisionTerm(LossTerm):
    """L_latent: MSE between the inverted and the ground-truth w+ (synthetic data only)."""

    def forward(self, inputs: LossInputs) -> TermValue:
        if inputs.ws_true is None:
            raise ValueError(
                "loss term 'latent' needs the ground-truth w+ of each sample (LossInputs.ws_true), which "
                "only synthetic data provide (data=synthetic or synthetic_tiny); set loss_weights.latent=0 "
                "for real datasets"
            )
        (ws,) = inputs.require("latent", "ws")
        return TermValue(latent_l2_loss(ws, inputs.ws_true))


class BackgroundDepthTerm(LossTerm):
    """L_BG (GOAE eq. 4) from :mod:`losses.background` (imported only when bg > 0).

    Owns the :class:`losses.background.BackgroundDepthLoss` and the background masker (the
    geometric rule, or the frozen BiSeNet parser, which is therefore never built when bg = 0).
    Reads ``inputs.front_render`` (a ``losses.background.FrontViewRender`` of w+ at the front
    camera); logs the per-sample background fraction as ``bg_fraction``.

    :param stats: D_avg stats file written by ``data_prep.estimate_background_depth``; or
    :param depth_average: D_avg given directly as a number (exactly one of the two);
    :param target: ``scalar`` (the paper's D_avg) or ``per_pixel`` (needs the stats' map);
    :param form: ``mse`` (default) or ``paper_l2_norm`` (see ``BackgroundLossForm``);
    :param mask_method: ``geometric`` or ``bisenet``; ``bisenet_weights``: ``79999_iter.pth`` for bisenet.
    """

    def __init__(
        self,
        stats: str | None = None,
        depth_average: float | None = None,
        target: str = "scalar",
        form: str = "mse",
        mask_method: str = "geometric",
        bisenet_weights: str | None = None,
    ) -> None:
        super().__init__()
        background = importlib.import_module("losses.background")
        if (stats is None) == (depth_average is None):
            raise ValueError("loss term 'bg' needs exactly one of options.bg.stats (a D_avg stats file) "
                             "and options.bg.depth_average")
        if stats is not None:
            stats_record = background.load_background_depth_stats(stats)
            self.background = background.BackgroundDepthLoss.from_stats(stats_record, target=target, form=form)
        else:
            self.background = background.BackgroundDepthLoss(float(depth_average), form=form)
        # Not a child module: the masker (and its frozen parser) stays out of state_dict and DDP.
        self._masker: tuple[Any] = (background.build_background_masker(mask_method, bisenet_weights),)
        self._masker_device: torch.device | None = None

    @property
    def masker(self) -> Any:
        """The background masker (``GeometricBackgroundMasker`` or ``FaceParsingBackgroundMasker``)."""
        return self._masker[0]

    def forward(self, inputs: LossInputs) -> TermValue:
        (front_render,) = inputs.require("bg", "front_render")
        device = front_render.depth.device
        if self._masker_device != device and hasattr(self.masker, "to"):
            self.masker.to(device)  # the parser is not a child, so follow the render's device here
        self._masker_device = device
        mask = self.masker(front_render)
        value = self.background(front_render.depth, mask)
        return TermValue(value, {"bg_fraction": mask.detach().float().mean(dim=(1, 2, 3))})


LOSS_TERMS: dict[str, Callable[..., LossTerm]] = {
    "l2": PixelL2Term,
    "lpips": LPIPSTerm,
    "id": IdentityTerm,
    "adv": LatentAdversarialTerm,
    "bg": BackgroundDepthTerm,
    "delta_w": DeltaWTerm,
    "latent": LatentSupervisionTerm,
}


def register_loss_term(name: str, build: Callable[..., LossTerm]) -> None:
    """Make a new term available by name: ``build(**options)`` must return a :class:`LossTerm`."""
    if name in LOSS_TERMS:
        raise ValueError(f"loss term '{name}' is already registered")
    LOSS_TERMS[name] = build


class WeightedLossTerms(nn.Module):
    """Builds the terms with weight > 0 and computes their weighted sum (typed result for logging)."""

    def __init__(
        self, weights: Mapping[str, float], options: Mapping[str, Mapping[str, Any]] | None = None
    ) -> None:
        """
        :param weights: ``{term name: weight}``; every name must be a registered term, weights >= 0.
            Terms with weight 0 are not built (their options are not even read).
        :param options: ``{term name: keyword arguments of the term}``, e.g. weights-file paths.
        """
        super().__init__()
        options = dict(options or {})
        unknown = sorted(set(weights) - set(LOSS_TERMS))
        unknown_options = sorted(set(options) - set(LOSS_TERMS))
        if unknown or unknown_options:
            raise ValueError(
                f"unknown loss term(s) {unknown + unknown_options}; known terms: {sorted(LOSS_TERMS)}"
            )
        negative = {name: float(w) for name, w in weights.items() if float(w) < 0}
        if negative:
            raise ValueError(f"loss weights must be >= 0 (0 switches a term off), got {negative}")
        self.weights: dict[str, float] = {name: float(w) for name, w in weights.items() if float(w) > 0}
        self.terms = nn.ModuleDict(
            {name: LOSS_TERMS[name](**dict(options.get(name) or {})) for name in self.weights}
        )

    @property
    def active_terms(self) -> tuple[str, ...]:
        """Names of the built terms, in config order."""
        return tuple(self.terms.keys())

    def forward(self, inputs: LossInputs) -> LossTermsResult:
        if not self.terms:
            raise ValueError("every loss weight is 0: there is nothing to optimise")
        values: dict[str, torch.Tensor] = {}
        diagnostics: dict[str, torch.Tensor] = {}
        for name, term in self.terms.items():
            term_value = term(inputs)
            values[name] = term_value.value
            diagnostics.update(term_value.diagnostics)
        total = sum(self.weights[name] * value for name, value in values.items())
        assert isinstance(total, torch.Tensor)
        return LossTermsResult(total=total, values=values, weights=dict(self.weights), diagnostics=diagnostics)
