"""GOAE stage 2 (lightning_modules.afa_stage.GOAEAFAStage): loading and checking the stage-1 encoder,
freezing, the loss wiring (Delta F), checkpoint contents and standalone loading, invert(), the configs
and ablations, and that a short run makes the refined reconstruction better than the w+ one."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf, open_dict

import lightning_modules.afa_stage as afa_stage_module
from conftest import compose_train_config, shrink_into
from datamodules import SyntheticDataset, collate_samples
from lightning_modules.afa_stage import (
    GeneratorFingerprint,
    GOAEAFAStage,
    Stage1CheckpointError,
    load_stage1_encoder,
    load_stage2_inverter,
)
from networks.afa import TINY_AFA_CONFIG, AdaptiveFeatureAlignment, PlainCNNAlignment, resume_state
from networks.eg3d.configs import generator_from_config
from networks.encoders import FINAL_STAGE, TINY_GOAE_ENCODER_CONFIG, GOAEncoder
from networks.occlusion_mix import OcclusionMixConfig, occlusion_aware_mix
from train import train

RESIDUAL_AFA = dataclasses.replace(TINY_AFA_CONFIG, modulation="residual")
# Small in-process runs of train.py (2 CPU cores shared).
TINY_RUN_OVERRIDES = (
    "trainer.log_every_n_steps=1", "trainer.num_sanity_val_steps=0", "trainer.val_check_interval=2", "~callbacks.progress_bar",
    "data.splits.train.length=4", "data.splits.val.length=2", "data.loaders.train.batch_size_per_device=2",
    "stage.background_depth.estimate_num_samples=2", "callbacks.model_checkpoint.every_n_train_steps=1",
    "~callbacks.inversion_images",
)


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def generator() -> torch.nn.Module:
    return generator_from_config("tiny", random_init=True, seed=0)


@pytest.fixture(scope="module")
def batch(generator: torch.nn.Module) -> Any:
    dataset = SyntheticDataset(2, split="val", generator=generator, image_resolution=64, full_resolution=64)
    return collate_samples([dataset[0], dataset[1]])


def tiny_encoder(seed: int = 0) -> GOAEncoder:
    torch.manual_seed(seed)
    return GOAEncoder(TINY_GOAE_ENCODER_CONFIG)


def write_stage1_checkpoint(
    path: Path, generator: torch.nn.Module, encoder: GOAEncoder, stage_name: str | None = "encoder",
    fingerprint: GeneratorFingerprint | None = None,
) -> Path:
    """A checkpoint in the stage-1 module's format: Lightning keys, the encoder under `encoder.`."""
    checkpoint: dict[str, Any] = {
        "state_dict": {f"encoder.{key}": value for key, value in encoder.state_dict().items()},
        "pytorch-lightning_version": "2.6.0",
        "global_step": 1,
    }
    if stage_name is not None:
        stage = {"name": stage_name, "stage_boundaries": [100, 200, 300]}
        if fingerprint is not None:
            stage["generator"] = fingerprint.as_dict()
        checkpoint["goae_stage"] = stage
    torch.save(checkpoint, path)
    return path


