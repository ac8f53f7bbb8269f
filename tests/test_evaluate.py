"""evaluate.py end to end on a tiny synthetic MEAD-style set, and the table writers.

The set: 2 identities of the tiny generator rendered at the five MEAD yaws in the documented layout.
Rows: a perfect inverter (the true ws of the nearest stored image), w_avg for everything, and a linear
"encoder" whose weights come from a Lightning checkpoint.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from conftest import CONFIG_DIR
from evaluate import CheckpointError, evaluate
from evaluation import GroupScores, Protocol, ProtocolResult, row_from_result, table_for, to_markdown, write_tables
from evaluation_fakes import FakeInverterStage, build_synthetic_mead
from metrics import METRIC_BUILDERS, FrechetInceptionDistance
from networks.eg3d.configs import generator_from_config

RESOLUTION = 64


class TinyExtractor(nn.Module):
    """Stands in for Inception (speed): [0, 1] images -> 6 features."""

    num_features = 6

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(3 * 2 * 2, self.num_features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.linear(nn.functional.adaptive_avg_pool2d(images, 2).flatten(1)))


@pytest.fixture(scope="module")
def mead_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("mead") / "mead_64"
    generator = generator_from_config("tiny", random_init=True, seed=0).eval()
    bank = build_synthetic_mead(root, generator, persons=2, frames=1)
    return root, bank


@pytest.fixture
def tiny_fid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(METRIC_BUILDERS, "fid", lambda config: FrechetInceptionDistance(TinyExtractor()))


def compose_evaluate_config(overrides: Sequence[str], output_dir: Path) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=list(overrides))
    with open_dict(cfg):
        cfg.output_dir = str(output_dir)
        cfg.paths.output_dir = str(output_dir)
        cfg.device = "cpu"
        cfg.stage = OmegaConf.create({"_target_": "evaluation_fakes.FakeInverterStage", "generator": "???",
                                      "mode": "linear", "bank_file": None, "seed": 0})
    GlobalHydra.instance().clear()
    return cfg


def save_lightning_checkpoint(path: Path, seed: int) -> None:
    """What Lightning's ModelCheckpoint stores that evaluate.py reads: {"state_dict": ..., "global_step": ...}."""
    generator = generator_from_config("tiny", random_init=True, seed=0)
    stage = FakeInverterStage(generator, mode="linear", seed=seed)
    torch.save({"state_dict": stage.state_dict(), "global_step": 7}, path)


def rows_by_name(json_file: Path) -> dict[str, dict]:
    return {row["name"]: row for row in json.loads(json_file.read_text())["rows"]}


def checkpoint_overrides(bank: Path, checkpoint: Path) -> str:
    return ("checkpoints=["
            f"{{name: perfect, stage: {{mode: nearest, bank_file: '{bank}'}}}},"
            "{name: mean, stage: {mode: mean}},"
            f"{{name: linear-ckpt, path: '{checkpoint}', stage: {{mode: linear, seed: 0}}}},"
            "{name: linear-seed1, stage: {mode: linear, seed: 1}}]")


@pytest.mark.slow
def test_mead_novel_view_tables(mead_set: tuple[Path, Path], tmp_path: Path, tiny_fid: None) -> None:
    root, bank = mead_set
    checkpoint = tmp_path / "linear.ckpt"
    save_lightning_checkpoint(checkpoint, seed=1)
    cfg = compose_evaluate_config([
        "protocol=mead_novel_view", "data=mead", f"data.splits.test.root={root}",
        f"data.splits.test.image_resolution={RESOLUTION}", f"data.splits.test.full_resolution={RESOLUTION}",
        "data.loaders.test.batch_size_per_device=2", "data.loaders.test.num_workers=0",
        "data.loaders.test.pin_memory=false", "metrics=[mse,psnr,ssim,lpips,fid,geometry]",
        "metrics_config.lpips_backbone_weights=random",
        f"+reference_depth={{_target_: evaluation_fakes.BankReferenceDepth, bank_file: '{bank}'}}",
        checkpoint_overrides(bank, checkpoint),
    ], tmp_path / "out")
    summary = evaluate(cfg)

    files = summary.files
    assert files.markdown.name == "mead_novel_view.md" and files.csv.is_file() and files.json.is_file()
    assert not list(files.json.parent.glob(".*.tmp"))
    rows = rows_by_name(files.json)
    assert list(rows) == ["perfect", "mean", "linear-ckpt", "linear-seed1"]
    metrics = ["psnr", "ssim", "mse", "lpips", "fid", "geometry"]
    expected = [f"{group}/{metric}" for group in ("yaw60", "yaw0") for metric in metrics]
    for row in rows.values():
        assert set(row["values"]) == set(expected)
        assert all(math.isfinite(value) for value in row["values"].values()), row
        # 2 identities x 4 novel views per input view; the ±60 group has two input views
        assert row["counts"]["yaw0/images"] == 8 and row["counts"]["yaw60/images"] == 16
        assert row["counts"]["yaw0/geometry/failures"] == 0

    perfect, mean = rows["perfect"]["values"], rows["mean"]["values"]
    for group in ("yaw0", "yaw60"):
        assert perfect[f"{group}/mse"] < 1e-4 < mean[f"{group}/mse"]  # PNG quantisation only
        assert perfect[f"{group}/psnr"] > 40 > mean[f"{group}/psnr"]
        assert perfect[f"{group}/ssim"] > mean[f"{group}/ssim"]
        assert perfect[f"{group}/lpips"] < mean[f"{group}/lpips"]
        assert perfect[f"{group}/fid"] < mean[f"{group}/fid"]
        assert perfect[f"{group}/geometry"] < 1e-6 < mean[f"{group}/geometry"]
    # the checkpoint's weights (seed 1) replace the configured ones (seed 0)
    assert rows["linear-ckpt"]["values"] == pytest.approx(rows["linear-seed1"]["values"], rel=1e-6)
    assert rows["linear-ckpt"]["values"] != pytest.approx(rows["mean"]["values"], rel=1e-3)

    with open(files.csv, newline="") as file:
        table = list(csv.DictReader(file))
    assert [row["method"] for row in table] == list(rows)
    assert float(table[0]["yaw0/mse"]) == pytest.approx(perfect["yaw0/mse"])
    assert table[2]["checkpoint"] == str(checkpoint)

    markdown = files.markdown.read_text().splitlines()
    header = next(line for line in markdown if line.startswith("| Method"))
    assert "yaw = ±60° PSNR ↑" in header and "yaw = 0° Geo. Err. ↓" in header
    assert header.index("±60° PSNR") < header.index("0° PSNR")  # Table 1 order: ±60 first
    assert sum(line.startswith("| ") for line in markdown) == 1 + 4


