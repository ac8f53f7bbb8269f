"""The invert command end to end on the tiny generator: align -> invert -> every output file; edits;
clear errors for photos without a face, bad direction files and checkpoints of another stage.

The stage checkpoint is made here by train.py's train(cfg) for one step. Until the stage modules
implement invert(), a small fake feature-space stage stands in (w from a linear map of the pooled
image, F* = F(w) + a learned offset, masks 0.5 mixing like stage 2); the real stage 1 is used as soon
as GOAEEncoderStage has invert().
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import imageio.v2 as imageio
import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict
from PIL import Image
from skimage import data as skimage_data
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cameras import canonical_camera_label
from conftest import CONFIG_DIR, compose_train_config, shrink_into
from inversion.inputs import NoUsableImagesError
from inversion.loading import CheckpointError, StageMismatchError, read_stage_checkpoint
from inversion.mesh import read_ply
from inversion.result import InversionResult
from inversion.run import EditDirectionError, run_invert
from lightning_modules import GOAEEncoderStage
from networks.eg3d.outputs import BackboneFeatures
from networks.occlusion_mix import mix_triplanes
from runtime.resolvers import PROJECT_ROOT
from train import train

FAKE_STAGE_NAME = "fake_feature_stage"
REAL_STAGE_1 = callable(getattr(GOAEEncoderStage, "invert", None))
TINY_IMAGE = 64  # the tiny generator's image size
TINY_NEURAL = 16  # its neural rendering resolution
NUM_WS, W_DIM = 14, 512
YAWS, PITCHES = [-20.0, 0.0, 20.0], [0.0, 10.0]
STRENGTHS = [-1.0, 0.0, 2.0]
NUM_FRAMES = 4


class FakeFeatureStage(L.LightningModule):
    """A tiny stand-in stage implementing the Inverter protocol, with F* and visibility masks."""

    def __init__(self, generator: nn.Module, stage_name: str = FAKE_STAGE_NAME, latent_grid: int = 4) -> None:
        super().__init__()
        self.generator = generator.eval().requires_grad_(False)
        self.stage_name = stage_name
        self.latent_grid = latent_grid
        self.to_latent = nn.Linear(3 * latent_grid * latent_grid, W_DIM)
        self.feature_offset = nn.Parameter(torch.tensor(0.3))

    def invert(self, image: torch.Tensor, image_full: torch.Tensor, camera: torch.Tensor) -> InversionResult:
        G = self.generator
        pooled = F.adaptive_avg_pool2d(image, self.latent_grid).flatten(1)
        ws = (G.w_avg + 0.1 * self.to_latent(pooled))[:, None].repeat(1, G.num_ws, 1)
        state = G.synthesize_features(ws, "b32")
        refined = BackboneFeatures("b32", state.features + self.feature_offset, state.skip_image)
        refined_planes = G.synthesize_planes_from_features(ws, refined)
        masks = torch.full_like(refined_planes[:, :, :1], 0.5)
        mixed = mix_triplanes(refined_planes, G.synthesize_planes(ws), masks)
        return InversionResult(ws, refined_planes, mixed, refined, masks)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        (inputs,) = batch
        return self.to_latent(inputs).pow(2).mean() + (self.feature_offset - 0.5).pow(2)

    def train_dataloader(self) -> DataLoader:
        inputs = torch.randn(4, 3 * self.latent_grid**2, generator=torch.Generator().manual_seed(0))
        return DataLoader(TensorDataset(inputs), batch_size=2)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.1)

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Like the real stages: the frozen generator is never in the checkpoint."""
        return {k: v for k, v in super().state_dict(*args, **kwargs).items() if not k.startswith("generator.")}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["goae_stage"] = {"name": self.stage_name}


