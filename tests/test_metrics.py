"""Each metric against an independent reference: closed forms, scikit-image, the lpips package, scipy."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from skimage.metrics import structural_similarity
from torch import nn

from metrics import (
    DetectorAligner,
    EmptyMetricError,
    FaceReconstructionReferenceDepth,
    FaceReconstructionUnavailableError,
    FIDWeightsError,
    FrechetInceptionDistance,
    GeneratorReferenceDepth,
    GeometryError,
    IdentitySimilarity,
    InferenceTimer,
    LearnedPerceptualSimilarity,
    MeanSquaredError,
    MetricConfigError,
    MetricsConfig,
    OnnxFaceRecognizer,
    PeakSignalNoiseRatio,
    PixelScale,
    ReferenceCacheError,
    ReferenceKey,
    ReferenceStatisticsCache,
    StructuralSimilarity,
    build_metric_suite,
    files_fingerprint,
    identity_similarity_ir_se50,
    load_fid_inception,
    module_fingerprint,
    normalised_depth_error,
    prepare_reference,
)
from metrics.identity import ARCFACE_TEMPLATE_112
from tolerances import np_assert_close_roundoff, roundoff_bound

ROOT_RNG_SEED = 7


def random_pairs(count: int = 5, size: int = 32, seed: int = ROOT_RNG_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    rng = torch.Generator().manual_seed(seed)
    target = torch.rand(count, 3, size, size, generator=rng) * 2 - 1
    prediction = target + 0.3 * torch.randn(target.shape, generator=rng)  # some values outside [-1, 1]
    return prediction, target


def update_in_batches(metric: nn.Module, prediction: torch.Tensor, target: torch.Tensor, sizes=(2, 1, 2)) -> None:
    start = 0
    for size in sizes:
        metric.update(prediction[start:start + size], target[start:start + size])
        start += size
    assert start == prediction.shape[0]


def unit(images: torch.Tensor) -> np.ndarray:
    return np.clip((images.double().numpy() + 1) / 2, 0, 1)


# ------------------------------------------------------------------------------------ MSE, PSNR, SSIM


@pytest.mark.numerics
def test_mse_and_psnr_match_closed_form_per_image_means() -> None:
    prediction, target = random_pairs()
    per_image_mse = ((unit(prediction) - unit(target)) ** 2).reshape(5, -1).mean(axis=1)
    mse, signed_mse, psnr = MeanSquaredError(), MeanSquaredError(scale=PixelScale.SIGNED), PeakSignalNoiseRatio()
    for metric in (mse, signed_mse, psnr):
        update_in_batches(metric, prediction, target)
    assert float(mse.compute()) == pytest.approx(per_image_mse.mean(), rel=1e-6)
    assert float(signed_mse.compute()) == pytest.approx(4 * per_image_mse.mean(), rel=1e-6)
    assert float(psnr.compute()) == pytest.approx(np.mean(10 * np.log10(1 / per_image_mse)), rel=1e-6)
    # a mean of per-image PSNRs, not the PSNR of the mean MSE
    assert float(psnr.compute()) != pytest.approx(10 * math.log10(1 / per_image_mse.mean()), rel=1e-6)


@pytest.mark.numerics
def test_ssim_matches_scikit_image_with_gaussian_window() -> None:
    prediction, target = random_pairs()
    expected = [
        structural_similarity(unit(p), unit(t), gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                              data_range=1.0, channel_axis=0)
        for p, t in zip(prediction, target)
    ]
    metric = StructuralSimilarity()
    update_in_batches(metric, prediction, target)
    assert float(metric.compute()) == pytest.approx(np.mean(expected), abs=1e-5)


def test_empty_metric_raises() -> None:
    with pytest.raises(EmptyMetricError), pytest.warns(UserWarning):
        MeanSquaredError().compute()


# ------------------------------------------------------------------------------------ LPIPS


@pytest.mark.numerics
def test_lpips_matches_the_lpips_package_called_directly() -> None:
    import lpips

    prediction, target = random_pairs(size=64)
    torch.manual_seed(0)
    metric = LearnedPerceptualSimilarity("random")
    reference = lpips.LPIPS(pretrained=True, net="alex", version="0.1", pnet_rand=True, verbose=False).eval()
    reference.load_state_dict(metric.lpips.network.state_dict())
    update_in_batches(metric, prediction, target)
    with torch.no_grad():
        expected = reference(prediction.clamp(-1, 1), target.clamp(-1, 1)).flatten()
    assert float(metric.compute()) == pytest.approx(float(expected.mean()), rel=1e-5)
    assert metric.state_dict() == {} and list(metric.parameters()) == []


# ------------------------------------------------------------------------------------ FID


class TinyExtractor(nn.Module):
    num_features = 5

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(12, self.num_features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.linear(F.adaptive_avg_pool2d(images, 2).flatten(1)))


def scipy_fid(real: np.ndarray, fake: np.ndarray) -> float:
    mu_r, mu_f = real.mean(axis=0), fake.mean(axis=0)
    cov_r, cov_f = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    root = scipy.linalg.sqrtm(cov_r @ cov_f).real
    return float(((mu_r - mu_f) ** 2).sum() + np.trace(cov_r + cov_f - 2 * root))


@pytest.mark.numerics
def test_fid_matches_scipy_on_the_same_features() -> None:
    torch.manual_seed(0)
    extractor = TinyExtractor()
    prediction, target = random_pairs(count=9, size=16)
    metric = FrechetInceptionDistance(extractor)
    update_in_batches(metric, prediction, target, sizes=(4, 5))
    with torch.no_grad():
        real = extractor((target.clamp(-1, 1) + 1) / 2).double().numpy()
        fake = extractor((prediction.clamp(-1, 1) + 1) / 2).double().numpy()
    assert float(metric.compute()) == pytest.approx(scipy_fid(real, fake), rel=1e-4)
    assert metric.state_dict() == {} and list(metric.parameters()) == []


def test_fid_reference_cache_roundtrip_and_reset_keeps_reference(tmp_path: Path) -> None:
    torch.manual_seed(0)
    extractor = TinyExtractor()
    real_images, fake_images = random_pairs(count=6, size=16)
    key = ReferenceKey(real_set="set-a", extractor=module_fingerprint(extractor), resolution=16, num_features=5)
    cache = ReferenceStatisticsCache(tmp_path / "cache")
    metric = FrechetInceptionDistance(extractor)
    statistics = prepare_reference(metric, cache, key, [real_images[:3], real_images[3:]])
    assert statistics.count == 6 and cache.path(key).is_file()
    assert not list((tmp_path / "cache").glob("*.tmp"))

    def must_not_read():  # a cache hit never touches the real images
        raise AssertionError("real images were read on a cache hit")
        yield

    second = FrechetInceptionDistance(extractor)
    loaded = prepare_reference(second, cache, key, must_not_read())
    assert torch.equal(loaded.covariance, statistics.covariance)
    garbage_target = torch.zeros_like(fake_images)  # ignored: the reference replaces the real set
    second.update(fake_images, garbage_target)
    with torch.no_grad():
        real = extractor((real_images.clamp(-1, 1) + 1) / 2).double().numpy()
        fake = extractor((fake_images.clamp(-1, 1) + 1) / 2).double().numpy()
    assert float(second.compute()) == pytest.approx(scipy_fid(real, fake), rel=1e-4)
    second.reset()
    assert second.reference is not None
    second.update_fake(fake_images)
    assert float(second.compute()) == pytest.approx(scipy_fid(real, fake), rel=1e-4)
    second.update_fake(fake_images[:2])  # a cached compute() must not survive an update
    fake_more = np.concatenate([fake, fake[:2]])
    assert float(second.compute()) == pytest.approx(scipy_fid(real, fake_more), rel=1e-4)


def test_fid_cache_key_depends_on_content_extractor_and_resolution(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"one")
    (tmp_path / "b.png").write_bytes(b"two")
    content = files_fingerprint([tmp_path / "b.png", tmp_path / "a.png"], root=tmp_path)
    assert content == files_fingerprint([tmp_path / "a.png", tmp_path / "b.png"], root=tmp_path)
    (tmp_path / "b.png").write_bytes(b"tw0")
    assert files_fingerprint([tmp_path / "a.png", tmp_path / "b.png"], root=tmp_path) != content
    torch.manual_seed(0)
    first, second = TinyExtractor(), TinyExtractor()
    assert module_fingerprint(first) != module_fingerprint(second)
    base = ReferenceKey(real_set=content, extractor=module_fingerprint(first), resolution=256, num_features=5)
    variants = [ReferenceKey(content, module_fingerprint(second), 256, 5), ReferenceKey(content, base.extractor, 512, 5),
                ReferenceKey("other", base.extractor, 256, 5)]
    assert len({base.digest(), *(variant.digest() for variant in variants)}) == 4
    # a file that claims another key is refused, not silently used
    cache = ReferenceStatisticsCache(tmp_path)
    cache.store(variants[0], FeaturesFor.statistics())
    cache.path(variants[0]).rename(cache.path(base))
    with pytest.raises(ReferenceCacheError, match="delete it"):
        cache.load(base)


class FeaturesFor:
    @staticmethod
    def statistics():  # type: ignore[no-untyped-def]
        from metrics import FeatureStatistics

        return FeatureStatistics(mean=torch.zeros(5, dtype=torch.float64), covariance=torch.eye(5, dtype=torch.float64),
                                 count=3)


def test_fid_inception_layout_weights_file_and_errors(tmp_path: Path) -> None:
    torch.manual_seed(0)
    extractor = load_fid_inception("random")
    state = extractor.network.state_dict()
    # facts of the pt_inception/torch-fidelity file: torchvision key names, 1008 classes, no aux head
    assert state["fc.weight"].shape == (1008, 2048)
    assert state["Mixed_7c.branch_pool.conv.weight"].shape == (192, 2048, 1, 1)
    assert not any(key.startswith("AuxLogits") for key in state)
    file_state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}  # as in old files
    torch.save(file_state, tmp_path / "pt_inception-2015-12-05-6726825d.pth")
    loaded = load_fid_inception(tmp_path / "pt_inception-2015-12-05-6726825d.pth")
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        features = extractor(images)
        assert torch.equal(loaded(images), features)
    assert features.shape == (2, 2048) and torch.isfinite(features).all()

    with pytest.raises(FIDWeightsError, match="pt_inception-2015-12-05-6726825d.pth.*torch-fidelity"):
        load_fid_inception(tmp_path / "missing.pth")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(FIDWeightsError, match="not the FID Inception"):
        load_fid_inception(tmp_path / "wrong.pth")


@pytest.mark.numerics
def test_fid_inception_blocks_pool_like_tensorflow() -> None:
    from torchvision.models.inception import InceptionA

    torch.manual_seed(0)
    ours = load_fid_inception("random").network.Mixed_5b.eval()
    plain = InceptionA(192, pool_features=32).eval()
    plain.load_state_dict(ours.state_dict())
    x = torch.rand(1, 192, 6, 6) + 0.5
    with torch.no_grad():
        ours_out, plain_out = ours(x), plain(x)
    pool = slice(224, 256)  # the pool branch's 32 channels come last
    assert torch.allclose(ours_out[:, :224], plain_out[:, :224])
    # the TF pool ignores padding: same in the interior, different on the border
    assert torch.allclose(ours_out[:, pool, 1:-1, 1:-1], plain_out[:, pool, 1:-1, 1:-1])
    assert not torch.allclose(ours_out[:, pool, 0], plain_out[:, pool, 0])


# ------------------------------------------------------------------------------------ identity


class TinyRecognizer(nn.Module):
    """112x112 faces -> 8-d embeddings; zero (a failure) for very dark faces, NaN for very bright ones."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(48, 8)

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        embedding = self.linear(F.adaptive_avg_pool2d(faces, 4).flatten(1))
        brightness = faces.mean(dim=(1, 2, 3))
        embedding = torch.where((brightness < -0.9)[:, None], torch.zeros_like(embedding), embedding)
        return torch.where((brightness > 0.9)[:, None], torch.full_like(embedding, float("nan")), embedding)