@pytest.mark.slow
def test_input_view_table_with_time(mead_set: tuple[Path, Path], tmp_path: Path) -> None:
    root, bank = mead_set
    checkpoint = tmp_path / "linear.ckpt"
    save_lightning_checkpoint(checkpoint, seed=1)
    cfg = compose_evaluate_config([
        "protocol=input_view", "data=celebahq", f"data.splits.test.root={root}", "data.splits.test.subset=null",
        f"data.splits.test.image_resolution={RESOLUTION}", f"data.splits.test.full_resolution={RESOLUTION}",
        "data.loaders.test.batch_size_per_device=4", "data.loaders.test.num_workers=0",
        "data.loaders.test.pin_memory=false", "metrics=[mse,psnr,ssim,geometry]", "timing.warmup_batches=1",
        f"+reference_depth={{_target_: evaluation_fakes.BankReferenceDepth, bank_file: '{bank}'}}",
        f"checkpoints=[{{name: perfect, stage: {{mode: nearest, bank_file: '{bank}'}}}}, {{name: mean, stage: {{mode: mean}}}}]",
    ], tmp_path / "out")
    summary = evaluate(cfg)
    rows = rows_by_name(summary.files.json)
    assert summary.files.markdown.name == "input_view.md"
    for row in rows.values():
        assert set(row["values"]) == {f"input_view/{name}" for name in ("mse", "psnr", "ssim", "geometry", "time")}
        assert all(math.isfinite(value) for value in row["values"].values())
        assert row["counts"]["input_view/images"] == 10
        assert row["counts"]["input_view/time/timed_images"] == 6  # 3 batches (4, 4, 2), the first is warm-up
    assert rows["perfect"]["values"]["input_view/mse"] < 1e-4 < rows["mean"]["values"]["input_view/mse"]
    assert rows["perfect"]["values"]["input_view/geometry"] < 1e-6
    header = next(line for line in summary.files.markdown.read_text().splitlines() if line.startswith("| Method"))
    assert header == "| Method | PSNR ↑ | SSIM ↑ | MSE ↓ | Geo. Err. ↓ | Time (s) ↓ |"


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    cfg = compose_evaluate_config([f"ckpt_path={tmp_path / 'absent.ckpt'}"], tmp_path / "out")
    with pytest.raises(CheckpointError, match="not found"):
        evaluate(cfg)


def test_tables_layout_and_atomic_files(tmp_path: Path) -> None:
    def result(scale: float) -> ProtocolResult:
        def scores(offset: float) -> GroupScores:
            return GroupScores({"mse": scale * offset, "lpips": 0.2 + offset, "id": math.nan, "id/failed_pairs": 1.0,
                                "id/evaluated": 3.0, "images": 4.0})
        return ProtocolResult(Protocol.MEAD_NOVEL_VIEW, {"yaw60": scores(0.5), "yaw0": scores(0.1)})

    rows = [row_from_result("Ours", "a.ckpt", result(1.0)), row_from_result("w/o BG", None, result(2.0))]
    table = table_for("mead_novel_view", rows, {"FID": "n/a"})
    assert [(group.key, column.name) for group, column in table.columns()] == [
        ("yaw60", "mse"), ("yaw60", "lpips"), ("yaw60", "id"), ("yaw0", "mse"), ("yaw0", "lpips"), ("yaw0", "id")]
    markdown = to_markdown(table)
    assert "| Ours | 0.5000 | 0.7000 | – | 0.1000 | 0.3000 | – |" in markdown
    assert "yaw60/id/failed_pairs = 1" in markdown  # failures are reported, not dropped
    files = write_tables(table, tmp_path / "tables", "ablation")
    payload = json.loads(files.json.read_text())
    assert payload["rows"][1]["values"]["yaw0/id"] is None  # NaN -> null
    assert payload["rows"][1]["counts"]["yaw0/id/failed_pairs"] == 1.0
    header = files.csv.read_text().splitlines()[0].split(",")
    assert header[:4] == ["method", "checkpoint", "yaw60/mse", "yaw60/lpips"]
    assert sorted(path.name for path in files.markdown.parent.iterdir()) == ["ablation.csv", "ablation.json",
                                                                             "ablation.md"]
