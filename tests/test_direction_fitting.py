"""Direction fitting: reproducible sampling, score files, extremes, SVM recovery of a planted direction."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from inversion.direction_fitting import (
    SamplingOptions,
    SvmOptions,
    fit_direction,
    latent_codes,
    load_scores,
    main,
    rendered_image_scorer,
    sample_and_score,
    sample_canonical_w,
    select_extremes,
)
from inversion.editing import load_direction
from networks.eg3d.configs import generator_from_config
from tolerances import np_assert_close_roundoff, roundoff_bound


class GaussianMappingStub(nn.Module):
    """Mapping z -> w = z broadcast over 14 layers: isotropic Gaussian latents spanning all 512 dims."""

    z_dim, num_ws, w_dim = 512, 14, 512

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("w_avg", torch.zeros(512))

    def mapping(self, z: torch.Tensor, c: torch.Tensor, truncation_psi: float = 1.0) -> torch.Tensor:
        assert c.shape == (z.shape[0], 25)
        return z[:, None, :].expand(-1, self.num_ws, -1)


def planted_scores(latents: np.ndarray, direction: np.ndarray, noise: float = 0.05) -> np.ndarray:
    centred = latents - latents.mean(axis=0)
    projection = centred @ direction
    return projection + noise * projection.std() * np.random.default_rng(0).standard_normal(len(latents))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.numerics
def test_sample_i_does_not_depend_on_how_samples_are_batched() -> None:
    everything = latent_codes(8, 0, 3000, latent_seed=3)
    assert torch.equal(latent_codes(8, 1000, 2100, latent_seed=3), everything[1000:2100])
    assert not torch.equal(latent_codes(8, 0, 10, latent_seed=4), everything[:10])
    G = generator_from_config("tiny", random_init=True)
    small_batches = sample_canonical_w(G, SamplingOptions(num_samples=40, batch_size=7))
    one_batch = sample_canonical_w(G, SamplingOptions(num_samples=40, batch_size=64))
    assert small_batches.shape == (40, 512)
    # rule 2: other batch sizes, other GEMM kernels; the tiny mapping: 8 layers x 512 + the c embedding
    np_assert_close_roundoff(small_batches, one_batch, roundings=8 * 512 + 25)


def test_select_extremes_ignores_unscored_samples() -> None:
    scores = np.array([0.5, np.nan, 3.0, -1.0, 2.0, np.nan, -4.0])
    positive, negative = select_extremes(scores, top_k=2)
    assert set(positive) == {2, 4} and set(negative) == {6, 3}
    with pytest.raises(ValueError, match="only 5 have a finite score"):
        select_extremes(scores, top_k=3)


def test_scores_from_csv_and_npy(tmp_path: Path) -> None:
    (tmp_path / "s.csv").write_text("index,score,extra\n3,0.5,x\n0,-1.5,y\n9,7,z\n")
    scores = load_scores(tmp_path / "s.csv", num_samples=5)
    np.testing.assert_array_equal(scores[[0, 3]], [-1.5, 0.5])
    assert np.isnan(scores[[1, 2, 4]]).all()
    np.save(tmp_path / "s.npy", np.arange(10.0))
    np.testing.assert_array_equal(load_scores(tmp_path / "s.npy", 6), np.arange(6.0))
    with pytest.raises(ValueError, match="at least 20"):
        load_scores(tmp_path / "s.npy", 20)
    (tmp_path / "bad.csv").write_text("sample,value\n1,2\n")
    with pytest.raises(ValueError, match="'index' and 'score'"):
        load_scores(tmp_path / "bad.csv", 5)


def test_svm_recovers_a_planted_direction_from_a_scoring_callable() -> None:
    stub = GaussianMappingStub()
    planted = np.random.default_rng(7).standard_normal(512)
    planted /= np.linalg.norm(planted)

    def scorer(ws: torch.Tensor) -> torch.Tensor:  # a "classifier" that reads the planted attribute
        return ws[:, 0] @ torch.from_numpy(planted).float() + 0.05 * torch.randn(ws.shape[0])

    latents, scores = sample_and_score(stub, scorer, SamplingOptions(num_samples=4000, batch_size=1000))
    fitted = fit_direction(latents, scores, SvmOptions(top_k=1000, C=0.01))
    assert cosine(fitted.direction, planted) > 0.9  # sign included: points towards higher scores
    assert np.linalg.norm(fitted.direction) == pytest.approx(1.0, abs=1e-6)
    assert fitted.train_accuracy > 0.95 and fitted.validation_accuracy > 0.9
    assert fitted.num_positive == fitted.num_negative == 1000


def test_cli_on_the_tiny_generator_recovers_a_planted_direction(tmp_path: Path) -> None:
    G = generator_from_config("tiny", random_init=True)
    options = SamplingOptions(num_samples=3000, batch_size=500, latent_seed=2)
    latents = sample_canonical_w(G, options)
    # The tiny mapping's w fill a ~64-dim manifold of the 512-dim space, so only directions along the
    # data are identifiable: plant one (a sample's offset from the mean).
    planted = latents[0] - latents.mean(axis=0)
    planted /= np.linalg.norm(planted)
    scores, out = tmp_path / "scores.npy", tmp_path / "dirs" / "attr.npy"
    np.save(scores, planted_scores(latents, planted))
    main(["--generator", "tiny", "--random-init", "--num-samples", "3000", "--batch-size", "700",
          "--latent-seed", "2", "--scores", str(scores), "--top-k", "750", "--out", str(out)])
    saved = np.load(out, allow_pickle=False)
    assert saved.shape == (1, 14, 512) and saved.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(saved[0], axis=1), 1.0, atol=roundoff_bound(1.0, 2 * 512))  # float32 file
    assert (saved[0] == saved[0, :1]).all()
    assert cosine(saved[0, 0], planted) > 0.9
    metadata = json.loads(out.with_suffix(".json").read_text())
    assert metadata["top_k"] == 750 and metadata["num_samples"] == 3000 and metadata["train_accuracy"] > 0.9
    assert load_direction(out).delta.shape == (14, 512)  # usable as an edit direction


def test_rendered_image_scorer_scores_canonical_renders() -> None:
    G = generator_from_config("tiny", random_init=True)
    seen: list[tuple[int, ...]] = []

    def brightness(images: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(images.shape))
        return images.mean(dim=(1, 2, 3))

    options = SamplingOptions(num_samples=3, batch_size=2)
    latents, scores = sample_and_score(G, rendered_image_scorer(G, brightness), options)
    assert seen == [(2, 3, 64, 64), (1, 3, 64, 64)]
    assert latents.shape == (3, 512) and scores.shape == (3,) and np.isfinite(scores).all()