def psp_crop_by_hand(images: torch.Tensor) -> torch.Tensor:
    return F.adaptive_avg_pool2d(images.clamp(-1, 1)[:, :, 35:223, 32:220], 112)


@pytest.mark.numerics
def test_identity_is_cosine_by_hand_and_counts_failures() -> None:
    torch.manual_seed(0)
    recognizer = TinyRecognizer()
    prediction, target = random_pairs(count=5, size=256)
    prediction[1] = -1.0  # no embedding for this reconstruction
    target[3] = 1.0  # NaN embedding for this target
    metric = IdentitySimilarity(recognizer)
    update_in_batches(metric, prediction, target)
    with torch.no_grad():
        a = recognizer(psp_crop_by_hand(prediction)).double().numpy()
        b = recognizer(psp_crop_by_hand(target)).double().numpy()
    cosines = [float(a[i] @ b[i] / np.linalg.norm(a[i]) / np.linalg.norm(b[i])) for i in (0, 2, 4)]
    assert float(metric.compute()) == pytest.approx(np.mean(cosines), rel=1e-5)
    report = metric.report()
    assert (report.evaluated, report.failed_pairs, report.failed_predictions, report.failed_targets) == (3, 2, 1, 1)
    assert report.mean_similarity == pytest.approx(np.mean(cosines), rel=1e-5)
    per_image = metric.per_image(prediction, target)
    assert torch.isnan(per_image.similarity[[1, 3]]).all() and torch.isfinite(per_image.similarity[[0, 2, 4]]).all()