def fake_stage_node(**fields: Any) -> DictConfig:
    return OmegaConf.create({"_target_": f"{__name__}.FakeFeatureStage", "generator": "???", **fields})


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def stage_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stage checkpoint after one training step through train.py's train(cfg)."""
    run_dir = tmp_path_factory.mktemp("stage_run") / "run"
    if REAL_STAGE_1:
        overrides = [
            "trainer.max_steps=1", "trainer.num_sanity_val_steps=0", "+trainer.limit_val_batches=0",
            "stage.background_depth.estimate_num_samples=2", "stage.background_depth.estimate_batch_size=2",
            "callbacks.model_checkpoint.every_n_train_steps=1", "~callbacks.inversion_images", "~logger",
        ]
        cfg = shrink_into(compose_train_config(overrides), run_dir)
    else:
        cfg = shrink_into(compose_train_config(["~logger"]), run_dir)
        with open_dict(cfg):
            cfg.stage = fake_stage_node()
            cfg.data = None
            cfg.trainer.max_steps = 1
            cfg.trainer.pop("val_check_interval", None)  # the fake stage has no validation
            cfg.trainer.enable_progress_bar = False
            cfg.callbacks.pop("progress_bar")
            cfg.callbacks.pop("inversion_images")
            cfg.callbacks.model_checkpoint.every_n_train_steps = 1
    train(cfg)
    GlobalHydra.instance().clear()
    return run_dir / "checkpoints" / "last.ckpt"


