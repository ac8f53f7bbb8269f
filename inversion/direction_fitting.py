"""Fitting an InterfaceGAN edit direction with a linear SVM (GOAE Appendix A, "Editing").

Recipe of the paper: sample latents conditioned on the canonical (frontal) camera, score each
sample with an attribute classifier, keep the top and bottom K by score (10,000 each of 500,000),
fit a linear SVM separating them; the unit normal of its hyperplane is the edit direction.

Sample i is always the same latent for a given ``latent_seed`` (z is drawn in fixed blocks, not in
the batches the mapping runs in), so scores computed elsewhere (a CSV/NPY keyed by sample index)
line up with the latents sampled here. The mapping broadcasts one w to all layers (no truncation
cutoff), so one 512-d w per sample is kept and the fitted direction is repeated over the 14 layers.

CLI (scores from a file)::

    python -m inversion.direction_fitting --generator tiny --random-init --num-samples 2000 \
        --scores scores.npy --top-k 500 --out smile.npy

writes smile.npy (float32, (1, num_ws, w_dim), unit norm per layer) and smile.json (metadata).
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from cameras import canonical_camera_label
from networks.eg3d.generator import TriPlaneGenerator

PAPER_NUM_SAMPLES = 500_000
PAPER_TOP_K = 10_000
# z is drawn in blocks of this many samples, each from its own seed, so sample i does not
# depend on the batch size of the mapping.
Z_BLOCK = 1024

LatentScorer = Callable[[torch.Tensor], torch.Tensor]
"""ws [B, num_ws, w_dim] -> attribute scores [B] (higher = more of the attribute)."""

ImageClassifier = Callable[[torch.Tensor], torch.Tensor]
"""images [B, 3, H, W] in [-1, 1] -> attribute scores [B]."""


@dataclass(frozen=True)
class SamplingOptions:
    num_samples: int = PAPER_NUM_SAMPLES
    batch_size: int = 1024
    latent_seed: int = 0
    truncation_psi: float = 1.0

    def __post_init__(self) -> None:
        if self.num_samples < 2 or self.batch_size < 1:
            raise ValueError(
                f"need num_samples >= 2 and batch_size >= 1, got {self.num_samples}, {self.batch_size}"
            )


@dataclass(frozen=True)
class SvmOptions:
    top_k: int = PAPER_TOP_K
    C: float = 1.0  # SVM regularisation (scikit-learn's C)
    validation_fraction: float = 0.2  # of the selected samples, held out to report accuracy
    split_seed: int = 0  # of the train/validation split

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.C <= 0 or not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"invalid SVM options {self}")


@dataclass(frozen=True)
class FittedDirection:
    direction: np.ndarray  # [w_dim] float32, unit norm, pointing towards higher scores
    train_accuracy: float
    validation_accuracy: float | None  # None when validation_fraction is 0
    num_positive: int
    num_negative: int


# ----------------------------------------------------------------------------- sampling
def latent_codes(z_dim: int, start: int, stop: int, latent_seed: int) -> torch.Tensor:
    """z of samples start..stop-1, [stop - start, z_dim]; sample i is the same for any start/stop."""
    blocks = []
    for block in range(start // Z_BLOCK, (stop - 1) // Z_BLOCK + 1):
        rng = np.random.default_rng([latent_seed, block])
        block_z = rng.standard_normal((Z_BLOCK, z_dim), dtype=np.float32)
        lo = max(start - block * Z_BLOCK, 0)
        hi = min(stop - block * Z_BLOCK, Z_BLOCK)
        blocks.append(block_z[lo:hi])
    return torch.from_numpy(np.concatenate(blocks))


@torch.no_grad()
def canonical_latents(G: TriPlaneGenerator, start: int, stop: int, options: SamplingOptions) -> torch.Tensor:
    """ws [stop - start, num_ws, w_dim] of samples start..stop-1, mapped with the canonical camera."""
    device = G.w_avg.device
    z = latent_codes(G.z_dim, start, stop, options.latent_seed).to(device)
    c = canonical_camera_label(stop - start, device=device)
    return G.mapping(z, c, truncation_psi=options.truncation_psi)


@torch.no_grad()
def sample_canonical_w(G: TriPlaneGenerator, options: SamplingOptions) -> np.ndarray:
    """[num_samples, w_dim] float32: the (layer-shared) w of every sample."""
    rows = []
    for start in range(0, options.num_samples, options.batch_size):
        stop = min(start + options.batch_size, options.num_samples)
        rows.append(canonical_latents(G, start, stop, options)[:, 0].float().cpu().numpy())
    return np.concatenate(rows)


@torch.no_grad()
def sample_and_score(
    G: TriPlaneGenerator, scorer: LatentScorer, options: SamplingOptions
) -> tuple[np.ndarray, np.ndarray]:
    """w [num_samples, w_dim] and scores [num_samples] from ``scorer``, batch by batch."""
    latents, scores = [], []
    for start in range(0, options.num_samples, options.batch_size):
        stop = min(start + options.batch_size, options.num_samples)
        ws = canonical_latents(G, start, stop, options)
        batch_scores = torch.as_tensor(scorer(ws)).reshape(-1)
        if batch_scores.shape[0] != stop - start:
            raise ValueError(f"scorer returned {batch_scores.shape[0]} scores for {stop - start} samples")
        latents.append(ws[:, 0].float().cpu().numpy())
        scores.append(batch_scores.float().cpu().numpy())
    return np.concatenate(latents), np.concatenate(scores)


def rendered_image_scorer(G: TriPlaneGenerator, classifier: ImageClassifier) -> LatentScorer:
    """Scores from an image classifier applied to renders at the canonical camera."""

    @torch.no_grad()
    def score(ws: torch.Tensor) -> torch.Tensor:
        c = canonical_camera_label(ws.shape[0], device=ws.device)
        return classifier(G.synthesis(ws, c).image)

    return score


# ----------------------------------------------------------------------------- scores from files
def load_scores(path: str | Path, num_samples: int) -> np.ndarray:
    """Scores [num_samples] keyed by sample index; NaN for samples the file does not score.

    ``.npy``: a 1-D array, entry i = sample i (at least num_samples long). ``.csv``: a header with
    columns ``index`` and ``score``, one row per scored sample, any order.
    """
    path = Path(path)
    if path.suffix.lower() == ".npy":
        values = np.load(path, allow_pickle=False).astype(np.float64)
        if values.ndim != 1 or values.shape[0] < num_samples:
            raise ValueError(
                f"{path}: expected a 1-D array of at least {num_samples} scores, got shape {values.shape}"
            )
        return values[:num_samples]
    if path.suffix.lower() == ".csv":
        return _scores_from_csv(path, num_samples)
    raise ValueError(f"{path}: scores must be a .npy or .csv file")


def _scores_from_csv(path: Path, num_samples: int) -> np.ndarray:
    scores = np.full(num_samples, np.nan)
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"index", "score"} <= set(reader.fieldnames):
            raise ValueError(
                f"{path}: the CSV needs a header with columns 'index' and 'score', got {reader.fieldnames}"
            )
        for row in reader:
            index = int(row["index"])
            if 0 <= index < num_samples:
                scores[index] = float(row["score"])
    return scores


# ----------------------------------------------------------------------------- selection and SVM
def select_extremes(scores: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the ``top_k`` highest and lowest finite scores (ties broken by sample index)."""
    valid = np.flatnonzero(np.isfinite(scores))
    if valid.size < 2 * top_k:
        raise ValueError(
            f"top_k={top_k} needs {2 * top_k} scored samples, only {valid.size} have a finite score"
        )
    order = valid[np.argsort(scores[valid], kind="stable")]
    return order[-top_k:], order[:top_k]