def test_identity_ir_se50_default_is_frozen_and_not_saved() -> None:
    torch.manual_seed(0)
    metric = identity_similarity_ir_se50("random")
    holder = nn.Module()
    holder.metric = metric
    holder.train()
    network = metric.frozen_networks[0]
    assert not network.training and not any(p.requires_grad for p in network.parameters())
    assert holder.state_dict() == {} and list(holder.parameters()) == []
    image = random_pairs(count=2, size=256)[1]
    metric.update(image, image)
    assert float(metric.compute()) == pytest.approx(1.0, abs=1e-5)


def _onnx_recognizer(path: Path, with_scaling: bool) -> np.ndarray:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    nodes, initializers, source = [], [numpy_helper.from_array(weight, "W")], "data"
    if with_scaling:  # insightface models that normalise inside the graph start with Sub and Mul nodes
        initializers += [numpy_helper.from_array(np.array(127.5, np.float32), "mean"),
                         numpy_helper.from_array(np.array(1 / 127.5, np.float32), "scale")]
        nodes += [helper.make_node("Sub", ["data", "mean"], ["centred"], name="Sub_0"),
                  helper.make_node("Mul", ["centred", "scale"], ["scaled"], name="Mul_1")]
        source = "scaled"
    nodes += [helper.make_node("GlobalAveragePool", [source], ["pooled"], name="pool"),
              helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
              helper.make_node("MatMul", ["flat", "W"], ["embedding"], name="project")]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("data", TensorProto.FLOAT, [None, 3, 112, 112])],
                              [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [None, 4])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return weight