@pytest.fixture(scope="module")
def stage1_checkpoint(generator: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("stage1") / "last.ckpt"
    return write_stage1_checkpoint(path, generator, tiny_encoder(), fingerprint=GeneratorFingerprint.of(generator))


def make_stage(generator: torch.nn.Module, init_from: Path | None, **overrides: Any) -> GOAEAFAStage:
    arguments: dict[str, Any] = {
        "encoder": lambda: GOAEncoder(TINY_GOAE_ENCODER_CONFIG),
        "afa": lambda: AdaptiveFeatureAlignment(RESIDUAL_AFA),
        "occlusion_mix": {"variant": "paper_binary_triplane", "closing_kernel_size": 17},
        "loss_weights": {"l2": 1.0, "lpips": 0.0, "id": 0.0, "bg": 0.0, "delta_f": 1e-4},
        "init_from": str(init_from) if init_from else None,
    }
    arguments.update(overrides)
    return GOAEAFAStage(generator, **arguments)


def snapshot(module: torch.nn.Module) -> list[torch.Tensor]:
    return [tensor.detach().clone() for tensor in module.state_dict().values()]


def unchanged(module: torch.nn.Module, before: list[torch.Tensor]) -> bool:
    return all(torch.equal(now, then) for now, then in zip(module.state_dict().values(), before))


def train_steps(stage: GOAEAFAStage, batch: Any, steps: int, lr: float = 1e-3) -> None:
    """The training step's computation without a Trainer (same seeding, losses and parameters)."""
    optimizer = torch.optim.Adam(stage.afa.parameters(), lr=lr)
    stage.train()
    for step in range(steps):
        torch.manual_seed(step)
        rng = torch.Generator().manual_seed(step)
        draws = stage.generator.sample_draws(batch.image.shape[0], generator=rng)
        forward = stage.refine(batch.image, batch.image_full, batch.camera, draws)
        result = stage.stage2_losses(batch, forward, draws, rng)
        optimizer.zero_grad(set_to_none=True)
        result.total.backward()
        optimizer.step()
    stage.eval()


def reconstruction_errors(stage: GOAEAFAStage, batch: Any) -> tuple[float, float]:
    """(refined, w+) MSE at the input view with deterministic draws (what validation logs)."""
    with torch.no_grad():
        draws = stage._deterministic_draws(batch.image.shape[0])
        forward = stage.refine(batch.image, batch.image_full, batch.camera, draws)
        refined = stage.input_view_render(forward, batch.camera, draws).image
    return float((refined - batch.image).square().mean()), float((forward.wplus_render.image - batch.image).square().mean())


# ---------------------------------------------------------------------------------------------- init_from
def test_init_from_a_missing_file_says_what_to_give(generator, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="stage-1 checkpoint"):
        make_stage(generator, tmp_path / "nope.ckpt")


@pytest.mark.parametrize("stage_name, message", [("afa", "ckpt_path"), ("preview", "'preview'"), (None, "without GOAE")])
def test_init_from_another_stage_is_refused(generator, tmp_path, stage_name, message) -> None:
    path = write_stage1_checkpoint(tmp_path / "other.ckpt", generator, tiny_encoder(), stage_name=stage_name)
    with pytest.raises(Stage1CheckpointError, match=message):
        make_stage(generator, path)


def test_init_from_another_generator_is_refused(generator, tmp_path) -> None:
    other = generator_from_config("tiny", random_init=True, seed=1)
    path = write_stage1_checkpoint(tmp_path / "other_g.ckpt", generator, tiny_encoder(),
                                   fingerprint=GeneratorFingerprint.of(other))
    with pytest.raises(Stage1CheckpointError, match="weights_sha256"):
        make_stage(generator, path)


def test_without_fingerprint_the_stage1_run_config_is_compared(generator, tmp_path) -> None:
    run_dir = tmp_path / "stage1_run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / ".hydra").mkdir()
    recorded = {"name": "tiny", "checkpoint": None, "random_init": True, "seed": 0}
    OmegaConf.save(OmegaConf.create({"generator": {"_target_": "x", **recorded}}), run_dir / ".hydra" / "config.yaml")
    path = write_stage1_checkpoint(run_dir / "checkpoints" / "last.ckpt", generator, tiny_encoder())
    loaded = load_stage1_encoder(path, tiny_encoder, generator, generator_source=recorded)
    assert "matches" in loaded.generator_check
    with pytest.raises(Stage1CheckpointError, match="seed: 0 .* != 3"):
        load_stage1_encoder(path, tiny_encoder, generator, generator_source={**recorded, "seed": 3})


def test_encoder_of_another_architecture_is_refused(generator, stage1_checkpoint) -> None:
    wider = dataclasses.replace(TINY_GOAE_ENCODER_CONFIG, embed_dim=32)
    with pytest.raises(Stage1CheckpointError, match="stage.encoder"):
        make_stage(generator, stage1_checkpoint, encoder=lambda: GOAEncoder(wider))


def test_a_released_encoder_file_goes_through_load_goae_encoder(generator, tmp_path, monkeypatch) -> None:
    released = tiny_encoder(seed=5)
    calls = []

    def fake_load_goae_encoder(path, config):
        calls.append((Path(path), config))
        return released

    monkeypatch.setattr(afa_stage_module, "load_goae_encoder", fake_load_goae_encoder)
    path = tmp_path / "encoder_FFHQ.pt"
    torch.save({"swin_model.patch_embed.proj.weight": torch.zeros(1)}, path)  # a plain state dict
    stage = make_stage(generator, path)
    assert calls == [(path, TINY_GOAE_ENCODER_CONFIG)]
    assert stage.encoder is released and stage.encoder_origin == "released_goae"


def test_stage1_checkpoint_with_python_objects_in_hparams_is_read_without_running_them(
    generator, tmp_path
) -> None:
    """The stage-1 module run by train.py stores Hydra partials / OmegaConf nodes in hyper_parameters."""
    path = write_stage1_checkpoint(tmp_path / "s1.ckpt", generator, tiny_encoder(),
                                   fingerprint=GeneratorFingerprint.of(generator))
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["hyper_parameters"] = {"loss_weights": OmegaConf.create({"l2": 1.0}),
                                      "optimizer": functools.partial(explode, lr=1.0)}
    torch.save(checkpoint, path)
    loaded = load_stage1_encoder(path, lambda: tiny_encoder(seed=9), generator)
    expected = tiny_encoder().state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in loaded.encoder.state_dict().items())


