"""BiSeNet face parser: checkpoint layout, strict loading, errors, and forward equivalence.

`tests/data/bisenet_keys.json` was extracted from the reference repository's own model (see its
"description"); `tests/data/bisenet_golden_small.pt` holds the reference model's logits for the
synthetic weights built by `synthetic_state_dict` below, so a structural mistake (wrong ReLU, wrong
upsampling, swapped heads) fails the equivalence test.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from networks.face_parsing import (
    BACKGROUND_CLASS,
    FACE_CLASS_NAMES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    NUM_FACE_CLASSES,
    BiSeNet,
    FaceParsingWeightsError,
    load_face_parser,
    normalise_for_face_parser,
)
from tolerances import assert_close_roundoff

DATA = Path(__file__).parent / "data"


def manifest_entries() -> list[tuple[str, list[int], str]]:
    return [tuple(entry) for entry in json.loads((DATA / "bisenet_keys.json").read_text())["entries"]]


def synthetic_state_dict(entries: list[tuple[str, list[int], str]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Deterministic, well-scaled random weights in manifest order (the golden file used this recipe)."""
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for name, shape, _dtype in entries:
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(0, dtype=torch.int64)
            continue
        if name.endswith("running_var"):
            tensor = 0.5 + torch.rand(shape, generator=generator)
        elif name.endswith("running_mean"):
            tensor = 0.1 * torch.randn(shape, generator=generator)
        elif len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            tensor = torch.randn(shape, generator=generator) * math.sqrt(2.0 / fan_in)
        elif name.endswith(".weight"):
            tensor = 1.0 + 0.1 * torch.randn(shape, generator=generator)
        else:
            tensor = 0.1 * torch.randn(shape, generator=generator)
        state[name] = tensor
    return state


@pytest.fixture(scope="module")
def synthetic_weights_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bisenet") / "79999_iter.pth"
    torch.save(synthetic_state_dict(manifest_entries()), path)
    return path


def test_model_state_dict_matches_manifest_exactly() -> None:
    expected = [(name, shape, dtype) for name, shape, dtype in manifest_entries()]
    actual = [
        (name, list(value.shape), str(value.dtype).removeprefix("torch."))
        for name, value in BiSeNet().state_dict().items()
    ]
    assert len(expected) == 191
    assert sorted(actual) == sorted(expected)


def test_class_table() -> None:
    assert NUM_FACE_CLASSES == len(FACE_CLASS_NAMES) == 19
    assert FACE_CLASS_NAMES[BACKGROUND_CLASS] == "background"
    assert FACE_CLASS_NAMES[17] == "hair" and FACE_CLASS_NAMES[1] == "skin"


@pytest.mark.numerics
def test_loads_strictly_and_matches_reference_logits(synthetic_weights_file: Path) -> None:
    parser = load_face_parser(synthetic_weights_file)
    assert not parser.training
    assert all(not parameter.requires_grad for parameter in parser.parameters())
    golden = torch.load(DATA / "bisenet_golden_small.pt", weights_only=True)
    inputs = torch.randn(golden["input_shape"], generator=torch.Generator().manual_seed(golden["input_seed"]))
    with torch.no_grad():
        heads = parser.all_heads(inputs)
        main = parser(inputs)
    assert main.shape == (1, NUM_FACE_CLASSES, 64, 48)
    torch.testing.assert_close(main, heads.main)  # the same kernels on the same shapes
    # Rule 1 of tests/README.md: ours in float64 against the recorded float32 logits, whose round-off
    # is bounded by the network's longest path: ResNet-18 (about 20 convs, K up to 512 x 9) and the
    # attention/fusion heads, about 60,000 roundings.
    with torch.no_grad():
        heads64 = parser.double().all_heads(inputs.double())
    parser.float()
    roundings = 60_000
    assert_close_roundoff(heads64.main[..., ::4, ::4], golden["main_sub4"].double(), roundings, msg="main")
    assert_close_roundoff(
        heads64.auxiliary_context8[..., ::4, ::4], golden["aux16_sub4"].double(), roundings, msg="aux16"
    )
    assert_close_roundoff(
        heads64.auxiliary_context16[..., ::4, ::4], golden["aux32_sub4"].double(), roundings, msg="aux32"
    )


def test_checkpoint_without_batch_counters_still_loads(tmp_path: Path) -> None:
    # Checkpoints written by old PyTorch versions have no num_batches_tracked entries.
    state = {
        k: v for k, v in synthetic_state_dict(manifest_entries()).items() if "num_batches_tracked" not in k
    }
    path = tmp_path / "old.pth"
    torch.save(state, path)
    load_face_parser(path)


def test_missing_file_names_file_and_origin(tmp_path: Path) -> None:
    with pytest.raises(
        FaceParsingWeightsError, match=r"nowhere\.pth.*79999_iter\.pth.*zllrunning/face-parsing"
    ):
        load_face_parser(tmp_path / "nowhere.pth")


def test_wrong_checkpoint_reports_keys(tmp_path: Path) -> None:
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
    with pytest.raises(
        FaceParsingWeightsError, match=r"resnet\.pth.*missing keys.*unexpected keys.*79999_iter"
    ):
        load_face_parser(path)


def test_wrong_shape_reports_key(tmp_path: Path) -> None:
    state = synthetic_state_dict(manifest_entries())
    state["conv_out.conv_out.weight"] = torch.zeros(20, 256, 1, 1)  # a 20-class model
    path = tmp_path / "twenty.pth"
    torch.save(state, path)
    with pytest.raises(FaceParsingWeightsError, match=r"conv_out\.conv_out\.weight"):
        load_face_parser(path)


def test_garbage_file_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(FaceParsingWeightsError, match=r"garbage\.pth.*79999_iter"):
        load_face_parser(path)


def test_normalisation_of_generator_images() -> None:
    images = torch.full((1, 3, 512, 512), -1.0)
    images[:, :, :, 256:] = 1.0
    normalised = normalise_for_face_parser(images)
    for channel in range(3):
        assert normalised[0, channel, 0, 0].item() == pytest.approx(
            (0.0 - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel]
        )
        assert normalised[0, channel, 0, -1].item() == pytest.approx(
            (1.0 - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel]
        )
    small = normalise_for_face_parser(torch.zeros(2, 3, 64, 64))
    assert small.shape == (2, 3, 512, 512)
    torch.testing.assert_close(
        small[:, :, 5, 7], ((0.5 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)).expand(2, 3)
    )