@pytest.mark.numerics
def test_identity_onnx_recognizer_matches_numpy_and_input_scaling(tmp_path: Path) -> None:
    weight = _onnx_recognizer(tmp_path / "w600k_r50.onnx", with_scaling=False)
    _onnx_recognizer(tmp_path / "scaled.onnx", with_scaling=True)
    pack = OnnxFaceRecognizer(tmp_path)  # a pack folder: finds w600k_r50.onnx
    scaled = OnnxFaceRecognizer(tmp_path / "scaled.onnx")
    assert not pack.takes_raw_pixels and scaled.takes_raw_pixels
    faces = torch.rand(3, 3, 112, 112) * 2 - 1
    expected = faces.mean(dim=(2, 3)).numpy() @ weight
    # Rule 2 of tests/README.md: onnxruntime's kernels differ by CPU; a mean over 112 x 112 pixels and a
    # 3-term product; the raw-pixel graph rescales first (2 more roundings of values up to 255).
    np_assert_close_roundoff(pack(faces).numpy(), expected, roundings=112 * 112 + 3)
    np.testing.assert_allclose(
        scaled(faces).numpy(), expected, rtol=0, atol=roundoff_bound(expected, 112 * 112 + 5, path_magnitude=255.0)
    )
    prediction, target = random_pairs(count=3, size=256)
    metric = IdentitySimilarity(pack)
    metric.update(prediction, target)
    a = psp_crop_by_hand(prediction).mean(dim=(2, 3)).numpy() @ weight
    b = psp_crop_by_hand(target).mean(dim=(2, 3)).numpy() @ weight
    cosines = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert float(metric.compute()) == pytest.approx(cosines.mean(), rel=1e-4)
    with pytest.raises(RuntimeError, match="buffalo_l"):
        OnnxFaceRecognizer(tmp_path / "empty_pack")


