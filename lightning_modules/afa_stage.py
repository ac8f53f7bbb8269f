"""GOAE stage 2 as a LightningModule: Adaptive Feature Alignment with the frozen stage-1 encoder
(paper Sec. 4.2-4.3, Appendix A "Training Strategy"; the authors' released ``Net.forward``/``mix_fusion``).

One training step (automatic optimisation, one Adam optimiser over the AFA only, lr 2.5e-5):

1. ws = E(image, w_avg, stage=3) with the FROZEN encoder (no grad); F = G.synthesize_features(ws, block).
2. w+ planes = G resumed from F; rec_w = their render at the input camera (the AFA input, no grad).
3. F* = AFA(image_full, rec_w.image, F); refined planes = G resumed from F* (gradient flows through the
   frozen G into the AFA).
4. The input view renders the refined planes (released; ``occlusion_mix.input_view_source=mixed`` renders
   the occlusion-aware mix instead). Losses on that render: L2 / LPIPS / ID (same conventions as stage 1),
   L_BG on the refined planes' front view, and lambda_7 * mean((F* - F)^2).

The occlusion-aware mix (novel views) is built in ``invert``, the image grid and (when configured) the
training input view. The adversarial and Delta-w+ terms are not supported: with the encoder frozen they
are constants w.r.t. every trainable parameter (see docs/stage2.md).

Exact resume: every random draw of a step (renderer draws, dropout) is a function of (seed, global_step,
rank), as in stage 1. DDP synchronises the AFA only; the frozen encoder, generator and loss networks are
listed in ``_ddp_params_and_buffers_to_ignore``. Checkpoints hold the AFA, the FROZEN ENCODER (so that a
stage-2 checkpoint inverts images on its own, with ``load_stage2_inverter``), the optimiser state and a
fingerprint of the generator, never the generator or the loss networks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics import MeanMetric

from cameras import canonical_camera_label, look_at_label
from inversion.result import InversionResult
from lightning_modules.encoder_stage import (
    BackgroundDepthSource,
    InversionPreview,
    pool_to_resolution,
    step_seed,
)
from losses import LossInputs, LossTermsResult, WeightedLossTerms
from networks.afa import (
    AFAConfig,
    AFAOutput,
    PlainCNNAlignment,
    build_feature_alignment,
    delta_feature_penalty,
    resume_state,
)
from networks.eg3d.outputs import BackboneFeatures, RenderOutput, RendererDraws
from inversion.loading import read_stage_checkpoint
from networks.eg3d.fingerprint import GeneratorFingerprint
from networks.encoders import FINAL_STAGE, GOAEncoder, GOAEncoderConfig, load_goae_encoder
from networks.occlusion_mix import MixedTriplanes, OcclusionMixConfig, occlusion_aware_mix
from lightning_modules.common import (
    FrozenNetworksOutOfCheckpoints,
    as_dataclass,
    state_keys_outside,
)
from runtime.pylogger import RankedLogger

log = RankedLogger(__name__)

STAGE_NAME = "afa"
STAGE1_NAME = "encoder"
STAGE1_REACHED_STAGE_KEY = "reached_stage"  # stage 1's buffer: the progressive stage its encoder reached
# The only network DDP synchronises (and the only one the optimiser sees).
DDP_SYNCED_PREFIX = "afa."
DELTA_F_TERM = "delta_f"
# Paper, Appendix A: L_total of stage 1 minus the adversarial and Delta-w+ terms, plus lambda_7 Delta F.
AFA_LOSS_WEIGHTS: dict[str, float] = {"l2": 1.0, "lpips": 0.8, "id": 0.25, "bg": 5.0, DELTA_F_TERM: 1e-4}
# Terms of stage 1 that only act on the (frozen) encoder's w+: constants for the AFA.
ENCODER_ONLY_TERMS: tuple[str, ...] = ("adv", "delta_w")


class Stage1CheckpointError(ValueError):
    """``init_from`` does not hold a usable stage-1 encoder for this generator."""


# ---------------------------------------------------------------------------------------------- stage-1 loading
@dataclass
class LoadedEncoder:
    """The frozen encoder and where its weights came from (logged, and stored in stage-2 checkpoints)."""

    encoder: GOAEncoder
    origin: str  # "stage1_checkpoint" | "released_goae"
    generator_check: str  # what was verified about the generator
    progressive_stage: int  # the encoder heads that were trained (the released encoder: all)


def load_stage1_encoder(
    path: str | Path,
    encoder_factory: Callable[[], GOAEncoder],
    generator: nn.Module,
    generator_source: Mapping[str, Any] | None = None,
) -> LoadedEncoder:
    """The encoder of a stage-1 Lightning checkpoint, or of the authors' released ``encoder_FFHQ.pt``.

    Stage-1 checkpoints (``checkpoint["goae_stage"]["name"] == "encoder"``) hold the encoder under
    ``encoder.``; its architecture is ``encoder_factory``'s (stage.encoder must describe the stage-1 run's).
    The generator is checked against the checkpoint's ``goae_stage.generator`` fingerprint when present,
    else against the stage-1 run's ``.hydra/config.yaml`` (``generator_source``: name/checkpoint/seed of
    this run's generator config). Anything else (a stage-2 checkpoint, another stage) is refused.
    """
    checkpoint_path = Path(path)
    if not checkpoint_path.is_file():
        raise FileNotFoundError(
            f"init_from={checkpoint_path} does not exist: give a stage-1 checkpoint "
            "(<stage-1 run dir>/checkpoints/last.ckpt) or the authors' encoder_FFHQ.pt"
        )
    loaded = read_stage_checkpoint(checkpoint_path)  # never runs code from the file
    if not loaded.is_lightning_checkpoint:
        template = encoder_factory()
        encoder = load_goae_encoder(checkpoint_path, template.config)
        return LoadedEncoder(encoder, "released_goae", _check_released_encoder(encoder, generator), FINAL_STAGE)
    stage_info = loaded.record
    stage_name = stage_info.get("name")
    if stage_name != STAGE1_NAME:
        found = f"a stage {stage_name!r} checkpoint" if stage_name else "a Lightning checkpoint without GOAE stage info"
        hint = " (resume stage 2 with ckpt_path=..., not init_from)" if stage_name == STAGE_NAME else ""
        raise Stage1CheckpointError(
            f"init_from={checkpoint_path} is {found}; stage 2 needs a stage-1 ('{STAGE1_NAME}') checkpoint{hint}"
        )
    generator_check = _check_stage1_generator(checkpoint_path, stage_info, generator, generator_source)
    encoder = encoder_factory()
    _load_encoder_weights(encoder, loaded.state_dict, checkpoint_path)
    # Only the heads stage 1 had opened are trained; the others are still at their initialisation.
    reached = loaded.state_dict.get(STAGE1_REACHED_STAGE_KEY)
    progressive_stage = FINAL_STAGE if reached is None else int(reached)
    return LoadedEncoder(encoder, "stage1_checkpoint", generator_check, progressive_stage)


def _load_encoder_weights(encoder: GOAEncoder, state_dict: Mapping[str, torch.Tensor], source: Path) -> None:
    prefix = "encoder."
    part = {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}
    if not part:
        raise Stage1CheckpointError(f"{source} holds no 'encoder.*' weights")
    own = encoder.state_dict()
    missing = sorted(set(own) - set(part))
    unexpected = sorted(set(part) - set(own))
    wrong = [key for key in set(own) & set(part) if own[key].shape != part[key].shape]
    if missing or unexpected or wrong:
        raise Stage1CheckpointError(
            f"the encoder in {source} does not fit stage.encoder (set stage.encoder to the stage-1 run's "
            f"architecture): missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shapes {sorted(wrong)[:5]}"
        )
    encoder.load_state_dict(part, strict=True)


def _check_stage1_generator(
    path: Path, stage_info: Mapping[str, Any], generator: nn.Module, generator_source: Mapping[str, Any] | None
) -> str:
    """Raise if the stage-1 run used another generator; returns what was verified."""
    recorded = stage_info.get("generator")
    if recorded:
        differences = GeneratorFingerprint.of(generator).differences(GeneratorFingerprint.from_dict(recorded))
        if differences:
            raise Stage1CheckpointError(
                f"{path} was trained with another generator: " + "; ".join(differences)
                + ". Use the stage-1 run's generator config (generator=..., generator.checkpoint=...)"
            )
        return "generator fingerprint (weights hash) matches"
    run_config = path.parent.parent / ".hydra" / "config.yaml"
    if generator_source and run_config.is_file():
        return _check_against_run_config(path, run_config, generator_source)
    log.warning(f"{path} records no generator and has no run config beside it: the generator is not verified")
    return "not verified"


def _check_against_run_config(path: Path, run_config: Path, generator_source: Mapping[str, Any]) -> str:
    from omegaconf import OmegaConf

    recorded = OmegaConf.load(run_config).get("generator") or {}
    keys = ("name", "checkpoint", "random_init", "seed")
    differences = [
        f"{key}: {recorded.get(key)!r} (stage-1 run) != {generator_source.get(key)!r} (this run)"
        for key in keys if recorded.get(key) != generator_source.get(key)
    ]
    if differences:
        raise Stage1CheckpointError(
            f"{path} was trained with another generator config ({run_config}): " + "; ".join(differences)
        )
    return f"generator config matches {run_config}"


def _check_released_encoder(encoder: GOAEncoder, generator: nn.Module) -> str:
    if encoder.config.w_dim != int(generator.w_dim):
        raise Stage1CheckpointError(
            f"the released encoder predicts w_dim {encoder.config.w_dim} but the generator has {generator.w_dim}"
        )
    return "released encoder: only w_dim checked (it was trained on ffhqrebalanced512-128)"


# ---------------------------------------------------------------------------------------------- results
@dataclass
class RefinementForward:
    """Everything one refinement pass computes (before rendering the refined planes)."""

    ws: torch.Tensor  # [N, num_ws, w_dim] from the frozen encoder
    features: BackboneFeatures  # F (and the skip image) after the refined block
    wplus_planes: torch.Tensor  # [N, 3, C, R, R] from F
    wplus_render: RenderOutput  # the w+ render at the input camera (the AFA's reconstruction)
    alignment: AFAOutput  # F*, gamma, beta
    refined_planes: torch.Tensor  # [N, 3, C, R, R] from F*


@dataclass
class RefinementPreview:
    """Renders of the fixed batch for the stage-2 image grid; images [N, 3, h, w] in about [-1, 1]."""

    wplus_reconstruction: torch.Tensor
    refined_reconstruction: torch.Tensor
    novel_views: list[torch.Tensor]  # the occlusion-aware mix at the preview yaws
    visibility_mask: torch.Tensor  # [N, 1, R, R] weight of the refined XY plane (plane 0)
    front_depth: torch.Tensor  # [N, 1, r, r] refined planes, canonical front camera


@dataclass
class Stage2ValidationRecord:
    """Validation errors at one global step: the refined render next to the stage-1 w+ render."""

    step: int
    mse: float
    mse_wplus: float


# ---------------------------------------------------------------------------------------------- module
class GOAEAFAStage(FrozenNetworksOutOfCheckpoints, L.LightningModule):
    """Stage 2 of GOAE: trains the feature alignment (AFA) against the frozen encoder and generator."""

    def __init__(
        self,
        generator: nn.Module,
        encoder: Callable[[], GOAEncoder] | GOAEncoder,
        afa: Callable[[], nn.Module] | nn.Module,
        occlusion_mix: OcclusionMixConfig | Mapping[str, Any] | None = None,
        loss_weights: Mapping[str, float] | None = None,
        loss_options: Mapping[str, Mapping[str, Any]] | None = None,
        background_depth: BackgroundDepthSource | Mapping[str, Any] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        loss_resolution: int | None = None,
        seed: int | None = 0,
        init_from: str | None = None,
        afa_init_from: str | None = None,
        generator_source: Mapping[str, Any] | None = None,
    ) -> None:
        """
        :param generator: the frozen EG3D (injected by train.py); never trained, never checkpointed.
        :param encoder: a GOAEncoder or a factory building the stage-1 architecture (weights: init_from).
        :param afa: the feature alignment (``networks.afa.build_feature_alignment`` partial) or a module.
        :param occlusion_mix: OcclusionMixConfig fields (variant, blur, input_view_source, ...).
        :param loss_weights: term -> weight (defaults: the paper's); 0 = never built. Terms: l2, lpips,
            id, bg, delta_f. adv / delta_w must stay 0 (they cannot move a frozen encoder).
        :param loss_options / background_depth: as in stage 1 (docs/losses.md, docs/background_depth.md).
        :param optimizer: factory taking the AFA parameters (default Adam lr 2.5e-5, the paper's).
        :param loss_resolution: resolution of the image losses; None = the encoder input's (as stage 1).
        :param seed: base of the per-step seeds (exact resume).
        :param init_from: a stage-1 checkpoint, or the authors' encoder_FFHQ.pt; needed to train
            unless the run resumes a stage-2 checkpoint (which holds the encoder).
        :param afa_init_from: optionally the authors' afa_FFHQ.pt (released architecture only).
        :param generator_source: {name, checkpoint, random_init, seed} of this run's generator config,
            compared with the stage-1 run's config when its checkpoint records no fingerprint.
        """
        super().__init__()
        self.save_hyperparameters(ignore=["generator", "encoder", "afa", "optimizer"], logger=False)
        self.generator = generator.eval().requires_grad_(False)
        self.encoder = encoder if isinstance(encoder, nn.Module) else encoder()
        self.afa = afa if isinstance(afa, nn.Module) else afa()
        self.afa_config: AFAConfig = self.afa.config
        self.mix_config = as_dataclass(OcclusionMixConfig, occlusion_mix)
        self.background_source = as_dataclass(BackgroundDepthSource, background_depth)
        self.loss_weights = {**AFA_LOSS_WEIGHTS, **dict(loss_weights or {})}
        _check_loss_weights(self.loss_weights)
        self.delta_f_weight = float(self.loss_weights.get(DELTA_F_TERM, 0.0))
        self.loss = WeightedLossTerms(self._image_loss_weights(), self._loss_options(loss_options))
        self.loss_resolution = loss_resolution
        self.seed = 0 if seed is None else int(seed)
        self._optimizer_factory = optimizer or _default_adam
        self.generator_fingerprint = GeneratorFingerprint.of(self.generator)
        self._check_generator_fits_afa()

        self.encoder_origin = "untrained"
        # Which encoder heads to use: saved with the weights so a stage-2 checkpoint inverts on its own.
        self.register_buffer("encoder_stage", torch.tensor(FINAL_STAGE, dtype=torch.long))
        if init_from:
            loaded = load_stage1_encoder(init_from, lambda: self.encoder, self.generator, generator_source)
            self.encoder, self.encoder_origin = loaded.encoder, loaded.origin
            self.encoder_stage.fill_(loaded.progressive_stage)
            log.info(f"Frozen encoder from {init_from} ({loaded.origin}; {loaded.generator_check})")
        self.encoder.eval().requires_grad_(False)
        if afa_init_from:
            self._load_released_afa(afa_init_from)

        self.val_mse = MeanMetric()
        self.val_mse_wplus = MeanMetric()
        self.validation_history: list[Stage2ValidationRecord] = []
        # DDP synchronises the AFA only (see the module docstring).
        self._ddp_params_and_buffers_to_ignore = state_keys_outside(self, (DDP_SYNCED_PREFIX,))

    # ------------------------------------------------------------------------------------ construction
    def _image_loss_weights(self) -> dict[str, float]:
        return {name: weight for name, weight in self.loss_weights.items() if name != DELTA_F_TERM}

    def _loss_options(self, loss_options: Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict[str, Any]]:
        options = {name: dict(value or {}) for name, value in dict(loss_options or {}).items()}
        options = {name: value for name, value in options.items() if name not in ENCODER_ONLY_TERMS}
        if float(self.loss_weights.get("bg", 0.0)) > 0:
            options["bg"] = background_depth_options(self.generator, self.background_source, options.get("bg", {}))
        return options

    def _check_generator_fits_afa(self) -> None:
        with torch.no_grad():
            ws = self.generator.w_avg.reshape(1, 1, -1).expand(1, self.generator.num_ws, -1)
            features = self.generator.synthesize_features(ws, self.afa_config.refined_block).features
        if features.shape[1] != self.afa_config.feature_channels:
            raise ValueError(
                f"the AFA expects {self.afa_config.feature_channels} channels after {self.afa_config.refined_block} "
                f"but this generator has {features.shape[1]}: set stage.afa.feature_channels"
            )

    def _load_released_afa(self, path: str) -> None:
        from networks.afa_checkpoint import load_released_afa

        released = load_released_afa(path)
        if released.config != self.afa_config or type(released) is not type(self.afa):
            raise ValueError(f"afa_init_from={path} is the released architecture; stage.afa must be the default one")
        self.afa.load_state_dict(released.state_dict())
        log.info(f"AFA initialised from {path} (released afa_FFHQ.pt)")

    @classmethod
    def load_inverter(cls, generator: nn.Module, ckpt_path: str | Path, stage_cfg: Any = None) -> "GOAEAFAStage":
        """The hook of ``inversion.loading``: a stage-2 checkpoint is self-contained (see load_stage2_inverter)."""
        return load_stage2_inverter(ckpt_path, generator)

    # ------------------------------------------------------------------------------------ train/eval modes
    def train(self, mode: bool = True) -> "GOAEAFAStage":
        """Only the AFA ever trains: the frozen networks stay in eval mode (no dropout / drop-path / BN updates)."""
        super().train(mode)
        self.generator.eval()
        self.encoder.eval()
        return self

    # ------------------------------------------------------------------------------------ checkpoints
    def stage_metadata(self) -> dict[str, Any]:
        """What ``load_stage2_inverter`` needs to rebuild this module without Hydra."""
        return {
            "name": STAGE_NAME,
            "generator": self.generator_fingerprint.as_dict(),
            "encoder_config": asdict(self.encoder.config),
            "encoder_origin": self.encoder_origin,
            "alignment_variant": "plain_cnn" if isinstance(self.afa, PlainCNNAlignment) else "afa",
            "alignment_config": asdict(self.afa_config),
            "occlusion_mix": asdict(self.mix_config),
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["goae_stage"] = self.stage_metadata()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        stage = checkpoint.get("goae_stage") or {}
        if stage.get("name") != STAGE_NAME:
            raise ValueError(f"ckpt_path is a {stage.get('name')!r} checkpoint, not a stage-2 ('{STAGE_NAME}') one")
        differences = self.generator_fingerprint.differences(GeneratorFingerprint.from_dict(stage["generator"]))
        if differences:
            raise ValueError("the stage-2 checkpoint was trained with another generator: " + "; ".join(differences))
        self.encoder_origin = str(stage.get("encoder_origin", "stage2_checkpoint"))

    def on_fit_start(self) -> None:
        if self.encoder_origin == "untrained":
            raise ValueError(
                "stage 2 needs the stage-1 encoder: init_from=<stage-1 run>/checkpoints/last.ckpt "
                "(or the authors' encoder_FFHQ.pt), or ckpt_path=<stage-2 checkpoint> to resume"
            )

    # ------------------------------------------------------------------------------------ optimiser
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self._optimizer_factory(self.afa.parameters())

    # ------------------------------------------------------------------------------------ forward
    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """The frozen encoder's w+ with the heads stage 1 trained (all of them for a finished run)."""
        with torch.no_grad():
            return self.encoder(image, self.generator.w_avg, int(self.encoder_stage)).ws

    def refine(
        self, image: torch.Tensor, image_full: torch.Tensor, camera: torch.Tensor, draws: RendererDraws
    ) -> RefinementForward:
        """Encoder -> F -> w+ render -> AFA -> refined planes (gradient only through the AFA)."""
        ws = self.encode(image)
        with torch.no_grad():
            features = self.generator.synthesize_features(ws, self.afa_config.refined_block)
            wplus_planes = self.generator.synthesize_planes_from_features(ws, features)
            wplus_render = self.generator.render_planes(wplus_planes, ws, camera, draws=draws)
        side = self.afa_config.residual_resolution
        alignment = self.afa(
            pool_to_resolution(image_full, side), pool_to_resolution(wplus_render.image, side), features.features
        )
        refined_planes = self.generator.synthesize_planes_from_features(
            ws, resume_state(features, alignment, self.afa_config)
        )
        return RefinementForward(ws, features, wplus_planes, wplus_render, alignment, refined_planes)

    def mix(self, forward: RefinementForward, refined_render: RenderOutput) -> MixedTriplanes:
        return occlusion_aware_mix(
            forward.refined_planes, forward.wplus_planes, refined_render,
            box_warp=float(self.generator.rendering_kwargs["box_warp"]),
            projection=self.generator.renderer.plane_projection, config=self.mix_config,
        )

    def input_view_render(self, forward: RefinementForward, camera: torch.Tensor, draws: RendererDraws) -> RenderOutput:
        """The render the losses see: the refined planes (released) or the occlusion-aware mix."""
        refined = self.generator.render_planes(forward.refined_planes, forward.ws, camera, draws=draws)
        if self.mix_config.input_view_source == "refined":
            return refined
        mixed = self.mix(forward, refined)
        return self.generator.render_planes(mixed.input_view_planes, forward.ws, camera, draws=draws)

    def _loss_target(self, batch: Any) -> tuple[torch.Tensor, int]:
        resolution = int(self.loss_resolution or batch.image.shape[-1])
        source = batch.image if batch.image.shape[-1] == resolution else batch.image_full
        return pool_to_resolution(source, resolution), resolution

    # ------------------------------------------------------------------------------------ training
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        step = self.global_step
        torch.manual_seed(step_seed(self.seed, step, self.global_rank))  # AFA dropout draws
        rng = torch.Generator(device=self.device).manual_seed(step_seed(self.seed + 1, step, self.global_rank))
        size = batch.image.shape[0]
        draws = self.generator.sample_draws(size, generator=rng, device=self.device)
        forward = self.refine(batch.image, batch.image_full, batch.camera, draws)
        result = self.stage2_losses(batch, forward, draws, rng)
        logs = result.log_dict("train/")
        logs["train/lr_afa"] = float(self.optimizers().param_groups[0]["lr"])
        self.log_dict(logs, prog_bar=False, batch_size=size)
        self.log("loss", result.total.detach(), prog_bar=True, logger=False, batch_size=size)
        return result.total

    def stage2_losses(
        self, batch: Any, forward: RefinementForward, draws: RendererDraws, rng: torch.Generator | None
    ) -> LossTermsResult:
        """Image losses on the input view, L_BG on the refined planes' front view, lambda_7 Delta F."""
        needs_image = any(name in self.loss.weights for name in ("l2", "lpips", "id"))
        reconstruction = target = None
        if needs_image:
            render = self.input_view_render(forward, batch.camera, draws)
            target, resolution = self._loss_target(batch)
            reconstruction = pool_to_resolution(render.image, resolution)
        front = self.front_view(forward.refined_planes, forward.ws, rng) if "bg" in self.loss.weights else None
        result = self.loss(LossInputs(reconstruction=reconstruction, target=target, ws=forward.ws,
                                      front_render=front)) if self.loss.terms else None
        return _with_delta_f(result, forward, self.delta_f_weight)

    def front_view(self, planes: torch.Tensor, ws: torch.Tensor, rng: torch.Generator | None) -> Any:
        """The refined planes at the canonical front camera (what L_BG regularises)."""
        from losses.background import FrontViewRender

        size = ws.shape[0]
        c_front = canonical_camera_label(size, device=ws.device, dtype=ws.dtype)
        draws = self.generator.sample_draws(size, generator=rng, device=self.device) if rng is not None else None
        masker = self.loss.terms["bg"].masker
        if getattr(getattr(masker, "method", None), "value", None) == "geometric":
            # The geometric mask reads depth only: skip the super-resolution network.
            volume = self.generator.volume_render(planes, c_front, draws=draws)
            return FrontViewRender(depth=volume.image_depth, image=volume.feature_image[:, :3],
                                   weights_sum=volume.weights_sum)
        render = self.generator.render_planes(planes, ws, c_front, draws=draws)
        return FrontViewRender(depth=render.image_depth, image=render.image, weights_sum=render.weights_sum)

    # ------------------------------------------------------------------------------------ validation
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        draws = self._deterministic_draws(batch.image.shape[0])
        forward = self.refine(batch.image, batch.image_full, batch.camera, draws)
        refined = self.input_view_render(forward, batch.camera, draws)
        target, resolution = self._loss_target(batch)
        self.val_mse.update(_per_sample_mse(pool_to_resolution(refined.image, resolution), target))
        self.val_mse_wplus.update(_per_sample_mse(pool_to_resolution(forward.wplus_render.image, resolution), target))

    def on_validation_epoch_end(self) -> None:
        # MeanMetric reduces sums and counts over ranks: exact means of the whole split.
        mse, mse_wplus = self.val_mse.compute(), self.val_mse_wplus.compute()
        self.val_mse.reset()
        self.val_mse_wplus.reset()
        self.log_dict({"val/mse": mse, "val/mse_wplus": mse_wplus}, prog_bar=True, sync_dist=False)
        self.validation_history.append(Stage2ValidationRecord(self.global_step, float(mse), float(mse_wplus)))

    def on_train_end(self) -> None:
        if len(self.validation_history) >= 2:
            first, last = self.validation_history[0], self.validation_history[-1]
            log.info(
                f"Learning curve: val/mse (refined) {first.mse:.5f} (step {first.step}) -> {last.mse:.5f} "
                f"(step {last.step}); val/mse_wplus (stage 1) {last.mse_wplus:.5f}"
            )

    def _deterministic_draws(self, batch_size: int) -> RendererDraws:
        from losses.background import deterministic_draws

        return deterministic_draws(self.generator, batch_size, self.device)

    # ------------------------------------------------------------------------------------ inversion
    @torch.no_grad()
    def invert(self, image: torch.Tensor, image_full: torch.Tensor, camera: torch.Tensor) -> InversionResult:
        """The ``Inverter`` protocol: w+, the input-view planes (refined, as released) and the mix for novel views."""
        draws = self._deterministic_draws(image.shape[0])
        forward = self.refine(image, image_full, camera, draws)
        refined_render = self.generator.render_planes(forward.refined_planes, forward.ws, camera, draws=draws)
        mixed = self.mix(forward, refined_render)
        return InversionResult(
            ws=forward.ws,
            input_view_planes=mixed.input_view_planes,
            novel_view_planes=mixed.novel_view_planes,
            refined_features=resume_state(forward.features, forward.alignment, self.afa_config),
            visibility_masks=mixed.masks,
        )

    # ------------------------------------------------------------------------------------ previews
    @torch.no_grad()
    def refinement_preview(
        self, batch: Any, yaw_degrees: Sequence[float], pitch_degrees: float = 0.0
    ) -> RefinementPreview:
        """w+ and refined reconstructions, mixed novel views, the XY visibility mask and the front depth."""
        result = self.invert(batch.image, batch.image_full, batch.camera)
        size = result.ws.shape[0]
        draws = self._deterministic_draws(size)
        wplus = self.generator.synthesis(result.ws, batch.camera, draws=draws).image
        refined = result.render_input_view(self.generator, batch.camera, draws).image
        pivot = list(self.generator.rendering_kwargs.get("avg_camera_pivot", (0.0, 0.0, 0.2)))
        novel_views = [
            result.render_novel_view(self.generator, _yaw_camera(yaw, pitch_degrees, pivot, size, result.ws), draws).image
            for yaw in yaw_degrees
        ]
        c_front = canonical_camera_label(size, device=result.ws.device, dtype=result.ws.dtype)
        front_depth = self.generator.volume_render(result.novel_view_planes, c_front, draws=draws).image_depth
        assert result.visibility_masks is not None
        return RefinementPreview(wplus, refined, novel_views, result.visibility_masks[:, 0], front_depth)

    @torch.no_grad()
    def inversion_preview(
        self, images: torch.Tensor, cameras: torch.Tensor, yaw_degrees: Sequence[float], pitch_degrees: float = 0.0
    ) -> InversionPreview:
        """Compatibility with the stage-1 grid callback, which passes the encoder-size image only: it is
        resized to the AFA's residual resolution (an approximation of image_full). The stage-2 callback
        (``callbacks.afa_images.AFAImageLogger``) uses the real full image and also shows the mask."""
        full = pool_to_resolution(images, self.afa_config.residual_resolution)
        preview = self.refinement_preview(_PreviewBatch(images, full, cameras), yaw_degrees, pitch_degrees)
        return InversionPreview(preview.refined_reconstruction, preview.novel_views, preview.front_depth)


# ---------------------------------------------------------------------------------------------- standalone loading
def load_stage2_inverter(path: str | Path, generator: nn.Module) -> GOAEAFAStage:
    """A stage-2 checkpoint as an ``Inverter`` without Hydra: encoder + AFA rebuilt from its metadata.

    No loss network is built (all image terms 0, Delta F only); the generator must be the one it was
    trained with (fingerprint checked).
    """
    checkpoint = torch.load(Path(path), map_location="cpu", weights_only=True)
    stage = checkpoint.get("goae_stage") or {}
    if stage.get("name") != STAGE_NAME:
        raise ValueError(f"{path} is not a stage-2 ('{STAGE_NAME}') checkpoint (found {stage.get('name')!r})")
    encoder = GOAEncoder(GOAEncoderConfig(**stage["encoder_config"]))
    alignment_fields = dict(stage["alignment_config"])
    afa = build_feature_alignment(stage["alignment_variant"], **alignment_fields)
    module = GOAEAFAStage(
        generator, encoder, afa, occlusion_mix=stage["occlusion_mix"],
        loss_weights={"l2": 0.0, "lpips": 0.0, "id": 0.0, "bg": 0.0, DELTA_F_TERM: 1.0},
    )
    module.on_load_checkpoint(checkpoint)
    module.load_state_dict(checkpoint["state_dict"])
    return module.eval()


# ---------------------------------------------------------------------------------------------- helpers
@dataclass
class _PreviewBatch:
    image: torch.Tensor
    image_full: torch.Tensor
    camera: torch.Tensor


def _yaw_camera(yaw: float, pitch: float, pivot: list[float], size: int, like: torch.Tensor) -> torch.Tensor:
    camera = look_at_label(math.radians(yaw), math.radians(pitch), pivot=pivot, device=like.device)
    return camera.expand(size, -1).to(like.dtype)


def _per_sample_mse(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (reconstruction - target).square().flatten(1).mean(dim=1)


def _with_delta_f(result: LossTermsResult | None, forward: RefinementForward, weight: float) -> LossTermsResult:
    """Add lambda_7 * mean((F* - F)^2) to the image terms (built only when its weight is > 0)."""
    values = dict(result.values) if result is not None else {}
    weights = dict(result.weights) if result is not None else {}
    total = result.total if result is not None else None
    if weight > 0:
        penalty = delta_feature_penalty(forward.alignment.refined_features, forward.features.features)
        values[DELTA_F_TERM], weights[DELTA_F_TERM] = penalty, weight
        total = weight * penalty if total is None else total + weight * penalty
    if total is None:
        raise ValueError("every stage-2 loss weight is 0: there is nothing to optimise")
    diagnostics = dict(result.diagnostics) if result is not None else {}
    return LossTermsResult(total=total, values=values, weights=weights, diagnostics=diagnostics)


def _check_loss_weights(weights: Mapping[str, float]) -> None:
    switched_on = [name for name in ENCODER_ONLY_TERMS if float(weights.get(name, 0.0)) > 0]
    if switched_on:
        raise ValueError(
            f"stage 2 does not support the loss term(s) {switched_on}: they act on the encoder's w+ only, "
            "and the encoder is frozen, so they cannot change the AFA (the authors' leftover discriminator "
            "loss in their stage-2 script only trained an unused D). Set their weights to 0 (docs/stage2.md)."
        )


def background_depth_options(
    generator: nn.Module, source: BackgroundDepthSource, bg_options: Mapping[str, Any]
) -> dict[str, Any]:
    """The ``bg`` term's D_avg: from the stats file, or estimated on the generator (as stage 1 does)."""
    from losses import background

    options = {key: value for key, value in bg_options.items() if key not in ("stats", "depth_average")}
    if source.stats:
        background.load_background_depth_stats(source.stats).check_matches(generator, source=source.stats)
        return {**options, "stats": source.stats}
    if options.get("target", "scalar") != "scalar":
        raise ValueError("a per-pixel D_avg needs a stats file (background_depth.stats)")
    masker = background.build_background_masker(options.get("mask_method", "geometric"), options.get("bisenet_weights"))
    estimate = background.estimate_background_depth(
        generator, masker, source.estimate_num_samples,
        background.GeneratorRecord(name="in-memory", checkpoint=None, checkpoint_sha256=None),
        batch_size=source.estimate_batch_size, seed=source.estimate_seed, device=generator.w_avg.device,
    )
    log.info(f"Background depth D_avg = {estimate.mean_depth:.4f} from {estimate.num_samples} canonical samples")
    return {**options, "depth_average": estimate.mean_depth}




def _default_adam(parameters: Any) -> torch.optim.Optimizer:
    from losses.optimizers import adam

    return adam(parameters, lr=2.5e-5)




__all__ = [
    "AFA_LOSS_WEIGHTS",
    "GOAEAFAStage",
    "GeneratorFingerprint",
    "LoadedEncoder",
    "RefinementForward",
    "RefinementPreview",
    "Stage1CheckpointError",
    "Stage2ValidationRecord",
    "load_stage1_encoder",
    "load_stage2_inverter",
]
