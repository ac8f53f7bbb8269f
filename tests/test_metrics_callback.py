"""The validation-metrics callback: correct values (against the metric objects used directly), the
interval, logging to every logger, the wandb per-sample table, nothing in the module's checkpoint."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from callbacks.metrics import ValidationMetrics
from datamodules import GeneratorSource, InversionDataModule, SyntheticSplit, collate_samples
from evaluation import deterministic_draws
from evaluation_fakes import FakeInverterStage
from metrics import GeometryError, MeanSquaredError, PeakSignalNoiseRatio, StructuralSimilarity

VAL_LENGTH = 5


class CountingInverter(FakeInverterStage):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.inverted = 0

    def invert(self, image: torch.Tensor, image_full: torch.Tensor, camera: torch.Tensor) -> Any:
        self.inverted += image.shape[0]
        return super().invert(image, image_full, camera)


class RecordingWandbLogger(WandbLogger):
    """A WandbLogger that never starts a wandb run: it records the tables it is given."""

    def __init__(self) -> None:
        super().__init__(offline=True, project="test")
        self.tables: list[dict[str, Any]] = []

    def log_table(self, key: str, columns: list[str] | None = None, data: list[list[Any]] | None = None,
                  dataframe: Any = None, step: int | None = None) -> None:
        self.tables.append({"key": key, "columns": columns, "data": data, "step": step})

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        return None

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        return None

    def finalize(self, status: str) -> None:
        return None


@pytest.fixture(scope="module")
def generator() -> torch.nn.Module:
    return GeneratorSource("tiny").build()


def make_datamodule() -> InversionDataModule:
    return InversionDataModule(
        splits={"val": SyntheticSplit(length=VAL_LENGTH, image_resolution=64, full_resolution=64)},
        loaders={"val": {"batch_size_per_device": 2}}, generator=GeneratorSource("tiny"), name="synthetic_test",
    )


def make_trainer(tmp_path: Path, callback: ValidationMetrics, loggers: list[Any]) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, callbacks=[callback], logger=loggers or False,
                     enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                     default_root_dir=str(tmp_path))


@torch.no_grad()
def direct_values(stage: FakeInverterStage, datamodule: InversionDataModule) -> dict[str, float]:
    """The same metrics used directly on every validation sample (one batch, no callback)."""
    datamodule.setup("validate")
    dataset = datamodule.datasets["val"]
    batch = collate_samples([dataset[index] for index in range(len(dataset))])
    result = stage.invert(batch.image, batch.image_full, batch.camera)
    render = result.render_input_view(stage.generator, batch.camera,
                                      deterministic_draws(stage.generator, len(batch), torch.device("cpu")))
    values = {}
    for name, metric in (("mse", MeanSquaredError()), ("psnr", PeakSignalNoiseRatio()),
                         ("ssim", StructuralSimilarity())):
        metric.update(render.image, batch.image_full)
        values[name] = float(metric.compute())
    geometry = GeometryError()
    geometry.update(render.image_depth, batch.depth_true)
    values["geometry"] = float(geometry.compute())
    return values


@pytest.mark.slow
def test_logged_values_equal_the_metrics_used_directly(tmp_path: Path, generator: torch.nn.Module) -> None:
    stage = CountingInverter(generator, mode="linear", seed=3)
    callback = ValidationMetrics(metrics=["mse", "psnr", "ssim", "geometry"], reference_depth="dataset")
    csv_logger = CSVLogger(str(tmp_path), name="csv")
    wandb_logger = RecordingWandbLogger()
    datamodule = make_datamodule()
    make_trainer(tmp_path, callback, [csv_logger, wandb_logger]).validate(stage, datamodule=datamodule,
                                                                          verbose=False)

    expected = direct_values(stage, datamodule)
    values = callback.last_values
    for name, value in expected.items():
        assert values[f"val_metrics/{name}"] == pytest.approx(value, rel=1e-5), name
    assert values["val_metrics/images"] == VAL_LENGTH
    assert values["val_metrics/geometry/failures"] == 0 and values["val_metrics/geometry/evaluated"] == VAL_LENGTH

    csv_logger.save()
    with open(Path(csv_logger.log_dir) / "metrics.csv", newline="") as file:
        logged = list(csv.DictReader(file))
    assert float(logged[-1]["val_metrics/mse"]) == pytest.approx(expected["mse"], rel=1e-5)

    # wandb: one per-sample table (rank 0), 4 rows: id, input, reconstruction, 3 yaws, depth, scores
    [table] = wandb_logger.tables
    assert table["key"] == "val_metrics/samples"
    assert table["columns"] == ["identifier", "input", "reconstruction", "yaw -30", "yaw +0", "yaw +30", "depth",
                                "geometry", "mse", "psnr", "ssim"]
    assert len(table["data"]) == 4 and table["data"][0][0] == "synthetic/val/0"
    per_sample_mse = [row[table["columns"].index("mse")] for row in table["data"]]
    assert all(value >= 0 for value in per_sample_mse)

    # the frozen metric state lives in the callback, not in the module's checkpoint
    assert callback.state_dict() == {"validation_runs": 1}
    assert not [key for key in stage.state_dict() if "metric" in key or "lpips" in key]


@pytest.mark.slow
def test_skips_validation_runs_between_intervals(tmp_path: Path, generator: torch.nn.Module) -> None:
    stage = CountingInverter(generator, mode="mean")
    callback = ValidationMetrics(metrics=["mse"], every_n_validations=2, table_samples=0)
    trainer = make_trainer(tmp_path, callback, [])
    datamodule = make_datamodule()
    computed = []
    for run in range(3):
        callback.last_values = {}
        before = stage.inverted
        trainer.validate(stage, datamodule=datamodule, verbose=False)
        computed.append((bool(callback.last_values), stage.inverted - before))
    assert computed == [(True, VAL_LENGTH), (False, 0), (True, VAL_LENGTH)]
    assert callback.state_dict() == {"validation_runs": 3}


def test_rejects_a_stage_without_invert(tmp_path: Path, generator: torch.nn.Module) -> None:
    class NoInvert(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.generator = generator

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            return None

    callback = ValidationMetrics(metrics=["mse"])
    with pytest.raises(TypeError, match="invert"):
        make_trainer(tmp_path, callback, []).validate(NoInvert(), datamodule=make_datamodule(), verbose=False)
