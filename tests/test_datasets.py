"""Datasets: EG3D format from folders and zips, pairing by path, mirroring, bad input, splits, MEAD."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import cameras
from datamodules import (
    DatasetError,
    ImagePoseDataset,
    IndexOptions,
    MultiViewDataset,
    build_index,
)
from datamodules.sampling import EpochIndex
from datamodules.splits import sampled_subset_file, seeded_split_file

sys.path.insert(0, str(Path(__file__).parent))
from ddp_scripts.tiny_dataset import (  # noqa: E402
    camera_for,
    image_bytes,
    index_from_image,
    write_files,
    write_mead_layout,
    write_tiny_dataset,
)

OPTIONS = IndexOptions(full_resolution=32)


def dataset_at(path: Path, options: IndexOptions = OPTIONS, **kwargs) -> ImagePoseDataset:
    return ImagePoseDataset.from_path(str(path), options, image_resolution=16, **kwargs)


def tiny_files(count: int = 4, resolution: int = 32) -> dict[str, bytes]:
    files = {f"img{index}.png": image_bytes(index, resolution) for index in range(count)}
    labels = [[f"img{index}.png", camera_for(index)] for index in range(count)]
    files["dataset.json"] = json.dumps({"labels": labels}).encode()
    return files


# ----------------------------------------------------------------------------------- format


@pytest.mark.parametrize("as_zip", [False, True], ids=["folder", "zip"])
def test_labels_pair_with_images_by_path_not_position(tmp_path: Path, as_zip: bool) -> None:
    root = write_tiny_dataset(tmp_path / "tiny", count=8, as_zip=as_zip, shuffle_labels=True)
    dataset = dataset_at(root)
    assert len(dataset) == 8
    for position in range(len(dataset)):
        sample = dataset[position]
        encoded = index_from_image(sample.image_full)
        assert sample.identifier == f"00000/img{encoded:08d}.png"
        torch.testing.assert_close(sample.camera, torch.tensor(camera_for(encoded)))
        assert index_from_image(sample.image) == encoded
    # The label order was shuffled, so pairing by sorted position would have failed somewhere.
    order = [entry[0] for entry in json.loads(_read_labels(root))["labels"]]
    assert order != sorted(order)


def _read_labels(root: Path) -> bytes:
    if root.suffix == ".zip":
        import zipfile

        return zipfile.ZipFile(root).read("dataset.json")
    return (root / "dataset.json").read_bytes()


def test_sample_shapes_ranges_and_types(tmp_path: Path) -> None:
    sample = dataset_at(write_tiny_dataset(tmp_path / "tiny", count=2))[0]
    assert sample.image.shape == (3, 16, 16) and sample.image_full.shape == (3, 32, 32)
    assert sample.camera.shape == (25,) and sample.camera.dtype == torch.float32
    assert sample.image.dtype == torch.float32
    assert sample.image_full.min() >= -1.0 and sample.image_full.max() <= 1.0
    assert sample.image_full.min() == -1.0  # the black quarter


def test_mirrored_pair_is_flipped_image_and_mirror_label(tmp_path: Path) -> None:
    sample = dataset_at(write_tiny_dataset(tmp_path / "tiny", count=2))[1]
    torch.testing.assert_close(sample.image_mirrored, sample.image.flip(-1))
    torch.testing.assert_close(sample.image_full_mirrored, sample.image_full.flip(-1))
    torch.testing.assert_close(sample.camera_mirrored, cameras.mirror_label(sample.camera[None])[0])
    # The black quarter moved from the left to the right.
    assert sample.image_full_mirrored[:, :, -1].max() == -1.0 and sample.image_full[:, :, -1].max() > -1.0


def test_xflip_is_seeded_per_epoch_and_index_and_swaps_the_pair(tmp_path: Path) -> None:
    root = write_tiny_dataset(tmp_path / "tiny", count=8)
    plain = dataset_at(root)
    flipping = dataset_at(root, xflip=True, xflip_seed=3)
    flips = {}
    for epoch in range(3):
        for index in range(8):
            sample = flipping[EpochIndex(index, epoch)]
            reference = plain[index]
            mirrored = bool(torch.equal(sample.image_full, reference.image_full_mirrored))
            if mirrored:
                torch.testing.assert_close(sample.camera, reference.camera_mirrored)
                torch.testing.assert_close(sample.image_mirrored, reference.image)
                torch.testing.assert_close(sample.camera_mirrored, reference.camera)
            else:
                assert torch.equal(sample.image_full, reference.image_full)
            flips[(epoch, index)] = mirrored
            # Deterministic: asking again gives the same decision.
            assert torch.equal(flipping[EpochIndex(index, epoch)].image_full, sample.image_full)
    assert 0 < sum(flips.values()) < len(flips)
    assert [flips[(0, i)] for i in range(8)] != [flips[(1, i)] for i in range(8)]


def test_label_file_name_is_configurable(tmp_path: Path) -> None:
    root = write_tiny_dataset(tmp_path / "goae", count=3, label_file="label.json")
    assert len(dataset_at(root, IndexOptions(full_resolution=32, label_file="label.json"))) == 3
    with pytest.raises(DatasetError, match=r"dataset\.json: label file not found"):
        dataset_at(root)


def test_windows_separators_and_dot_prefix_in_labels_match(tmp_path: Path) -> None:
    files = tiny_files(2)
    labels = [["sub\\img0.png", camera_for(0)], ["./sub/img1.png", camera_for(1)]]
    files = {f"sub/{name}": data for name, data in files.items() if name != "dataset.json"}
    files["dataset.json"] = json.dumps({"labels": labels}).encode()
    dataset = dataset_at(write_files(tmp_path / "d", files))
    assert dataset.identifiers == ["sub/img0.png", "sub/img1.png"]


# ----------------------------------------------------------------------------------- bad input


def _with_labels(tmp_path: Path, labels: object, as_zip: bool = False) -> Path:
    files = tiny_files(4)
    files["dataset.json"] = json.dumps(labels).encode() if not isinstance(labels, bytes) else labels
    return write_files(tmp_path / "bad", files, as_zip)


def test_missing_dataset_and_missing_label_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        build_index(str(tmp_path / "nowhere"), OPTIONS)
    files = tiny_files(2)
    del files["dataset.json"]
    root = write_files(tmp_path / "nolabels", files, as_zip=True)
    with pytest.raises(DatasetError, match=r"nolabels\.zip:dataset\.json: label file not found"):
        build_index(str(root), OPTIONS)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "not valid JSON"),
        ({"images": []}, 'with a "labels" key'),
        ({"labels": None}, '"labels" must be a list'),
    ],
)
def test_malformed_label_file_is_always_an_error(tmp_path: Path, content: object, message: str) -> None:
    root = _with_labels(tmp_path, content)
    for policy in ("error", "skip"):
        with pytest.raises(DatasetError, match=message) as caught:
            build_index(str(root), IndexOptions(full_resolution=32, on_bad_sample=policy))
        assert "dataset.json" in str(caught.value)


def _scaled_rotation(index: int) -> list[float]:
    label = camera_for(index)
    for position in (0, 1, 2, 4, 5, 6, 8, 9, 10):
        label[position] *= 1.5
    return label


@pytest.mark.parametrize(
    ("bad_label", "message"),
    [
        (camera_for(1)[:24], "has 24 numbers, expected 25"),
        (camera_for(1)[:3] + [float("nan")] + camera_for(1)[4:], "non-finite"),
        (camera_for(1)[:5] + ["x"] + camera_for(1)[6:], "list of 25 numbers"),
        (_scaled_rotation(1), "not orthonormal"),
    ],
    ids=["24-numbers", "nan", "string", "not-a-rotation"],
)
def test_bad_label_names_the_file_and_skip_counts_it(tmp_path: Path, bad_label: list, message: str) -> None:
    labels = [[f"img{index}.png", camera_for(index)] for index in range(4)]
    labels[1][1] = bad_label
    root = write_files(tmp_path / "bad", {**tiny_files(4), "dataset.json": json.dumps({"labels": labels}).encode()})
    with pytest.raises(DatasetError, match=message) as caught:
        build_index(str(root), OPTIONS)
    assert "img1.png" in str(caught.value) and "dataset.json" in str(caught.value)
    index = build_index(str(root), IndexOptions(full_resolution=32, on_bad_sample="skip"))
    assert [entry.identifier for entry in index.entries] == ["img0.png", "img2.png", "img3.png"]
    assert len(index.report.skipped) == 1 and message in index.report.skipped[0].problem
    assert "skipped 1 bad entries" in index.report.summary()


def test_listed_but_absent_image(tmp_path: Path) -> None:
    files = tiny_files(4)
    del files["img2.png"]
    root = write_files(tmp_path / "absent", files, as_zip=True)
    with pytest.raises(DatasetError, match=r"absent\.zip:img2\.png: image listed in .* is absent"):
        build_index(str(root), OPTIONS)
    index = build_index(str(root), IndexOptions(full_resolution=32, on_bad_sample="skip"))
    assert [bad.path for bad in index.report.skipped] == ["img2.png"]
    assert index.report.num_usable == 3 and index.report.num_labels == 4


def test_unlabeled_images_are_reported_not_used(tmp_path: Path) -> None:
    files = tiny_files(3)
    files["extra/unlabeled.png"] = image_bytes(5, 32)
    index = build_index(str(write_files(tmp_path / "extra", files)), OPTIONS)
    assert [entry.identifier for entry in index.entries] == ["img0.png", "img1.png", "img2.png"]
    assert index.report.unlabeled_images == ["extra/unlabeled.png"]
    assert "1 images have no label" in index.report.summary()


def test_duplicate_label_entries(tmp_path: Path) -> None:
    labels = [[f"img{index}.png", camera_for(index)] for index in range(3)] + [["img1.png", camera_for(1)]]
    root = write_files(tmp_path / "dup", {**tiny_files(3), "dataset.json": json.dumps({"labels": labels}).encode()})
    with pytest.raises(DatasetError, match=r"img1\.png: listed more than once"):
        build_index(str(root), OPTIONS)


def test_unreadable_image(tmp_path: Path) -> None:
    files = tiny_files(3)
    files["img1.png"] = b"this is not a png"
    root = write_files(tmp_path / "junk", files)
    with pytest.raises(DatasetError, match=r"img1\.png: unreadable image"):
        build_index(str(root), OPTIONS)
    index = build_index(str(root), IndexOptions(full_resolution=32, on_bad_sample="skip"))
    assert [bad.path for bad in index.report.skipped] == ["img1.png"]


def test_truncated_image_found_by_decode_check_and_at_load(tmp_path: Path) -> None:
    files = tiny_files(3, resolution=32)
    files["img2.png"] = image_bytes(2, 32)[:-30]  # header intact, data cut short
    root = write_files(tmp_path / "truncated", files)
    with pytest.raises(DatasetError, match=r"img2\.png: unreadable or truncated image"):
        build_index(str(root), IndexOptions(full_resolution=32, image_check="decode"))
    skipped = build_index(str(root), IndexOptions(full_resolution=32, image_check="decode", on_bad_sample="skip"))
    assert [bad.path for bad in skipped.report.skipped] == ["img2.png"]
    # A header scan cannot see truncation; loading then fails with a clear error, never silently.
    dataset = dataset_at(root)
    assert len(dataset) == 3
    with pytest.raises(DatasetError, match=r"img2\.png: unreadable or truncated image"):
        dataset[2]


def test_wrong_size_and_non_square_images(tmp_path: Path) -> None:
    from io import BytesIO

    from PIL import Image

    files = tiny_files(4)
    files["img1.png"] = image_bytes(1, 64)
    buffer = BytesIO()
    Image.new("RGB", (32, 24)).save(buffer, format="PNG")
    files["img3.png"] = buffer.getvalue()
    root = write_files(tmp_path / "sizes", files)
    with pytest.raises(DatasetError, match=r"img1\.png: image is 64x64, expected 32x32"):
        build_index(str(root), OPTIONS)
    index = build_index(str(root), IndexOptions(full_resolution=32, on_bad_sample="skip"))
    assert {bad.path for bad in index.report.skipped} == {"img1.png", "img3.png"}
    assert "not square" in next(bad.problem for bad in index.report.skipped if bad.path == "img3.png")
    # Opt-in resizing accepts square images of another size, never non-square ones.
    resized = dataset_at(root, IndexOptions(full_resolution=32, resize_other_sizes=True, on_bad_sample="skip"))
    assert resized.identifiers == ["img0.png", "img1.png", "img2.png"]
    assert resized[1].image_full.shape == (3, 32, 32) and index_from_image(resized[1].image_full) == 1


# ----------------------------------------------------------------------------------- splits


def test_sampled_subset_list_is_written_once_and_reused(tmp_path: Path) -> None:
    available = [f"img{index:03d}.png" for index in range(40)]
    list_file = tmp_path / "lists" / "celebahq_test.txt"
    first = sampled_subset_file(available, 10, seed=0, list_file=list_file)
    assert len(first) == 10 and len(set(first)) == 10 and set(first) <= set(available)
    assert list_file.read_text().split() == first
    written = list_file.stat().st_mtime_ns
    # Reused, even when asked with another seed (the file is the evaluation set).
    assert sampled_subset_file(available, 10, seed=5, list_file=list_file) == first
    assert list_file.stat().st_mtime_ns == written
    other = sampled_subset_file(available, 10, seed=1, list_file=tmp_path / "other.txt")
    assert other != first
    # Same seed in a fresh location gives the same list (deterministic draw).
    assert sampled_subset_file(list(reversed(available)), 10, 0, tmp_path / "again.txt") == first
    # A listed image that disappeared is an error naming the list file.
    with pytest.raises(DatasetError, match="celebahq_test.txt"):
        sampled_subset_file(available[:5], 10, seed=0, list_file=list_file)


def test_sampled_subset_with_too_few_images_uses_all(tmp_path: Path) -> None:
    available = [f"img{index}.png" for index in range(4)]
    with pytest.warns(UserWarning, match="only 4 usable images"):
        chosen = sampled_subset_file(available, 1500, seed=0, list_file=tmp_path / "l.txt")
    assert chosen == available and not (tmp_path / "l.txt").exists()


def test_seeded_split_is_8_1_1_disjoint_covering_and_reused(tmp_path: Path) -> None:
    available = [f"cat{index:03d}.png" for index in range(50)] + [f"cat{index:03d}_mirror.png" for index in range(50)]
    split_file = tmp_path / "afhq_split.json"
    parts = seeded_split_file(available, {"train": 0.8, "val": 0.1, "test": 0.1}, 0, split_file)
    assert {name: len(items) for name, items in parts.items()} == {"train": 80, "val": 10, "test": 10}
    everything = [item for items in parts.values() for item in items]
    assert sorted(everything) == sorted(available)  # covering and disjoint
    for name, items in parts.items():  # an image and its mirrored copy stay together
        for item in items:
            if item.endswith("_mirror.png"):
                assert item.replace("_mirror", "") in items, name
    assert seeded_split_file(available, {"train": 0.5, "test": 0.5}, 9, split_file) == parts
    assert seeded_split_file(available, {"train": 0.8, "val": 0.1, "test": 0.1}, 1, tmp_path / "s1.json") != parts


# ----------------------------------------------------------------------------------- MEAD


def mead_options(**kwargs) -> IndexOptions:
    return IndexOptions(full_resolution=32, **kwargs)


def test_mead_layout_groups_five_views(tmp_path: Path) -> None:
    root = write_mead_layout(tmp_path / "mead", people=2, frames=2)
    dataset = MultiViewDataset.from_path(str(root), mead_options(), input_view="left30", image_resolution=16)
    assert dataset.identifiers == ["M000/frame000", "M000/frame001", "M001/frame000", "M001/frame001"]
    sample = dataset[3]
    assert sample.input_view == "left30" and sample.target_views == ["left60", "front", "right30", "right60"]
    assert sample.input.identifier == "M001/frame001/left30.png"
    assert sample.target_image.shape == (4, 3, 16, 16) and sample.target_image_full.shape == (4, 3, 32, 32)
    assert sample.target_camera.shape == (4, 25)
    yaws = cameras.yaw_pitch_from_cam2world(cameras.unpack_label(sample.target_camera).cam2world).yaw
    torch.testing.assert_close(yaws, torch.tensor([-1.047, 0.0, 0.524, 1.047]), atol=1e-3, rtol=0)
    # Group 3 starts at running number 15 -> colour index 15 % 12 = 3; left30 is view 1.
    assert index_from_image(sample.input.image_full) == (15 + 1) % 12


def test_mead_incomplete_group_and_bad_layout_are_rejected(tmp_path: Path) -> None:
    root = write_mead_layout(tmp_path / "mead", people=2, frames=1)
    (root / "M001/frame000/right60.png").unlink()
    with pytest.raises(DatasetError, match=r"right60\.png: image listed in .* is absent"):
        MultiViewDataset.from_path(str(root), mead_options())
    skipped = MultiViewDataset.from_path(str(root), mead_options(on_bad_sample="skip"))
    assert skipped.identifiers == ["M000/frame000"]
    problems = {bad.path: bad.problem for bad in skipped.index.report.skipped}
    assert "M001/frame000" in problems and "right60" in problems["M001/frame000"]
    assert "M001/frame000/right60.png" in problems

    # A whole view missing from the labels (and the folder): incomplete group, named.
    root2 = write_mead_layout(tmp_path / "mead2", people=1, frames=1)
    labels = json.loads((root2 / "dataset.json").read_text())
    labels["labels"] = [entry for entry in labels["labels"] if not entry[0].endswith("front.png")]
    (root2 / "dataset.json").write_text(json.dumps(labels))
    (root2 / "M000/frame000/front.png").unlink()
    with pytest.raises(DatasetError, match=r"M000/frame000: incomplete multi-view group, missing .*'front'"):
        MultiViewDataset.from_path(str(root2), mead_options())

    # Unknown view names / wrong depth do not follow the layout.
    root3 = write_mead_layout(tmp_path / "mead3", people=1, frames=1)
    labels = json.loads((root3 / "dataset.json").read_text())
    (root3 / "M000/frame000/left45.png").write_bytes(image_bytes(0, 32))
    labels["labels"].append(["M000/frame000/left45.png", camera_for(0)])
    (root3 / "dataset.json").write_text(json.dumps(labels))
    with pytest.raises(DatasetError, match=r"left45\.png: does not follow the multi-view layout"):
        MultiViewDataset.from_path(str(root3), mead_options())


def test_mead_input_view_must_be_known(tmp_path: Path) -> None:
    root = write_mead_layout(tmp_path / "mead", people=1, frames=1)
    with pytest.raises(ValueError, match="input_view must be one of"):
        MultiViewDataset.from_path(str(root), mead_options(), input_view="back")


# ----------------------------------------------------------------------------------- synthetic


@pytest.fixture(scope="module")
def synthetic_val():
    from datamodules import GeneratorSource, SyntheticDataset

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # WHY: 2 shared cores; more threads only contend
    yield SyntheticDataset(
        length=3, split="val", seed=7, source=GeneratorSource(name="tiny", random_init=True, seed=0),
        image_resolution=32, full_resolution=64,
    )
    torch.set_num_threads(threads)


def test_synthetic_samples_are_deterministic_per_index(synthetic_val) -> None:
    from datamodules import GeneratorSource, SyntheticDataset, SyntheticSample

    first = synthetic_val[1]
    assert isinstance(first, SyntheticSample) and first.identifier == "synthetic/val/1"
    # A fresh dataset object (another process or rank would build one) gives identical tensors.
    again = SyntheticDataset(length=3, split="val", seed=7, source=GeneratorSource(), image_resolution=32,
                             full_resolution=64)[1]
    for field in ("image", "image_full", "camera", "ws_true", "depth_true"):
        assert torch.equal(getattr(first, field), getattr(again, field)), field
    other = synthetic_val[2]
    assert not torch.allclose(first.ws_true, other.ws_true)
    assert not torch.allclose(first.camera, other.camera)
    assert first.image.shape == (3, 32, 32) and first.image_full.shape == (3, 64, 64)
    assert first.ws_true.shape[0] == synthetic_val.generator.num_ws
    resolution = synthetic_val.generator.neural_rendering_resolution
    assert first.depth_true.shape == (1, resolution, resolution)
    torch.testing.assert_close(first.camera_mirrored, cameras.mirror_label(first.camera[None])[0])
    torch.testing.assert_close(first.image_mirrored, first.image.flip(-1))
    # Same index of another split or another seed is another sample.
    assert not torch.equal(synthetic_val.draw(1).z, SyntheticDataset(3, "train", 7, GeneratorSource()).draw(1).z)
    assert not torch.equal(synthetic_val.draw(1).z, SyntheticDataset(3, "val", 8, GeneratorSource()).draw(1).z)


def test_synthetic_ground_truth_re_renders_the_sample(synthetic_val) -> None:
    sample = synthetic_val[0]
    generator = synthetic_val.generator
    draw = synthetic_val.draw(0)
    with torch.no_grad():
        ws = generator.mapping(draw.z, cameras.canonical_camera_label(1))
        torch.testing.assert_close(ws[0], sample.ws_true)
        rendered = generator.synthesis(sample.ws_true[None], sample.camera[None], noise_mode="const", draws=draw.draws)
    torch.testing.assert_close(rendered.image_depth[0], sample.depth_true)
    torch.testing.assert_close(rendered.image[0].clamp(-1, 1), sample.image_full)  # 64 = native resolution
    # The camera came from the FFHQ-like distribution: near frontal, radius 2.7.
    summary = cameras.camera_label_summary(sample.camera[None])
    assert abs(float(summary.radius[0]) - 2.7) < 1e-3 and abs(float(summary.yaw[0])) <= 0.9 + 1e-5


def test_synthetic_dataset_pickles_without_its_generator(synthetic_val) -> None:
    import pickle

    synthetic_val.generator  # built
    restored = pickle.loads(pickle.dumps(synthetic_val))
    assert restored._generator is None and len(pickle.dumps(synthetic_val)) < 10_000


# ----------------------------------------------------------------------------------- check_dataset


def test_check_dataset_summary_and_histogram(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    from data_prep.check_dataset import main

    root = write_tiny_dataset(tmp_path / "tiny", count=8, as_zip=True)
    histogram = tmp_path / "out" / "yaw_pitch.png"
    assert main([str(root), "--resolution", "32", "--histogram", str(histogram)]) == 0
    printed = capsys.readouterr().out
    assert "8 usable of 8 labels" in printed and "32x32: 8" in printed
    assert "camera radius: min 2.7000  mean 2.7000  max 2.7000" in printed
    # camera_for: yaw = 0.1 * (i - 3) rad for i in 0..7 -> -17.19 .. 22.92 degrees
    assert "yaw:   min  -17.19  max   22.92 degrees" in printed
    with Image.open(histogram) as image:
        assert image.format == "PNG" and image.size[0] > 100
        assert len(set(image.convert("RGB").getdata())) > 2  # cells were drawn


def test_check_dataset_fails_and_lists_bad_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from data_prep.check_dataset import main

    files = tiny_files(4)
    files["img1.png"] = image_bytes(1, 32)[:-30]  # truncated: only a full decode sees it
    files["img3.png"] = image_bytes(3, 64)
    files["loose.png"] = image_bytes(5, 32)
    root = write_files(tmp_path / "bad", files)
    assert main([str(root), "--resolution", "32"]) == 1
    printed = capsys.readouterr().out
    assert "img1.png" in printed and "truncated" in printed and "img3.png: image is 64x64" in printed
    assert "bad entries: 2   unlabeled images: 1" in printed
    assert main([str(root)]) == 1  # any square size accepted, the truncated one still fails
    assert "32x32: 2, 64x64: 1" in capsys.readouterr().out
    assert main([str(root), "--label-file", "label.json"]) == 2
    assert "label.json: label file not found" in capsys.readouterr().err


def test_check_dataset_mead_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from data_prep.check_dataset import main

    root = write_mead_layout(tmp_path / "mead", people=1, frames=2)
    assert main([str(root), "--layout", "mead"]) == 0
    assert "complete multi-view groups: 2" in capsys.readouterr().out
    (root / "M000/frame001/left60.png").unlink()
    assert main([str(root), "--layout", "mead"]) == 1
    assert "M000/frame001: incomplete multi-view group" in capsys.readouterr().out