def fit_linear_svm(
    latents: np.ndarray, positive: np.ndarray, negative: np.ndarray, options: SvmOptions
) -> FittedDirection:
    """Linear SVM between latents[positive] (label 1) and latents[negative] (label 0)."""
    from sklearn.svm import LinearSVC  # local import: scikit-learn is only needed here

    x = np.concatenate([latents[positive], latents[negative]]).astype(np.float64)
    y = np.concatenate([np.ones(len(positive)), np.zeros(len(negative))])
    # Centre the data: w-space is far from the origin and liblinear penalises the intercept too.
    x = x - x.mean(axis=0, keepdims=True)
    train, validation = _split(len(y), options)
    svm = LinearSVC(C=options.C, max_iter=20_000).fit(x[train], y[train])
    normal = svm.coef_[0]
    norm = float(np.linalg.norm(normal))
    if norm == 0.0:
        raise ValueError("the SVM found no separating direction (all-zero normal); check the scores")
    return FittedDirection(
        direction=(normal / norm).astype(np.float32),
        train_accuracy=float(svm.score(x[train], y[train])),
        validation_accuracy=float(svm.score(x[validation], y[validation])) if len(validation) else None,
        num_positive=len(positive),
        num_negative=len(negative),
    )


def _split(count: int, options: SvmOptions) -> tuple[np.ndarray, np.ndarray]:
    permutation = np.random.default_rng(options.split_seed).permutation(count)
    num_validation = int(round(options.validation_fraction * count))
    return permutation[num_validation:], permutation[:num_validation]