def explode(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("code named by the checkpoint was run")


# ---------------------------------------------------------------------------------------------- freezing, losses
def test_encoder_is_frozen_and_only_the_afa_trains(generator, stage1_checkpoint, batch) -> None:
    stage = make_stage(generator, stage1_checkpoint)
    encoder_before, generator_before, afa_before = snapshot(stage.encoder), snapshot(generator), snapshot(stage.afa)
    assert not any(parameter.requires_grad for parameter in stage.encoder.parameters())
    assert all(parameter.requires_grad for parameter in stage.afa.parameters())
    assert list(stage.configure_optimizers().param_groups[0]["params"]) == list(stage.afa.parameters())
    train_steps(stage, batch, steps=2)
    assert all(parameter.grad is None for parameter in stage.encoder.parameters())
    assert unchanged(stage.encoder, encoder_before) and unchanged(generator, generator_before)
    assert not unchanged(stage.afa, afa_before)
    stage.train()
    assert not stage.encoder.training and not stage.generator.training and stage.afa.training


def test_delta_f_term_is_wired_with_its_weight(generator, stage1_checkpoint, batch) -> None:
    stage = make_stage(generator, stage1_checkpoint, loss_weights={"l2": 1.0, "lpips": 0.0, "id": 0.0, "bg": 0.0,
                                                                    "delta_f": 0.5})
    draws = stage._deterministic_draws(2)
    forward = stage.refine(batch.image, batch.image_full, batch.camera, draws)
    with torch.no_grad():  # move F* away from F so the penalty is not zero
        forward.alignment.refined_features.add_(0.25)
    result = stage.stage2_losses(batch, forward, draws, None)
    penalty = (forward.alignment.refined_features - forward.features.features).square().mean()
    assert result.weights == {"l2": 1.0, "delta_f": 0.5}
    assert torch.allclose(result.values["delta_f"], penalty)
    assert torch.allclose(result.total, result.values["l2"] + 0.5 * penalty)
    switched_off = make_stage(generator, stage1_checkpoint, loss_weights={"lpips": 0.0, "id": 0.0, "bg": 0.0,
                                                                          "delta_f": 0.0})
    assert "delta_f" not in switched_off.stage2_losses(batch, forward, draws, None).values


@pytest.mark.parametrize("term", ["adv", "delta_w"])
def test_terms_of_the_frozen_encoder_are_refused(generator, stage1_checkpoint, term) -> None:
    with pytest.raises(ValueError, match="frozen"):
        make_stage(generator, stage1_checkpoint, loss_weights={"lpips": 0.0, "id": 0.0, "bg": 0.0, term: 0.1})


def test_background_depth_term_reads_the_refined_front_view(generator, stage1_checkpoint, batch) -> None:
    stage = make_stage(generator, stage1_checkpoint, loss_weights={"lpips": 0.0, "id": 0.0, "bg": 5.0},
                       background_depth={"estimate_num_samples": 2})
    draws = stage._deterministic_draws(2)
    forward = stage.refine(batch.image, batch.image_full, batch.camera, draws)
    result = stage.stage2_losses(batch, forward, draws, torch.Generator().manual_seed(0))
    assert set(result.values) == {"l2", "bg", "delta_f"} and result.values["bg"].requires_grad


# ---------------------------------------------------------------------------------------------- invert
def test_invert_returns_the_refined_planes_for_the_input_view_and_the_mix_for_novel_views(
    generator, stage1_checkpoint, batch
) -> None:
    stage = make_stage(generator, stage1_checkpoint).eval()
    result = stage.invert(batch.image, batch.image_full, batch.camera)
    with torch.no_grad():
        ws = stage.encoder(batch.image, generator.w_avg, FINAL_STAGE).ws
        state = generator.synthesize_features(ws, "b32")
        wplus_planes = generator.synthesize_planes_from_features(ws, state)
        draws = stage._deterministic_draws(2)
        wplus_image = generator.render_planes(wplus_planes, ws, batch.camera, draws=draws).image
        alignment = stage.afa(batch.image_full, wplus_image, state.features)
        refined_planes = generator.synthesize_planes_from_features(ws, resume_state(state, alignment, stage.afa_config))
        refined_render = generator.render_planes(refined_planes, ws, batch.camera, draws=draws)
        mix = occlusion_aware_mix(refined_planes, wplus_planes, refined_render, 1.0, generator.renderer.plane_projection,
                                  stage.mix_config)
    assert torch.equal(result.ws, ws)
    assert torch.allclose(result.input_view_planes, refined_planes)
    assert torch.allclose(result.novel_view_planes, mix.novel_view_planes)
    assert torch.equal(result.visibility_masks, mix.masks)
    assert torch.allclose(result.refined_features.features, alignment.refined_features)
    assert 0 < float(result.visibility_masks[:, 0].mean()) < 1  # the tiny mix marks part of the XY plane


def test_mixing_disabled_makes_novel_views_use_the_refined_planes(generator, stage1_checkpoint, batch) -> None:
    stage = make_stage(generator, stage1_checkpoint, occlusion_mix={"variant": "disabled"}).eval()
    result = stage.invert(batch.image, batch.image_full, batch.camera)
    assert torch.equal(result.novel_view_planes, result.input_view_planes)


# ---------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("experiment, variant, mix_variant, alignment_type", [
    ("goae_ffhq_stage2", "afa", "released_xy_soft", AdaptiveFeatureAlignment),
    ("ablation/stage2_conv", "plain_cnn", "released_xy_soft", PlainCNNAlignment),
    ("ablation/stage2_no_occlusion", "afa", "disabled", AdaptiveFeatureAlignment),
])
def test_stage2_experiments_compose_and_build(experiment, variant, mix_variant, alignment_type) -> None:
    from hydra.utils import instantiate

    cfg = compose_train_config([f"experiment={experiment}", "generator.checkpoint=g.pkl", "init_from=s1.ckpt"],
                               return_hydra_config=False)
    assert cfg.stage._target_ == "lightning_modules.afa_stage.GOAEAFAStage"
    assert cfg.stage.afa.variant == variant and cfg.stage.occlusion_mix.variant == mix_variant
    assert cfg.stage.optimizer.lr == 2.5e-5 and cfg.stage.loss_weights.delta_f == 1e-4
    assert cfg.callbacks.inversion_images._target_ == "callbacks.afa_images.AFAImageLogger"
    alignment = instantiate(cfg.stage.afa)()  # full size: the released widths
    assert type(alignment) is alignment_type and alignment.config.feature_channels == 512
    OcclusionMixConfig(**cfg.stage.occlusion_mix)


