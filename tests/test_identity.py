"""ArcFace IR-SE50 (keys of model_ir_se50.pth, strict loading, clear errors) and the identity loss
(pSp crop + pool, 1 - cosine, per-sample similarity) against hand computations."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from losses.identity import (
    IRSE50,
    IdentityLoss,
    IdentityWeightsError,
    crop_face_for_arcface,
    load_ir_se50,
)
from tolerances import assert_close_roundoff, roundoff_bound

MANIFEST = Path(__file__).parent / "data" / "ir_se50_keys.json"


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads(MANIFEST.read_text())


@pytest.fixture(scope="module")
def random_ir_se50_file(manifest: dict, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A file with exactly the manifest's keys and shapes (random values, BatchNorm variances > 0)."""
    generator = torch.Generator().manual_seed(7)
    state = {}
    for key, shape, _dtype in manifest["entries"]:
        values = torch.randn(shape, generator=generator) * 0.05
        state[key] = values.abs() + 0.5 if key.endswith("running_var") else values
    path = tmp_path_factory.mktemp("weights") / "model_ir_se50.pth"
    torch.save(state, path)
    return path, state


def test_ir_se50_state_dict_matches_the_model_ir_se50_manifest(manifest: dict) -> None:
    ours = {k: list(v.shape) for k, v in IRSE50().state_dict().items() if not k.endswith("num_batches_tracked")}
    expected = {key: shape for key, shape, _ in manifest["entries"]}
    assert list(ours) == list(expected)  # same keys, same order
    assert ours == expected
    assert sum(1 for k in expected if k.startswith("body.") and k.endswith("res_layer.5.fc2.weight")) == 24


def test_random_tensors_with_the_manifest_keys_load_strictly(
    random_ir_se50_file: tuple[Path, dict[str, torch.Tensor]], manifest: dict, tmp_path: Path
) -> None:
    path, state = random_ir_se50_file
    network = load_ir_se50(path)
    assert not network.training
    loaded = network.state_dict()
    for key in ("input_layer.0.weight", "body.7.shortcut_layer.0.weight", "body.23.res_layer.5.fc1.weight",
                "output_layer.3.weight", "output_layer.4.running_var"):
        assert torch.equal(loaded[key], state[key])
    # Files written by PyTorch >= 0.4.1 also carry BatchNorm num_batches_tracked; both variants load.
    with_counters = dict(state)
    for prefix in manifest["batchnorm_prefixes"]:
        with_counters[f"{prefix}.num_batches_tracked"] = torch.tensor(100)
    path_with_counters = tmp_path / "model_ir_se50_counters.pth"
    torch.save(with_counters, path_with_counters)
    assert torch.equal(load_ir_se50(path_with_counters).state_dict()["body.0.res_layer.1.weight"],
                       state["body.0.res_layer.1.weight"])


@pytest.mark.numerics
def test_ir_se50_gives_unit_embeddings_from_7x7_final_features() -> None:
    torch.manual_seed(0)
    network = IRSE50().eval()
    faces = torch.rand(1, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        features = network.body(network.input_layer(faces))
        embedding = network(faces)
    assert features.shape == (1, 512, 7, 7)
    assert embedding.shape == (1, 512)
    # rule 2 of tests/README.md: the norm of a normalised 512-vector, 2 x 512 roundings
    assert embedding.norm(dim=1).item() == pytest.approx(1.0, abs=roundoff_bound(1.0, 2 * 512))


def test_missing_or_wrong_ir_se50_file_names_the_file_and_its_origin(
    tmp_path: Path, manifest: dict
) -> None:
    with pytest.raises(IdentityWeightsError, match=r"not found: .*nothing\.pth.*model_ir_se50\.pth.*pixel2style2pixel"):
        load_ir_se50(tmp_path / "nothing.pth")
    partial = tmp_path / "partial.pth"
    torch.save({"input_layer.0.weight": torch.zeros(64, 3, 3, 3), "fc.weight": torch.zeros(2)}, partial)
    with pytest.raises(IdentityWeightsError, match=r"partial\.pth is not an IR-SE50.*missing.*1 unexpected \(e\.g\. fc\.weight\)"):
        load_ir_se50(partial)
    wrong_shapes = tmp_path / "wrong_shapes.pth"
    torch.save({key: torch.zeros(1) for key, _, _ in manifest["entries"]}, wrong_shapes)
    with pytest.raises(IdentityWeightsError, match=r"wrong shapes.*input_layer\.0\.weight: \[1\] \(expected \[64, 3, 3, 3\]\)"):
        load_ir_se50(wrong_shapes)
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"input_layer.0.weight": types.SimpleNamespace(x=1)}, unsafe)
    with pytest.raises(IdentityWeightsError, match="never loaded with weights_only=False.*model_ir_se50"):
        load_ir_se50(unsafe)


TINY_FACE_NET_ROUNDINGS = 4 + 75 + 8 * 27 * 27 + 16