def test_detector_aligner_warps_onto_template_and_reports_missing_faces() -> None:
    class FakeDetection:
        landmarks5 = ARCFACE_TEMPLATE_112 * 2.0  # the face at twice the template's scale

    class FakeDetector:
        def detect(self, rgb: np.ndarray) -> list[FakeDetection]:
            return [FakeDetection()] if rgb.mean() > 10 else []

    images = torch.rand(2, 3, 224, 224) * 2 - 1
    images[1] = -1.0  # black: no face found
    aligned = DetectorAligner(FakeDetector()).align(images)
    assert aligned.found.tolist() == [True, False]
    # face pixel (x, y) is image pixel (2x, 2y) of the 8-bit image
    expected = ((images[0] + 1) * 127.5).round()[:, ::2, ::2] / 127.5 - 1
    assert torch.allclose(aligned.faces[0], expected, atol=0.02)
    assert aligned.faces[1].abs().max() == 0


# ------------------------------------------------------------------------------------ geometry


@pytest.mark.numerics
def test_geometry_error_by_hand_with_mask_and_invariances() -> None:
    rng = np.random.default_rng(0)
    reference = rng.random((3, 1, 8, 8)) + 2
    predicted = reference + 0.2 * rng.standard_normal(reference.shape)
    mask = rng.random((3, 1, 8, 8)) > 0.3
    expected = []
    for i in range(3):
        d, r = predicted[i][mask[i]], reference[i][mask[i]]
        expected.append(np.mean(((d - d.mean()) / d.std() - (r - r.mean()) / r.std()) ** 2))
    metric = GeometryError()
    metric.update(torch.tensor(predicted[:2]), torch.tensor(reference[:2]), torch.tensor(mask[:2]))
    metric.update(torch.tensor(predicted[2:]), torch.tensor(reference[2:]), torch.tensor(mask[2:]))
    assert float(metric.compute()) == pytest.approx(np.mean(expected), rel=1e-5)
    # scale and offset do not matter; per-image values are exposed
    affine = normalised_depth_error(torch.tensor(3.0 * reference + 5.0), torch.tensor(reference))
    assert torch.allclose(affine.error, torch.zeros(3, dtype=affine.error.dtype), atol=1e-6)
    # a flat depth cannot be normalised: counted as a failure, not averaged
    flat = torch.tensor(predicted).clone()
    flat[1] = 2.5
    counted = GeometryError()
    counted.update(flat, torch.tensor(reference), torch.tensor(mask))
    report = counted.report()
    assert (report.evaluated, report.failures) == (2, 1)
    assert report.mean_error == pytest.approx(np.mean([expected[0], expected[2]]), rel=1e-5)
    # a 128-style low-resolution prediction is resized to the reference
    assert normalised_depth_error(torch.rand(2, 4, 4), torch.rand(2, 1, 8, 8)).valid.all()