def test_tiny_stage_encoder_is_stage1_tiny_encoder() -> None:
    """stage=afa_tiny must rebuild the encoder of the default stage-1 run (stage=encoder_tiny)."""
    afa_tiny = compose_train_config(["stage=afa_tiny"], return_hydra_config=False).stage.encoder
    encoder_tiny = compose_train_config(["stage=encoder_tiny"], return_hydra_config=False).stage.encoder
    weights_keys = ("goae_checkpoint", "backbone_weights")  # weights come from init_from in stage 2
    architecture = [{key: value for key, value in OmegaConf.to_container(node).items() if key not in weights_keys}
                    for node in (afa_tiny, encoder_tiny)]
    assert architecture[0] == architecture[1]


# ---------------------------------------------------------------------------------------------- train.py runs
@pytest.fixture(scope="module")
def stage2_run(stage1_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    run_dir = tmp_path_factory.mktemp("stage2") / "run"
    cfg = shrink_into(compose_train_config(["stage=afa_tiny", f"init_from={stage1_checkpoint}", "trainer.max_steps=2",
                                            *TINY_RUN_OVERRIDES]), run_dir)
    with open_dict(cfg):
        cfg.logger = None
    return train(cfg)


@pytest.mark.slow
def test_checkpoint_holds_afa_encoder_and_optimiser_but_no_generator(stage2_run, generator, batch) -> None:
    path = Path(stage2_run["files"]["checkpoints"]) / "last.ckpt"
    checkpoint = torch.load(path, weights_only=True)  # plain containers only
    keys = checkpoint["state_dict"].keys()
    assert any(key.startswith("afa.") for key in keys) and any(key.startswith("encoder.") for key in keys)
    assert all(key.startswith(("afa.", "encoder.")) or key == "encoder_stage" for key in keys), sorted(keys)[:5]
    assert len(checkpoint["optimizer_states"]) == 1 and checkpoint["global_step"] == 2
    stage = checkpoint["goae_stage"]
    assert stage["name"] == "afa" and stage["generator"] == GeneratorFingerprint.of(generator).as_dict()
    assert stage["alignment_variant"] == "afa" and stage["occlusion_mix"]["variant"] == "paper_binary_triplane"
    inverter = load_stage2_inverter(path, generator)
    result = inverter.invert(batch.image, batch.image_full, batch.camera)
    assert result.novel_view_planes.shape == result.input_view_planes.shape
    assert torch.equal(inverter.afa.state_dict()["gamma_output.weight"], checkpoint["state_dict"]["afa.gamma_output.weight"])
    assert {"val/mse", "val/mse_wplus"} <= set(stage2_run["metrics"])


@pytest.mark.slow
def test_resume_continues_with_the_same_steps(stage2_run, stage1_checkpoint, tmp_path) -> None:
    """2 steps, then resume for 1 more = 3 steps in one go (per-step seeds; DDP-free CPU run)."""
    first = Path(stage2_run["files"]["checkpoints"]) / "step_0000002.ckpt"
    outputs = {}
    for name, extra in {"resumed": [f"ckpt_path={first}"], "straight": []}.items():
        cfg = shrink_into(compose_train_config(["stage=afa_tiny", f"init_from={stage1_checkpoint}",
                                                "trainer.max_steps=3", *TINY_RUN_OVERRIDES, *extra]), tmp_path / name)
        with open_dict(cfg):
            cfg.logger = None
        outputs[name] = torch.load(Path(train(cfg)["files"]["checkpoints"]) / "last.ckpt", weights_only=True)
    resumed, straight = outputs["resumed"]["state_dict"], outputs["straight"]["state_dict"]
    assert all(torch.equal(resumed[key], straight[key]) for key in straight if key.startswith("afa."))


@pytest.mark.slow
def test_a_short_run_beats_the_wplus_reconstruction(generator, stage1_checkpoint, batch) -> None:
    stage = make_stage(generator, stage1_checkpoint)
    refined_before, wplus = reconstruction_errors(stage, batch)
    assert refined_before == pytest.approx(wplus, rel=1e-5)  # residual FiLM: F* = F at init
    train_steps(stage, batch, steps=8)
    refined_after, wplus_after = reconstruction_errors(stage, batch)
    assert wplus_after == wplus
    assert refined_after < 0.9 * wplus, (refined_after, wplus)
