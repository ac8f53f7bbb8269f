"""Edit directions: file formats and shapes, w+ edits, the authors' glasses offset, the F-space edit."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from inversion.editing import (
    EditDirection,
    LatentEdit,
    authors_glasses_decorrelated,
    edit_features,
    edited_planes,
    load_direction,
)
from networks.eg3d.configs import generator_from_config
from networks.eg3d.outputs import BackboneFeatures
from tolerances import assert_close_roundoff, largest_magnitude


def random_direction(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def tiny() -> tuple:
    G = generator_from_config("tiny", random_init=True)
    with torch.no_grad():
        z = torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(1))
        ws = G.mapping(z, torch.zeros(2, 25))
    return G, ws


# ----------------------------------------------------------------------------- loading
@pytest.mark.parametrize("shape", [(1, 14, 512), (14, 512)])
def test_npy_per_layer_directions_load_as_14_by_512(tmp_path: Path, shape: tuple[int, ...]) -> None:
    raw = random_direction(shape).numpy()
    np.save(tmp_path / "age.npy", raw)
    direction = load_direction(tmp_path / "age.npy")
    assert direction.name == "age" and direction.delta.dtype == torch.float32
    np.testing.assert_array_equal(direction.delta.numpy(), raw.reshape(14, 512))


def test_a_single_w_direction_is_repeated_on_every_layer(tmp_path: Path) -> None:
    raw = random_direction((512,)).double().numpy()
    np.save(tmp_path / "smile.npy", raw)
    delta = load_direction(tmp_path / "smile.npy").delta
    assert delta.shape == (14, 512) and delta.dtype == torch.float32
    for layer in range(14):
        np.testing.assert_array_equal(delta[layer].numpy(), raw.astype(np.float32))


def test_torch_zip_archive_with_a_npy_name_loads(tmp_path: Path) -> None:
    """Like the authors' cat_black.npy: torch.save output that np.load cannot read."""
    raw = random_direction((1, 14, 512))
    torch.save(raw, tmp_path / "cat_black.npy")
    assert (tmp_path / "cat_black.npy").read_bytes()[:2] == b"PK"
    with np.load(tmp_path / "cat_black.npy", allow_pickle=False) as not_an_array:  # numpy sees a .npz
        assert not isinstance(not_an_array, np.ndarray)
    direction = load_direction(tmp_path / "cat_black.npy")
    assert direction.name == "cat_black"
    torch.testing.assert_close(direction.delta, raw[0], rtol=0, atol=0)


@pytest.mark.parametrize("zip_format", [True, False])
def test_pt_and_legacy_pth_files_load(tmp_path: Path, zip_format: bool) -> None:
    raw = random_direction((14, 512))
    path = tmp_path / ("d.pt" if zip_format else "d.pth")
    torch.save({"direction": raw}, path, _use_new_zipfile_serialization=zip_format)
    torch.testing.assert_close(load_direction(path).delta, raw, rtol=0, atol=0)


def test_wrong_shape_names_the_file_and_the_shape(tmp_path: Path) -> None:
    np.save(tmp_path / "bad.npy", np.zeros((13, 512), dtype=np.float32))
    with pytest.raises(ValueError, match=r"bad\.npy.*\(13, 512\).*expected \(1, 14, 512\)"):
        load_direction(tmp_path / "bad.npy")


def test_non_finite_and_unknown_files_are_rejected(tmp_path: Path) -> None:
    values = np.zeros(512, dtype=np.float32)
    values[3] = np.nan
    np.save(tmp_path / "nan.npy", values)
    with pytest.raises(ValueError, match="NaN"):
        load_direction(tmp_path / "nan.npy")
    (tmp_path / "text.npy").write_text("not an array")
    with pytest.raises(ValueError, match="not a numpy"):
        load_direction(tmp_path / "text.npy")
    with pytest.raises(FileNotFoundError):
        load_direction(tmp_path / "missing.npy")


class _Payload:
    def __reduce__(self):  # would create a file if unpickled
        return (Path.touch, (Path(self.target),))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickled_payloads_are_never_executed(tmp_path: Path) -> None:
    payload = _Payload()
    payload.target = str(tmp_path / "pwned")
    np.save(tmp_path / "object.npy", np.array([payload], dtype=object), allow_pickle=True)
    torch.save(payload, tmp_path / "object.pt")
    (tmp_path / "raw.pth").write_bytes(pickle.dumps(payload))
    for name in ("object.npy", "object.pt", "raw.pth"):
        with pytest.raises(Exception):
            load_direction(tmp_path / name)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.numerics
