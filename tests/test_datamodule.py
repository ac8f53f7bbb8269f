"""InversionDataModule: the named Hydra configs, per-split loaders, samplers, typed batch transfer."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from datamodules import (
    ImageBatch,
    ImageFolderSplit,
    InversionDataModule,
    LoaderConfig,
    MultiViewBatch,
    SyntheticBatch,
)
from datamodules.sampling import EpochIndex, EvaluationSampler, TrainSampler

sys.path.insert(0, str(Path(__file__).parent))
from ddp_scripts.tiny_dataset import (  # noqa: E402
    camera_for,
    index_from_image,
    write_mead_layout,
    write_tiny_dataset,
)

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")
SMALL = ["data/loaders=cpu_tiny"]


def data_config(name: str, data_dir: Path, overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        config = compose(overrides=[f"+data={name}", f"+paths.data_dir={data_dir}", *SMALL, *overrides])
    return config.data


def small_resolution(splits: list[str], full: int = 32, encoder: int = 16) -> list[str]:
    return [
        override
        for split in splits
        for override in (f"data.splits.{split}.full_resolution={full}", f"data.splits.{split}.image_resolution={encoder}")
    ]


def first_batch(loader) -> object:
    return next(iter(loader))


# ----------------------------------------------------------------------------------- named configs


def test_ffhq_config_from_zip_with_xflip(tmp_path: Path) -> None:
    write_tiny_dataset(tmp_path / "ffhq" / "ffhq_512", count=8, as_zip=True)
    module = instantiate(data_config("ffhq", tmp_path, small_resolution(["train"])))
    assert isinstance(module, InversionDataModule) and module.name == "ffhq"
    module.setup("fit")
    assert len(module.datasets["train"]) == 8 and module.datasets["train"].xflip
    assert module.val_dataloader() == []  # no val split in this config
    loader = module.train_dataloader()
    assert loader.batch_size == 2 and loader.drop_last
    batch = first_batch(loader)
    assert isinstance(batch, ImageBatch) and batch.image.shape == (2, 3, 16, 16)
    assert batch.image_full.shape == (2, 3, 32, 32) and batch.camera.shape == (2, 25)
    # Each image still pairs with its camera or, when x-flipped, with the mirrored camera.
    import cameras

    for position, identifier in enumerate(batch.identifiers):
        index = int(identifier[-12:-4])
        label = torch.tensor(camera_for(index))
        assert index_from_image(batch.image_full[position]) == index
        mirrored = bool((batch.image_full[position][:, :, -1] == -1).all())
        expected = cameras.mirror_label(label[None])[0] if mirrored else label
        torch.testing.assert_close(batch.camera[position], expected)


def test_celebahq_config_writes_and_reuses_its_list_file(tmp_path: Path) -> None:
    write_tiny_dataset(tmp_path / "celebahq" / "celebahq_512", count=8)
    overrides = [*small_resolution(["test"]), "data.splits.test.subset.count=5"]
    list_file = tmp_path / "splits" / "celebahq_test_1500_seed0.txt"
    module = instantiate(data_config("celebahq", tmp_path, overrides))
    module.setup("test")
    chosen = module.datasets["test"].identifiers
    assert len(chosen) == 5 and list_file.read_text().split() == chosen
    again = instantiate(data_config("celebahq", tmp_path, overrides))
    again.setup("test")
    assert again.datasets["test"].identifiers == chosen
    reseeded = instantiate(
        data_config("celebahq", tmp_path, [*overrides, "data.splits.test.subset.seed=1",
                                            f"data.splits.test.subset.list_file={tmp_path}/s1.txt"])
    )
    reseeded.setup("test")
    assert reseeded.datasets["test"].identifiers != chosen
    batches = list(module.test_dataloader())
    assert [len(batch) for batch in batches] == [2, 2, 1]  # evaluation keeps the last partial batch


def test_afhq_config_splits_8_1_1(tmp_path: Path) -> None:
    write_tiny_dataset(tmp_path / "afhq" / "afhqv2_cats_512", count=10)
    module = instantiate(data_config("afhq", tmp_path, small_resolution(["train", "val", "test"])))
    module.setup(None)
    parts = {split: set(module.datasets[split].identifiers) for split in ("train", "val", "test")}
    assert [len(parts[split]) for split in ("train", "val", "test")] == [8, 1, 1]
    assert set.union(*parts.values()) == {f"00000/img{index:08d}.png" for index in range(10)}
    assert module.datasets["train"].xflip and not module.datasets["val"].xflip
    assert (tmp_path / "splits" / "afhq_cats_811_seed0.json").exists()
    # train, val and test share one header scan of the dataset.
    assert len(module._index_cache) == 1


def test_mead_config_gives_multiview_batches(tmp_path: Path) -> None:
    write_mead_layout(tmp_path / "mead" / "mead_512", people=1, frames=3)
    module = instantiate(data_config("mead", tmp_path, small_resolution(["test"])))
    module.setup("test")
    batch = first_batch(module.test_dataloader())
    assert isinstance(batch, MultiViewBatch) and batch.identifiers == ["M000/frame000", "M000/frame001"]
    assert batch.input.image.shape == (2, 3, 16, 16) and batch.target_image_full.shape == (2, 4, 3, 32, 32)
    assert batch.target_camera.shape == (2, 4, 25) and batch.input_views == ["front", "front"]
    # predict falls back to the test split
    module.setup("predict")
    assert len(module.predict_dataloader().dataset) == 3


def test_synthetic_config_is_the_no_download_default(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        overrides = [
            "data.splits.val.length=3",
            "data.splits.val.full_resolution=64",
            "data.splits.val.image_resolution=32",
        ]
        module = instantiate(data_config("synthetic", tmp_path, overrides))
        assert module.generator_source.name == "tiny" and module.generator_source.random_init
        module.setup("validate")
        assert set(module.datasets) == {"val"}  # train (10,000 samples) is not built for validate
        batch = first_batch(module.val_dataloader())
        assert isinstance(batch, SyntheticBatch) and batch.ws_true.shape[:2] == (2, 14)
        assert batch.identifiers == ["synthetic/val/0", "synthetic/val/1"]
        assert batch.depth_true.ndim == 4 and batch.image.shape == (2, 3, 32, 32)
    finally:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------- loaders, samplers


def test_loader_settings_come_from_config_per_split(tmp_path: Path) -> None:
    root = write_tiny_dataset(tmp_path / "d", count=6)
    split = ImageFolderSplit(root=str(root), image_resolution=16, full_resolution=32)
    module = InversionDataModule(
        splits={"train": split, "val": split},
        loaders={
            "train": {"batch_size_per_device": 3, "drop_last": True, "shuffle": True},
            "val": LoaderConfig(batch_size_per_device=4, num_workers=1, persistent_workers=True),
        },
    )
    module.setup("fit")
    train, val = module.train_dataloader(), module.val_dataloader()
    assert (train.batch_size, train.drop_last, train.num_workers) == (3, True, 0)
    assert (val.batch_size, val.drop_last, val.num_workers, val.persistent_workers) == (4, False, 1, True)
    assert isinstance(train.sampler, TrainSampler) and isinstance(val.sampler, EvaluationSampler)
    # A worker process sees the same samples as the main process.
    assert [batch.identifiers for batch in val] == [sorted(module.datasets["val"].identifiers)[:4],
                                                    sorted(module.datasets["val"].identifiers)[4:]]
    with pytest.raises(ValueError, match="unknown loader settings"):
        InversionDataModule(splits={"train": split}, loaders={"train": {"batch_size": 3}})
    with pytest.raises(ValueError, match="has no 'test' split"):
        module.test_dataloader()


def test_train_sampler_shards_disjointly_and_reshuffles_per_epoch() -> None:
    data = list(range(10))
    shards = []
    for rank in range(2):
        sampler = TrainSampler(data, num_replicas=2, rank=rank, shuffle=True, seed=0, drop_last=False)
        sampler.set_epoch(1)
        keys = list(sampler)
        assert all(isinstance(key, EpochIndex) and key.epoch == 1 for key in keys)
        shards.append([key.index for key in keys])
    assert not set(shards[0]) & set(shards[1]) and sorted(shards[0] + shards[1]) == data
    sampler = TrainSampler(data, num_replicas=2, rank=0, shuffle=True, seed=0, drop_last=False)
    sampler.set_epoch(2)
    assert [key.index for key in sampler] != shards[0]


def test_evaluation_sampler_is_unpadded_and_complete() -> None:
    data = list(range(5))
    shards = [[key.index for key in EvaluationSampler(data, num_replicas=2, rank=rank)] for rank in range(2)]
    assert shards == [[0, 2, 4], [1, 3]]
    assert [len(EvaluationSampler(data, num_replicas=2, rank=rank)) for rank in range(2)] == [3, 2]


def test_skip_policy_reports_through_the_datamodule(tmp_path: Path) -> None:
    root = write_tiny_dataset(tmp_path / "d", count=4, shuffle_labels=False)
    (root / "00000/img00000002.png").unlink()
    split = ImageFolderSplit(root=str(root), image_resolution=16, full_resolution=32)
    with pytest.raises(Exception, match=r"img00000002\.png: image listed in .* is absent"):
        InversionDataModule(splits={"test": split}).setup("test")
    module = InversionDataModule(splits={"test": split}, on_bad_sample="skip")
    with pytest.warns(UserWarning, match="skipped 1 bad entries"):
        module.setup("test")
    assert len(module.datasets["test"]) == 3
    assert [bad.path for bad in module.reports["test"].skipped] == ["00000/img00000002.png"]
    with pytest.raises(ValueError, match="on_bad_sample must be one of"):
        InversionDataModule(splits={"test": split}, on_bad_sample="ignore")


# ----------------------------------------------------------------------------------- device transfer


def test_typed_batches_move_to_a_device_field_by_field(tmp_path: Path) -> None:
    from lightning.fabric.utilities.apply_func import move_data_to_device

    root = write_tiny_dataset(tmp_path / "d", count=2)
    module = InversionDataModule(splits={"val": ImageFolderSplit(str(root), image_resolution=16, full_resolution=32)})
    module.setup("validate")
    batch = first_batch(module.val_dataloader())
    moved = move_data_to_device(batch, torch.device("meta"))
    assert isinstance(moved, ImageBatch) and moved.identifiers == batch.identifiers
    for field in ("image", "image_full", "camera", "image_mirrored", "image_full_mirrored", "camera_mirrored"):
        assert getattr(moved, field).device.type == "meta", field
        assert getattr(batch, field).device.type == "cpu"  # the original is untouched


def test_trainer_hands_typed_batches_to_the_module(tmp_path: Path) -> None:
    import lightning.pytorch as pl

    class Probe(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.seen: list[str] = []

        def training_step(self, batch: ImageBatch, batch_index: int) -> torch.Tensor:
            assert isinstance(batch, ImageBatch) and batch.image.device == self.device
            self.seen.extend(batch.identifiers)
            return (self.weight * batch.image.mean()).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    root = write_tiny_dataset(tmp_path / "d", count=4)
    module = InversionDataModule(
        splits={"train": ImageFolderSplit(str(root), image_resolution=16, full_resolution=32, xflip=True)},
        loaders={"train": LoaderConfig(batch_size_per_device=2, shuffle=True, drop_last=True)},
    )
    probe = Probe()
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )
    trainer.fit(probe, datamodule=module)
    assert sorted(probe.seen) == sorted(module.datasets["train"].identifiers)