class _TinyFaceNet(nn.Module):
    """A small stand-in face network with IR-SE50's interface ([N,3,112,112] -> unit [N,D])."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 5, stride=4)
        self.fc = nn.Linear(8 * 27 * 27, 16)

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        assert faces.shape[-2:] == (112, 112)
        return F.normalize(self.fc(torch.tanh(self.conv(faces)).flatten(1)), dim=1)


@pytest.fixture
def tiny_identity_loss() -> IdentityLoss:
    torch.manual_seed(0)
    return IdentityLoss(_TinyFaceNet())


@pytest.mark.numerics
def test_identity_loss_is_one_minus_cosine_of_psp_face_crops(tiny_identity_loss: IdentityLoss) -> None:
    torch.manual_seed(1)
    y_hat, y = torch.rand(3, 3, 256, 256) * 2 - 1, torch.rand(3, 3, 256, 256) * 2 - 1
    net = tiny_identity_loss.network

    def by_hand(images: torch.Tensor) -> torch.Tensor:
        return net(F.adaptive_avg_pool2d(images[:, :, 35:223, 32:220], (112, 112)))

    cosine = F.cosine_similarity(by_hand(y_hat), by_hand(y), dim=1)
    comparison = tiny_identity_loss(y_hat, y)
    # Rule 2: the loss may batch the images differently (other GEMM shapes); unit embeddings, so the
    # cosine errs like its path: crop pooling (4) + conv (75) + fc (5,832) + normalisation (16).
    bound = roundoff_bound(1.0, TINY_FACE_NET_ROUNDINGS)
    assert comparison.loss.item() == pytest.approx((1 - cosine).mean().item(), abs=bound)
    assert_close_roundoff(comparison.similarity, cosine, TINY_FACE_NET_ROUNDINGS, path_magnitude=1.0)
    assert not comparison.similarity.requires_grad
    same = tiny_identity_loss(y, y)
    assert same.loss.item() == pytest.approx(0.0, abs=bound)
    assert_close_roundoff(same.similarity, torch.ones(3), TINY_FACE_NET_ROUNDINGS)


@pytest.mark.numerics
def test_identity_loss_sees_only_the_face_crop_and_pools_512_images_to_256(tiny_identity_loss: IdentityLoss) -> None:
    torch.manual_seed(2)
    y_hat, y = torch.rand(2, 3, 256, 256) * 2 - 1, torch.rand(2, 3, 256, 256) * 2 - 1
    reference = tiny_identity_loss(y_hat, y).loss
    outside = y_hat.clone()
    outside[:, :, :35] = 5.0
    outside[:, :, :, 220:] = -5.0
    assert tiny_identity_loss(outside, y).loss.item() == pytest.approx(reference.item(), rel=1e-6)
    inside = y_hat.clone()
    inside[:, :, 100:150, 100:150] = 1.0
    assert tiny_identity_loss(inside, y).loss.item() != pytest.approx(reference.item(), rel=1e-3)
    # A 512 render is average-pooled to 256 first (GOAE's face_pool), then cropped.
    upsampled = y_hat.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    # 2x2 means of equal values, then the same adaptive pooling: a few roundings per pixel
    assert_close_roundoff(crop_face_for_arcface(upsampled), crop_face_for_arcface(y_hat), roundings=4 + 4)
    with pytest.raises(ValueError, match="256"):
        crop_face_for_arcface(torch.zeros(1, 3, 128, 128))


def test_identity_gradient_reaches_the_reconstruction_only(tiny_identity_loss: IdentityLoss) -> None:
    y_hat = (torch.rand(2, 3, 256, 256) * 2 - 1).requires_grad_(True)
    y = (torch.rand(2, 3, 256, 256) * 2 - 1).requires_grad_(True)
    tiny_identity_loss(y_hat, y).loss.backward()
    assert y_hat.grad is not None and torch.count_nonzero(y_hat.grad) > 0
    assert y.grad is None  # the target embedding is detached (pSp)
    assert list(tiny_identity_loss.parameters()) == [] and tiny_identity_loss.state_dict() == {}
    tiny_identity_loss.train()
    assert not tiny_identity_loss.network.training


@pytest.mark.numerics
def test_identity_loss_from_weights_builds_frozen_ir_se50(
    random_ir_se50_file: tuple[Path, dict[str, torch.Tensor]]
) -> None:
    path, state = random_ir_se50_file
    loss = IdentityLoss.from_weights(path)
    assert isinstance(loss.network, IRSE50) and not loss.network.training
    assert torch.equal(loss.network.state_dict()["output_layer.3.bias"], state["output_layer.3.bias"])
    assert all(not p.requires_grad for p in loss.network.parameters())
    images = torch.rand(1, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        comparison = loss(images, images)
    assert comparison.similarity.item() == pytest.approx(1.0, abs=roundoff_bound(1.0, 2 * 512))


def test_weighted_loss_terms_build_the_identity_term_from_the_configured_file(
    random_ir_se50_file: tuple[Path, dict[str, torch.Tensor]]
) -> None:
    from losses import LossInputs, WeightedLossTerms

    path, _ = random_ir_se50_file
    loss = WeightedLossTerms({"l2": 0.0, "id": 0.25}, options={"id": {"weights": str(path)}})
    assert loss.active_terms == ("id",)
    torch.manual_seed(4)
    y_hat, y = torch.rand(1, 3, 256, 256) * 2 - 1, torch.rand(1, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        result = loss(LossInputs(reconstruction=y_hat, target=y))
        direct = loss.terms["id"].identity(y_hat, y)
    assert result.total.item() == pytest.approx(0.25 * direct.loss.item(), rel=1e-6)
    assert torch.equal(result.diagnostics["id_similarity"], direct.similarity)
    logs = result.log_dict("val/")
    assert logs["val/loss_id"].item() == pytest.approx(1 - direct.similarity.item(), rel=1e-5)
    assert "val/id_similarity" in logs