# ----------------------------------------------------------------------------- w+ edits
def test_strength_zero_is_the_unedited_w_and_the_edit_is_linear(tiny: tuple) -> None:
    _, ws = tiny
    edit = LatentEdit.along(EditDirection("d", random_direction((14, 512))))
    assert torch.equal(edit.apply(ws, 0.0), ws)
    edited = edit.apply_strengths(ws, [-2.0, 0.0, 0.5, 3.0])
    assert len(edited) == 4 and torch.equal(edited[1], ws)
    for strength, result in zip([-2.0, 0.5, 3.0], [edited[0], edited[2], edited[3]]):
        expected = strength * edit.direction.delta.expand_as(ws)
        # rule 2: (ws + s d) - ws errs like ws itself (3 roundings of values of its size)
        assert_close_roundoff(result - ws, expected, roundings=3, path_magnitude=largest_magnitude(ws))
    assert_close_roundoff(
        edit.apply(ws, 3.5) - ws, (edited[0] - ws) * -1.75, roundings=6, path_magnitude=largest_magnitude(ws)
    )


def test_authors_glasses_offset_does_not_scale_with_strength(tiny: tuple) -> None:
    _, ws = tiny
    age = EditDirection("age", random_direction((14, 512), 1))
    glasses = EditDirection("glass", random_direction((14, 512), 2))
    edit = authors_glasses_decorrelated(age, glasses)
    torch.testing.assert_close(edit.apply(ws, 2.0), ws + 2.0 * age.delta - 0.8 * glasses.delta)
    torch.testing.assert_close(edit.apply(ws, 0.0), ws - 0.8 * glasses.delta)


def test_ws_of_the_wrong_shape_is_rejected() -> None:
    edit = LatentEdit.along(EditDirection("d", torch.zeros(14, 512)))
    with pytest.raises(ValueError, match="ws must have shape"):
        edit.apply(torch.zeros(2, 512), 1.0)


# ----------------------------------------------------------------------------- F-space edit
def refined_features(G, ws: torch.Tensor) -> BackboneFeatures:
    """Stand-in for the stage-2 refinement: the generator's b32 map plus a fixed perturbation."""
    base = G.synthesize_features(ws, "b32")
    noise = torch.randn(base.features.shape, generator=torch.Generator().manual_seed(5))
    return BackboneFeatures(block="b32", features=base.features + noise, skip_image=base.skip_image)


def test_f_space_edit_with_unchanged_ws_returns_the_refined_features_exactly(tiny: tuple) -> None:
    G, ws = tiny
    refined = refined_features(G, ws)
    result = edit_features(G, ws, ws.clone(), refined)
    assert result.block == "b32"
    assert torch.equal(result.features, refined.features)
    assert torch.equal(result.skip_image, G.synthesize_features(ws, "b32").skip_image)


def test_f_space_edit_adds_the_generator_feature_difference(tiny: tuple) -> None:
    G, ws = tiny
    refined = refined_features(G, ws)
    ws_edit = LatentEdit.along(EditDirection("d", random_direction((14, 512), 3))).apply(ws, 0.5)
    result = edit_features(G, ws, ws_edit, refined)
    unedited, edited = G.synthesize_features(ws, "b32"), G.synthesize_features(ws_edit, "b32")
    torch.testing.assert_close(result.features - refined.features, edited.features - unedited.features)
    assert not torch.allclose(result.features, refined.features)
    assert torch.equal(result.skip_image, edited.skip_image)


def test_edited_planes_continue_with_the_unedited_ws(tiny: tuple) -> None:
    G, ws = tiny[0], tiny[1][:1]
    unrefined = G.synthesize_features(ws, "b32")
    torch.testing.assert_close(edited_planes(G, ws, ws, unrefined), G.synthesize_planes(ws))
    ws_edit = ws + 0.3 * random_direction((14, 512), 4)
    expected = G.synthesize_planes_from_features(ws, edit_features(G, ws, ws_edit, unrefined))
    torch.testing.assert_close(edited_planes(G, ws, ws_edit, unrefined), expected)
    later_blocks_edited = G.synthesize_planes_from_features(ws_edit, edit_features(G, ws, ws_edit, unrefined))
    assert not torch.allclose(expected, later_blocks_edited)


def test_f_space_edit_rejects_mismatched_inputs(tiny: tuple) -> None:
    G, ws = tiny
    refined = refined_features(G, ws)
    with pytest.raises(ValueError, match="differ in shape"):
        edit_features(G, ws, ws[:1], refined)
    wrong = BackboneFeatures(block="b32", features=refined.features[:, :, :16], skip_image=refined.skip_image)
    with pytest.raises(ValueError, match="do not match"):
        edit_features(G, ws, ws, wrong)