def compose_invert_config(run_dir: Path, *overrides: str) -> DictConfig:
    """configs/invert.yaml as `python invert.py <overrides>` composes it, writing into run_dir."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="invert", overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.runtime.cwd = os.getcwd()
        cfg.extras.print_config = False
        if not REAL_STAGE_1:
            cfg.stage = fake_stage_node()
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.fixture
def invert_config(tmp_path: Path, stage_checkpoint: Path) -> Callable[..., DictConfig]:
    def make(*overrides: str) -> DictConfig:
        small = [
            f"ckpt_path={stage_checkpoint}", f"outputs={tmp_path / 'out'}", "device=cpu", "encoder_resolution=64",
            f"views.yaws_degrees={YAWS}", f"views.pitches_degrees={PITCHES}",
            f"video.num_frames={NUM_FRAMES}", "video.fps=8", "mesh.resolution=24", "mesh.level=auto",
        ]
        return compose_invert_config(tmp_path / "run", *small, *overrides)

    yield make
    GlobalHydra.instance().clear()


def save_astronaut(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(skimage_data.astronaut()).save(folder / "astronaut.png")
    return folder / "astronaut.png"


def save_blank(folder: Path, name: str = "blank.png") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (256, 256), (128, 128, 128)).save(folder / name)
    return folder / name


def save_direction(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array.astype(np.float32))
    return path


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def png_pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


# ----------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_invert_align_end_to_end_writes_every_output(tmp_path: Path, invert_config: Callable[..., DictConfig]) -> None:
    photos = tmp_path / "photos"
    save_astronaut(photos)
    save_blank(photos)  # no face: listed and skipped, the astronaut still goes through
    direction = np.random.default_rng(0).standard_normal((1, NUM_WS, W_DIM))
    age = save_direction(tmp_path / "dirs" / "age.npy", direction)
    cfg = invert_config(
        f"inputs={photos}", "align=true", "batch_size=2", f"edit.directions=[{age}]", f"edit.strengths={STRENGTHS}"
    )
    summary = run_invert(cfg)
    out = tmp_path / "out"

    assert [image.name for image in summary.images] == ["astronaut"]
    assert "blank.png: no face found" in summary.skipped_message
    report = json.loads((out / "aligned" / "report.json").read_text())
    assert report["no_face"] == ["blank.png"] and [p["source"] for p in report["prepared"]] == ["astronaut.png"]

    folder = out / "astronaut"
    assert png_size(folder / "reconstruction.png") == (2 * TINY_IMAGE, TINY_IMAGE)
    assert png_size(folder / "multi_view.png") == (len(YAWS) * TINY_IMAGE, len(PITCHES) * TINY_IMAGE)
    assert png_size(folder / "depth.png") == (TINY_NEURAL, TINY_NEURAL)
    depth = np.load(folder / "depth.npy")
    assert depth.shape == (TINY_NEURAL, TINY_NEURAL) and depth.dtype == np.float32 and np.isfinite(depth).all()

    video = next(path for path in (folder / "orbit.mp4", folder / "orbit.gif") if path.is_file())
    with imageio.get_reader(video) as reader:
        frames = [frame for frame in reader]
    assert len(frames) == NUM_FRAMES and frames[0].shape[:2] == (TINY_IMAGE, TINY_IMAGE)

    mesh = read_ply(folder / "mesh.ply")
    assert mesh.vertices.shape[0] > 0 and mesh.faces.shape[0] > 0 and mesh.vertex_colors is not None

    latents = torch.load(folder / "latents.pt", weights_only=True)
    ws = latents["ws"]
    assert ws.shape == (1, NUM_WS, W_DIM) and latents["camera"].shape == (1, 25)
    if REAL_STAGE_1:  # stage 1 inverts to w+ only
        assert "refined_features" not in latents and "visibility_masks" not in latents
    else:  # the fake feature-space stage also refines F
        assert latents["refined_block"] == "b32"
        assert latents["refined_features"].ndim == 4 and latents["visibility_masks"].shape[:3] == (1, 3, 1)

    timing = json.loads((folder / "timing.json").read_text())
    assert timing["inversion_seconds"] > 0 and {"reconstruction+depth", "multi_view", "video", "mesh", "edits"} <= set(
        timing["rendering_seconds"]
    )
    assert json.loads((out / "timing.json").read_text())["images"][0]["name"] == "astronaut"

    # Edits: strength 0 reproduces the unedited outputs exactly; the w+ edit is linear in strength.
    edits = folder / "edits"
    for strength in ("-1", "0", "2"):
        assert png_size(edits / f"age_{strength}.png") == (TINY_IMAGE, TINY_IMAGE)
        # the separate w+-only grid exists when a feature-space edit (Eq. 10) was made as well
        for grid in ("multi_view",) if REAL_STAGE_1 else ("multi_view", "wplus_multi_view"):
            assert png_size(edits / f"age_{strength}_{grid}.png") == png_size(folder / "multi_view.png")
    reconstruction = png_pixels(folder / "reconstruction.png")[:, TINY_IMAGE:]
    assert np.array_equal(png_pixels(edits / "age_0.png"), reconstruction)
    assert np.array_equal(png_pixels(edits / "age_0_multi_view.png"), png_pixels(folder / "multi_view.png"))
    assert not np.array_equal(png_pixels(edits / "age_2.png"), reconstruction)

    edited = torch.load(edits / "age.pt", weights_only=True)
    assert edited["strengths"].tolist() == STRENGTHS and edited["ws"].shape == (len(STRENGTHS), NUM_WS, W_DIM)
    assert torch.equal(edited["ws"][1], ws[0])
    delta = torch.from_numpy(direction.astype(np.float32))[0]
    for strength, edited_ws in zip(STRENGTHS, edited["ws"]):
        torch.testing.assert_close(edited_ws - ws[0], strength * delta, rtol=0, atol=1e-5)


def test_aligned_folder_and_files_are_inverted_in_batches(
    tmp_path: Path, invert_config: Callable[..., DictConfig]
) -> None:
    aligned = tmp_path / "aligned"
    aligned.mkdir()
    rng = np.random.default_rng(1)
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(aligned / name)
    label = canonical_camera_label(1)[0].tolist()
    (aligned / "dataset.json").write_text(json.dumps({"labels": [[n, label] for n in ("a.png", "b.png", "c.png")]}))
    disabled = ("video.enabled=false", "mesh.enabled=false")

    folder_run = run_invert(invert_config(f"inputs={aligned}", "batch_size=2", *disabled))
    assert [image.name for image in folder_run.images] == ["a", "b", "c"]
    assert [image.timing.batch_size for image in folder_run.images] == [2, 2, 1]
    batched_ws = torch.load(tmp_path / "out" / "c" / "latents.pt", weights_only=True)["ws"]

    file_run = run_invert(invert_config(f"inputs=[{aligned / 'c.png'}]", "batch_size=1", *disabled))
    assert [image.name for image in file_run.images] == ["c"]
    torch.testing.assert_close(torch.load(tmp_path / "out" / "c" / "latents.pt", weights_only=True)["ws"], batched_ws)

    Image.new("RGB", (128, 128)).save(aligned / "unlabelled.png")
    with pytest.raises(ValueError, match=r"unlabelled\.png: no camera label"):
        run_invert(invert_config(f"inputs=[{aligned / 'unlabelled.png'}]", *disabled))


# ----------------------------------------------------------------------------- clear errors
def test_photos_without_a_face_give_a_clear_error(tmp_path: Path, invert_config: Callable[..., DictConfig]) -> None:
    photos = tmp_path / "photos"
    save_blank(photos)
    with pytest.raises(NoUsableImagesError, match=r"no photo could be aligned(.|\n)*blank\.png: no face found"):
        run_invert(invert_config(f"inputs={photos}", "align=true"))


def test_direction_of_the_wrong_shape_names_the_file(tmp_path: Path, invert_config: Callable[..., DictConfig]) -> None:
    bad = save_direction(tmp_path / "dirs" / "smile.npy", np.zeros((3, 7)))
    with pytest.raises(EditDirectionError, match=r"smile\.npy.*shape \(3, 7\)"):
        run_invert(invert_config(f"inputs={tmp_path}", f"edit.directions=[{bad}]"))


def test_checkpoint_of_another_stage_is_a_clear_error(
    tmp_path: Path, invert_config: Callable[..., DictConfig], stage_checkpoint: Path
) -> None:
    recorded = read_stage_checkpoint(stage_checkpoint).stage_name
    cfg = invert_config(f"inputs={tmp_path}")
    with open_dict(cfg):
        cfg.stage = fake_stage_node(stage_name="afa")
    with pytest.raises(StageMismatchError, match=f"checkpoint of stage '{recorded}'.*configured stage is 'afa'"):
        run_invert(cfg)


@pytest.mark.skipif(REAL_STAGE_1, reason="the fake stage's key layout is what this test changes")
def test_checkpoint_with_other_weights_lists_the_keys(
    tmp_path: Path, invert_config: Callable[..., DictConfig]
) -> None:
    cfg = invert_config(f"inputs={tmp_path}")
    with open_dict(cfg):
        cfg.stage = fake_stage_node(latent_grid=2)  # to_latent of another shape
    with pytest.raises(CheckpointError, match="to_latent.weight"):
        run_invert(cfg)
    missing = tmp_path / "nothing.ckpt"
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        run_invert(invert_config(f"inputs={tmp_path}", f"ckpt_path={missing}"))


def test_checkpoint_objects_are_never_executed(tmp_path: Path) -> None:
    """Lightning checkpoints may carry Python objects (Hydra partials, OmegaConf nodes): read inert."""
    path = tmp_path / "with_objects.ckpt"
    torch.save(
        {
            "state_dict": {"encoder.weight": torch.ones(2)},
            "hyper_parameters": {"optimizer": functools.partial(print, "executed"), "cfg": OmegaConf.create({"a": 1})},
            "goae_stage": {"name": "encoder"},
        },
        path,
    )
    checkpoint = read_stage_checkpoint(path)
    assert checkpoint.stage_name == "encoder" and torch.equal(checkpoint.state_dict["encoder.weight"], torch.ones(2))
    raw = torch.load(path, weights_only=False)  # only to confirm what the file holds
    assert isinstance(raw["hyper_parameters"]["optimizer"], functools.partial)


@pytest.mark.slow
def test_cli_exits_non_zero_with_the_message(tmp_path: Path, stage_checkpoint: Path) -> None:
    photos = tmp_path / "photos"
    save_blank(photos)
    config_dir = tmp_path / "configs"
    (config_dir / "stage").mkdir(parents=True)
    (config_dir / "stage" / "fake.yaml").write_text(
        f"_target_: {__name__}.FakeFeatureStage\ngenerator: ???\n"
    )
    stage = [] if REAL_STAGE_1 else [f"hydra.searchpath=[file://{config_dir}]", "stage=fake"]
    command = [
        sys.executable, str(PROJECT_ROOT / "invert.py"), *stage, f"ckpt_path={stage_checkpoint}",
        f"inputs={photos}", "align=true", f"outputs={tmp_path / 'out'}", "device=cpu",
        "extras.print_config=false", f"hydra.run.dir={tmp_path / 'run'}",
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT / "tests"), str(PROJECT_ROOT)])}
    completed = subprocess.run(command, capture_output=True, text=True, env=env, cwd=PROJECT_ROOT, timeout=300)
    assert completed.returncode == 1, completed.stderr[-2000:]
    assert "error: no photo could be aligned" in completed.stderr and "blank.png: no face found" in completed.stderr