def test_reference_depth_providers() -> None:
    class FakeGenerator(nn.Module):
        def synthesis(self, ws, c, noise_mode="const"):  # type: ignore[no-untyped-def]
            class Output:
                image_depth = ws[:, :1, :4].reshape(-1, 1, 2, 2) + c[:, :1, None, None]
            return Output()

    class Batch:
        ws_true = torch.arange(8.0).reshape(1, 2, 4)
        camera = torch.full((1, 25), 1.0)

    provided = GeneratorReferenceDepth(FakeGenerator(), foreground_threshold=2.5).reference_depth(Batch())
    assert provided.depth.flatten().tolist() == [1.0, 2.0, 3.0, 4.0]
    assert provided.mask.flatten().tolist() == [True, True, False, False]
    with pytest.raises(FaceReconstructionUnavailableError, match="Deep3DFaceRecon"):
        FaceReconstructionReferenceDepth("/nowhere/epoch_20.pth")


# ------------------------------------------------------------------------------------ timing


def test_timer_excludes_warmup_and_reports_per_image_mean_and_median() -> None:
    ticks = iter([0.0, 10.0, 10.0, 12.0, 12.0, 13.0, 13.0, 16.0])  # batch times 10 (warm-up), 2, 1, 3
    synchronised: list[int] = []
    timer = InferenceTimer(warmup_batches=1, clock=lambda: next(ticks), synchronize=lambda: synchronised.append(1))
    for batch_size in (4, 2, 1, 3):
        with timer.measure(batch_size=batch_size):
            pass
    summary = timer.summary()
    assert len(synchronised) == 8  # before start and before stop of every batch
    assert (summary.timed_batches, summary.timed_images, summary.warmup_batches) == (3, 6, 1)
    assert summary.mean_seconds_per_image == pytest.approx(6.0 / 6)
    assert summary.median_seconds_per_image == pytest.approx(1.0)  # median of 1.0, 1.0, 1.0
    assert math.isnan(InferenceTimer().summary().mean_seconds_per_image)


# ------------------------------------------------------------------------------------ collection


def test_suite_from_names_keeps_networks_out_of_checkpoints(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = MetricsConfig(lpips_backbone_weights="random")
    suite = build_metric_suite(
        ["mse", "psnr", "ssim", "lpips", "id", "fid", "geometry"], config,
        prebuilt={"id": IdentitySimilarity(TinyRecognizer()), "fid": FrechetInceptionDistance(TinyExtractor())},
    )
    module = nn.Module()
    module.metrics = suite
    module.train()
    assert module.state_dict() == {} and list(module.parameters()) == []
    assert all(not network.training for name in ("lpips", "id", "fid") for network in suite[name].frozen_networks)
    prediction, target = random_pairs(count=3, size=256)
    suite.update_images(prediction, target)
    suite.update_depths(torch.rand(3, 1, 8, 8), torch.rand(3, 1, 8, 8))
    results = suite.compute()
    assert {"mse", "psnr", "ssim", "lpips", "id", "id/failed_pairs", "fid", "geometry", "geometry/failures"} <= set(results)
    assert results["mse"] == pytest.approx(float(((unit(prediction) - unit(target)) ** 2).mean()), rel=1e-6)
    suite.reset()
    assert suite["mse"].image_count == 0
    with pytest.raises(MetricConfigError, match="unknown metric 'psrn'"):
        build_metric_suite(["psrn"])
    with pytest.raises(MetricConfigError, match="model_ir_se50.pth"):
        build_metric_suite(["id"], MetricsConfig())