def fit_direction(latents: np.ndarray, scores: np.ndarray, options: SvmOptions) -> FittedDirection:
    """Select the extremes of ``scores`` and fit the SVM on their latents [num_samples, w_dim]."""
    if latents.shape[0] != scores.shape[0]:
        raise ValueError(f"{latents.shape[0]} latents but {scores.shape[0]} scores")
    positive, negative = select_extremes(scores, options.top_k)
    return fit_linear_svm(latents, positive, negative, options)


def save_direction(path: str | Path, fitted: FittedDirection, num_ws: int, metadata: dict) -> Path:
    """Write the direction as float32 (1, num_ws, w_dim) .npy and its metadata as .json beside it."""
    path = Path(path)
    if path.suffix != ".npy":
        raise ValueError(f"{path}: the direction file must end in .npy")
    path.parent.mkdir(parents=True, exist_ok=True)
    layers = np.broadcast_to(fitted.direction, (1, num_ws, fitted.direction.shape[0])).astype(np.float32)
    np.save(path, layers)
    record = {k: v for k, v in asdict(fitted).items() if k != "direction"} | dict(metadata)
    metadata_path = path.with_suffix(".json")
    metadata_path.write_text(json.dumps(record, indent=2, sort_keys=True))
    return metadata_path


# ----------------------------------------------------------------------------- CLI
def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generator", default="ffhq512-128", help="config name (networks/eg3d/configs.py)")
    parser.add_argument("--checkpoint", default=None, help="generator .pkl or converted state dict")
    parser.add_argument("--random-init", action="store_true", help="random generator weights (tests)")
    parser.add_argument("--generator-seed", type=int, default=0, help="seed of the random generator weights")
    parser.add_argument("--num-samples", type=int, default=PAPER_NUM_SAMPLES)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--latent-seed", type=int, default=0)
    parser.add_argument("--truncation-psi", type=float, default=1.0)
    parser.add_argument("--scores", required=True, help=".npy (entry i = sample i) or .csv (index,score)")
    parser.add_argument("--top-k", type=int, default=PAPER_TOP_K)
    parser.add_argument("--C", type=float, default=1.0, help="SVM regularisation")
    parser.add_argument("--validation-fraction", type=float, default=0.2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", required=True, help="direction .npy to write (+ metadata .json beside it)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> Path:
    from networks.eg3d.configs import generator_from_config  # local import: only the CLI builds generators

    args = _parse_args(argv)
    G = generator_from_config(args.generator, args.checkpoint, args.random_init, args.generator_seed)
    G = G.to(args.device)
    sampling = SamplingOptions(args.num_samples, args.batch_size, args.latent_seed, args.truncation_psi)
    svm_options = SvmOptions(top_k=args.top_k, C=args.C, validation_fraction=args.validation_fraction)
    latents = sample_canonical_w(G, sampling)
    fitted = fit_direction(latents, load_scores(args.scores, sampling.num_samples), svm_options)
    metadata = {
        "generator": args.generator, "checkpoint": args.checkpoint, "random_init": args.random_init,
        "generator_seed": args.generator_seed, "scores": str(args.scores),
        **asdict(sampling), **asdict(svm_options),
    }
    metadata_path = save_direction(args.out, fitted, G.num_ws, metadata)
    print(f"direction -> {args.out} (train accuracy {fitted.train_accuracy:.3f}, "
          f"validation accuracy {fitted.validation_accuracy}); metadata -> {metadata_path}")
    return Path(args.out)


if __name__ == "__main__":
    main()
