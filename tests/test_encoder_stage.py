"""GOAE stage 1 (lightning_modules.GOAEEncoderStage): loss wiring, the D step and lazy R1, progressive
stages, checkpoint contents, the experiment configs, and that the default run learns."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import DictConfig, open_dict

import lightning_modules.encoder_stage as encoder_stage_module
from conftest import CONFIG_DIR, compose_train_config
from datamodules import SyntheticDataset, collate_samples
from lightning_modules import GOAEEncoderStage
from losses import TermValue
from networks.eg3d.configs import generator_from_config
from networks.encoders import TINY_GOAE_ENCODER_CONFIG, GOAEncoder
from networks.latent_discriminator import LatentCodesDiscriminator
from train import train

TINY_STEP_OVERRIDES = (
    "trainer.log_every_n_steps=1",
    "data.splits.train.length=8", "data.splits.val.length=2", "stage.background_depth.estimate_num_samples=2",
)


@pytest.fixture(scope="module")
def generator() -> torch.nn.Module:
    return generator_from_config("tiny", random_init=True, seed=0)


@pytest.fixture(scope="module")
def batch(generator: torch.nn.Module) -> Any:
    dataset = SyntheticDataset(2, split="train", generator=generator, image_resolution=64, full_resolution=64)
    return collate_samples([dataset[0], dataset[1]])


def make_stage(generator: torch.nn.Module, **overrides: Any) -> GOAEEncoderStage:
    arguments: dict[str, Any] = {
        "encoder": lambda: GOAEncoder(TINY_GOAE_ENCODER_CONFIG),
        "discriminator": lambda: LatentCodesDiscriminator(512, 4),
        "loss_weights": {"l2": 1.0, "lpips": 0.8, "id": 0.0, "adv": 0.05, "bg": 5.0, "delta_w": 0.001},
        "loss_options": {"lpips": {"backbone_weights": "random"}, "bg": {"mask_method": "geometric"}},
        "background_depth": {"estimate_num_samples": 2},
        "stage_boundaries": (2, 4, 6),
    }
    arguments.update(overrides)
    return GOAEEncoderStage(generator, **arguments)


class OfflineStep:
    """Runs training_step without a Trainer: optimisers, backward, logging and global_step stubbed."""

    def __init__(self, stage: GOAEEncoderStage, monkeypatch: pytest.MonkeyPatch) -> None:
        self.step = 0
        self.logged: dict[str, Any] = {}
        optimizers = stage.configure_optimizers()
        monkeypatch.setattr(GOAEEncoderStage, "global_step", property(lambda _: self.step))
        monkeypatch.setattr(stage, "optimizers", lambda: optimizers)
        monkeypatch.setattr(stage, "manual_backward", lambda loss: loss.backward())
        monkeypatch.setattr(stage, "log_dict", lambda values, **_: self.logged.update(values))
        monkeypatch.setattr(stage, "log", lambda name, value, **_: self.logged.update({name: value}))
        self.stage = stage

    def run(self, batch: Any, step: int) -> dict[str, Any]:
        self.step = step
        self.logged = {}
        self.stage.training_step(batch, 0)
        return self.logged


def snapshot(module: torch.nn.Module) -> list[torch.Tensor]:
    return [parameter.detach().clone() for parameter in module.parameters()]


def changed(module: torch.nn.Module, before: list[torch.Tensor]) -> bool:
    return any(not torch.equal(now, then) for now, then in zip(module.parameters(), before))


# ------------------------------------------------------------------------------------------ losses
def test_total_is_the_weighted_sum_of_every_term(generator, batch, monkeypatch) -> None:
    stage = make_stage(generator)
    assert set(stage.loss.terms) == {"l2", "lpips", "adv", "bg", "delta_w"}
    fixed = {"l2": 0.5, "lpips": 0.25, "adv": 2.0, "bg": 0.125, "delta_w": 8.0}
    seen_inputs = {}
    for name, value in fixed.items():
        def fake_forward(inputs, name=name, value=value):
            seen_inputs[name] = inputs
            return TermValue(torch.tensor(value))

        monkeypatch.setattr(stage.loss.terms[name], "forward", fake_forward)
    result = stage.encoder_losses(batch, stage=1, rng=torch.Generator().manual_seed(0))
    expected = sum(stage.loss_weights[name] * value for name, value in fixed.items())
    assert result.total.item() == pytest.approx(expected)
    assert result.weights == {name: stage.loss_weights[name] for name in fixed}
    inputs = seen_inputs["l2"]
    assert inputs.reconstruction.shape == inputs.target.shape == batch.image.shape
    assert torch.equal(inputs.target, batch.image)
    assert inputs.active_rows == [0, 1, 2, 3] and inputs.judged_rows == [0, 1, 2, 3]  # stage 1: w0 + coarse
    assert inputs.latent_discriminator is stage.discriminator
    assert inputs.front_render.depth.shape[-1] == generator.neural_rendering_resolution


def test_weight_zero_means_the_term_and_its_network_are_never_built(generator, monkeypatch) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("a switched-off network was built")

    monkeypatch.setattr("losses.composite.LPIPSLoss", forbidden)
    monkeypatch.setattr("losses.composite.IdentityLoss.from_weights", forbidden)
    monkeypatch.setattr(encoder_stage_module, "sample_canonical_latents", forbidden)
    stage = make_stage(generator, loss_weights={"lpips": 0.0, "id": 0.0, "adv": 0.0, "bg": 0.0},
                       discriminator=forbidden)
    assert set(stage.loss.terms) == {"l2", "delta_w"}
    assert stage.discriminator is None and len(stage.configure_optimizers()) == 1
    assert not any(key.startswith(("discriminator.", "loss.")) for key in stage.state_dict())


def test_image_losses_pool_the_render_to_the_loss_resolution() -> None:
    images = torch.arange(16.0).reshape(1, 1, 4, 4)
    pooled = encoder_stage_module.pool_to_resolution(images, 2)
    assert torch.equal(pooled, torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))


# ------------------------------------------------------------------------------------------ D step, R1
def test_d_step_trains_only_d_and_r1_runs_every_d_reg_every_steps(generator, batch, monkeypatch) -> None:
    stage = make_stage(generator, discriminator_settings={"d_reg_every": 3, "r1_gamma": 10.0})
    r1_steps = []
    real_r1 = encoder_stage_module.lazy_r1_regularization

    def counting_r1(*args, **kwargs):
        r1_steps.append(runner.step)
        return real_r1(*args, **kwargs)

    monkeypatch.setattr(encoder_stage_module, "lazy_r1_regularization", counting_r1)
    runner = OfflineStep(stage, monkeypatch)
    encoder_optimizer, discriminator_optimizer = stage.configure_optimizers()
    fake = stage.encode(batch.image, 0).ws.detach()
    encoder_before, d_before = snapshot(stage.encoder), snapshot(stage.discriminator)
    for step in range(7):
        runner.step = step
        logs = stage.discriminator_step(discriminator_optimizer, fake, 0, step, torch.Generator().manual_seed(step))
        assert ("train/d_r1_penalty" in logs) == (step % 3 == 0)
    assert r1_steps == [0, 3, 6]
    assert changed(stage.discriminator, d_before) and not changed(stage.encoder, encoder_before)
    assert not any(parameter.requires_grad for parameter in stage.discriminator.parameters())  # frozen again
    assert {"train/d_loss", "train/d_real_score", "train/d_fake_score"} <= set(logs)


def test_encoder_step_trains_only_the_encoder_with_d_frozen(generator, batch, monkeypatch) -> None:
    stage = make_stage(generator)
    runner = OfflineStep(stage, monkeypatch)
    monkeypatch.setattr(stage, "discriminator_step", lambda *args, **kwargs: {})  # isolate the encoder step
    encoder_before, d_before = snapshot(stage.encoder), snapshot(stage.discriminator)
    logs = runner.run(batch, step=0)
    assert changed(stage.encoder, encoder_before) and not changed(stage.discriminator, d_before)
    assert all(parameter.grad is None for parameter in stage.discriminator.parameters())
    # stage 0: the unopened heads keep grad None (the authors' optimiser never saw them)
    assert all(parameter.grad is None for parameter in stage.encoder.inactive_head_parameters(0))
    for name in ("train/loss", "train/loss_l2", "train/loss_lpips", "train/loss_adv", "train/loss_bg",
                 "train/loss_delta_w", "train/progressive_stage", "train/lr_encoder"):
        assert name in logs, name


def test_progressive_stage_follows_the_global_step(generator) -> None:
    stage = make_stage(generator, loss_weights={"id": 0.0, "adv": 0.0, "bg": 0.0, "lpips": 0.0})
    assert [stage.progressive_stage(step) for step in (0, 1, 2, 3, 4, 5, 6, 100)] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert stage.judged_rows(2) == list(range(7))
    assert make_stage(generator, discriminator_settings={"rows": "w0_only"}).judged_rows(3) == [0]


def test_per_step_seeds_depend_on_seed_step_and_rank() -> None:
    seeds = {encoder_stage_module.step_seed(seed, step, rank) for seed in (0, 1) for step in (0, 1) for rank in (0, 1)}
    assert len(seeds) == 8
    assert encoder_stage_module.step_seed(3, 7, 1) == encoder_stage_module.step_seed(3, 7, 1)


# ------------------------------------------------------------------------------------------ configs
@pytest.mark.parametrize("experiment", sorted(
    str(path.relative_to(CONFIG_DIR / "experiment").with_suffix("")) for path in (CONFIG_DIR / "experiment").rglob("*.yaml")
))
def test_every_experiment_file_composes(experiment: str) -> None:
    cfg = compose_train_config([f"experiment={experiment}"])
    assert cfg.stage._target_


@pytest.mark.parametrize(("row", "adv", "bg"), [
    ("no_d_no_bg", 0.0, 0.0), ("no_d_with_bg", 0.0, 5.0), ("with_d_no_bg", 0.05, 0.0), ("full", 0.05, 5.0),
])
def test_ablation_rows_of_table_2_switch_d_and_bg(row: str, adv: float, bg: float) -> None:
    weights = compose_train_config([f"experiment=ablation/stage1_{row}"]).stage.loss_weights
    assert (weights.adv, weights.bg) == (adv, bg)
    assert (weights.l2, weights.lpips, weights.id, weights.delta_w) == (1.0, 0.8, 0.25, 0.001)


def test_paper_defaults_and_cats_without_identity() -> None:
    stage = compose_train_config(["experiment=goae_ffhq_stage1"]).stage
    assert dict(stage.loss_weights) == {"l2": 1.0, "lpips": 0.8, "id": 0.25, "adv": 0.05, "bg": 5.0, "delta_w": 0.001,
                                        "latent": 0.0}  # latent: not a GOAE term, off in every paper config
    assert stage.encoder_optimizer._target_ == "losses.optimizers.ranger" and stage.encoder_optimizer.lr == 1e-4
    assert stage.discriminator_optimizer.lr == 2e-5 and stage.discriminator_settings.r1_gamma == 10.0
    assert list(stage.stage_boundaries) == [10000, 20000, 30000]
    assert compose_train_config(["experiment=goae_afhq_stage1"]).stage.loss_weights.id == 0.0


# ------------------------------------------------------------------------------------------ end to end
def _tiny_run(make_train_config: Callable[..., DictConfig], *overrides: str) -> DictConfig:
    cfg = make_train_config(*TINY_STEP_OVERRIDES, *overrides)
    with open_dict(cfg):
        cfg.callbacks.pop("progress_bar")
        cfg.trainer.enable_progress_bar = False
        cfg.trainer.enable_model_summary = False
    return cfg


def test_checkpoint_holds_encoder_d_and_optimisers_but_no_frozen_network(
    make_train_config: Callable[..., DictConfig],
) -> None:
    cfg = _tiny_run(make_train_config, "trainer.max_steps=1", "callbacks.model_checkpoint.every_n_train_steps=1",
                    "trainer.num_sanity_val_steps=0", "+trainer.limit_val_batches=0", "stage.loss_weights.lpips=0.8",
                    "stage.loss_options.lpips.backbone_weights=random")
    train(cfg)
    checkpoint = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=False)
    keys = list(checkpoint["state_dict"])
    assert any(key.startswith("encoder.backbone.") for key in keys)
    assert any(key.startswith("discriminator.mlp.") for key in keys)
    assert all(key.startswith(("encoder.", "discriminator.")) or key == "reached_stage" for key in keys), keys
    assert len(checkpoint["optimizer_states"]) == 2 and checkpoint["global_step"] == 1
    assert checkpoint["optimizer_states"][0]["state"], "Ranger state missing"
    images = list((Path(cfg.paths.output_dir) / "images").glob("step_*.png"))
    assert images, "no image grid was written"


def _train_losses(run_dir: Path) -> dict[int, float]:
    losses: dict[int, float] = {}
    for metrics in sorted(run_dir.glob("csv/version_*/metrics.csv")):
        for row in csv.DictReader(metrics.open()):
            if row.get("train/loss"):
                losses[int(row["step"])] = float(row["train/loss"])
    return losses


@pytest.mark.slow
def test_resume_gives_the_same_losses_as_an_uninterrupted_run(
    make_train_config: Callable[..., DictConfig], tmp_path: Path
) -> None:
    common = ("trainer.num_sanity_val_steps=0", "+trainer.limit_val_batches=0",
              "callbacks.model_checkpoint.every_n_train_steps=2", "stage.discriminator_settings.d_reg_every=2",
              "stage.stage_boundaries=[1,2,3]")
    straight = _tiny_run(make_train_config, "trainer.max_steps=4", *common)
    with open_dict(straight):
        straight.paths.output_dir = str(tmp_path / "straight")
    train(straight)

    first = _tiny_run(make_train_config, "trainer.max_steps=2", *common)
    train(first)
    resumed = _tiny_run(make_train_config, "trainer.max_steps=4", "ckpt_path=last", *common)
    train(resumed)

    expected, got = _train_losses(tmp_path / "straight"), _train_losses(Path(first.paths.output_dir))
    assert sorted(expected) == sorted(got) and len(expected) == 4
    for step in expected:
        assert got[step] == pytest.approx(expected[step], abs=1e-6, rel=1e-6), step


@pytest.mark.slow
def test_default_run_learns(make_train_config: Callable[..., DictConfig]) -> None:
    """A short version of `python train.py`: the training L2 falls, and on the fixed val split both the
    reconstruction error and the latent error against the ground-truth w+ fall below the sanity-check
    values measured before the first step."""
    cfg = _tiny_run(make_train_config, "trainer.max_steps=16", "trainer.val_check_interval=16",
                    "data.splits.train.length=64", "data.splits.val.length=4")
    summary = train(cfg)
    module_history = summary["metrics"]
    assert "val/mse" in module_history and "val/latent_mse" in module_history
    rows = []
    for metrics in Path(cfg.paths.output_dir).glob("csv/version_*/metrics.csv"):
        rows += [row for row in csv.DictReader(metrics.open()) if row.get("train/loss_l2")]
    l2 = [float(row["train/loss_l2"]) for row in sorted(rows, key=lambda row: int(row["step"]))]
    assert all(row["train/loss_latent"] for row in rows)  # the default's synthetic latent term is built and logged
    assert sum(l2[-4:]) / 4 < 0.8 * sum(l2[:4]) / 4, l2  # noisy (4 different images a step): loose
    curve = summary["learning_curve"]
    assert curve[0].step == 0 and curve[-1].step == 16, curve
    assert curve[-1].mse < 0.7 * curve[0].mse, curve
    assert curve[-1].latent_mse < 0.85 * curve[0].latent_mse, curve


def test_latent_term_on_real_training_data_fails_before_the_first_step(generator: torch.nn.Module) -> None:
    import types

    from torch.utils.data import TensorDataset

    weights = {"l2": 1.0, "lpips": 0.0, "id": 0.0, "adv": 0.0, "bg": 0.0, "delta_w": 0.0, "latent": 10.0}
    stage = make_stage(generator, loss_weights=weights)
    real = types.SimpleNamespace(name="ffhq", datasets={"train": TensorDataset(torch.zeros(2, 3))})
    stage.trainer = types.SimpleNamespace(datamodule=real)  # type: ignore[assignment]
    with pytest.raises(ValueError, match="latent=10.0 needs ground-truth w\\+.*'ffhq' is a TensorDataset"):
        stage.on_fit_start()
    synthetic = types.SimpleNamespace(name="synthetic", datasets={
        "train": SyntheticDataset(1, split="train", generator=generator, image_resolution=64, full_resolution=64)})
    stage.trainer = types.SimpleNamespace(datamodule=synthetic)  # type: ignore[assignment]
    stage.on_fit_start()  # synthetic data carry ws_true: no error
