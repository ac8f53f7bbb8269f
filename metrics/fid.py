"""FID with our own FID-Inception feature extractor and cached reference statistics, DDP-correct.

Feature extractor
    :class:`FIDInceptionV3` is torchvision's Inception-v3 layout patched into the network of the
    TensorFlow FID code (``inception-2015-12-05``), the network that pytorch-fid and torch-fidelity
    (hence torchmetrics' default FID) use: 1008 classes, no auxiliary head, and in Mixed_5b-5d,
    Mixed_6b-6e and Mixed_7b the 3x3 average pool ignores the zero padding (TensorFlow's pooling),
    while Mixed_7c max-pools instead. Its state-dict keys are torchvision's, so it loads
    pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` and torch-fidelity's
    ``weights-inception-2015-12-05-6726825d.pth`` (the same conversion) strictly. Features are the
    2048-d pool3 activations. Input: images in [0, 1] are resized to 299x299 (bilinear, no
    antialiasing, as pytorch-fid) and mapped to [-1, 1]. torch-fidelity instead quantises to uint8 and
    uses TF1-style resizing, so numbers are close to, not identical with, torch-fidelity/torchmetrics
    and NVIDIA's EG3D FID (their own TF-Inception pickle). Tables must say which FID produced them.

Reference statistics
    The real set's mean and covariance depend only on the real images, the extractor weights and the
    resolution, so they are cached (:class:`ReferenceStatisticsCache`): the file name is a hash of
    (content hash of the real set, hash of the extractor's weights, resolution, feature dimension),
    the key is stored inside and checked on load, and the file is written atomically (temporary file in
    the same folder + ``os.replace``), so concurrent writers (every DDP rank) cannot leave a torn file.

DDP
    Feature sums are ``dist_reduce_fx="sum"`` states, reduced in ``compute()`` (call it on every
    rank). Loaded reference statistics are deliberately NOT states: every rank holds the same copy, and
    a summed state would count them world-size times. They survive ``reset()`` (torchmetrics'
    ``reset_real_features=False`` behaviour).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from losses.frozen import RANDOM_INIT, PretrainedWeightsError, describe_key_mismatch, read_state_dict_file
from metrics.base import EmptyMetricError, FrozenNetworksMetric, check_images, to_unit_range

FID_INCEPTION_ORIGIN = (
    "the FID Inception-v3 (TensorFlow inception-2015-12-05) as a PyTorch state dict: pytorch-fid's "
    "pt_inception-2015-12-05-6726825d.pth (https://github.com/mseitzer/pytorch-fid/releases/download/"
    "fid_weights/pt_inception-2015-12-05-6726825d.pth) or torch-fidelity's "
    "weights-inception-2015-12-05-6726825d.pth (https://github.com/toshas/torch-fidelity/releases/download/"
    "v0.2.0/weights-inception-2015-12-05-6726825d.pth)"
)
INCEPTION_INPUT_SIZE = 299
INCEPTION_FEATURES = 2048
INCEPTION_CLASSES = 1008
CACHE_FORMAT_VERSION = 1


class FIDWeightsError(PretrainedWeightsError):
    """The configured FID Inception file is missing or is not the FID Inception-v3."""


class ReferenceCacheError(RuntimeError):
    """A reference-statistics cache file does not belong to the requested key or is unreadable."""


# ---------------------------------------------------------------------------------------------
# Feature extractor


def _tf_average_pool(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's SAME-padded average pool divides by the number of real (non-padding) pixels.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


def _max_pool(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)


def _patched_inception_blocks() -> tuple[type[nn.Module], type[nn.Module], type[nn.Module]]:
    """torchvision's InceptionA/C/E with the pool branch of the TF FID graph (torchvision imported lazily)."""
    from torchvision.models.inception import InceptionA, InceptionC, InceptionE

    class TFPoolInceptionA(InceptionA):
        def __init__(self, in_channels: int, pool_features: int) -> None:
            super().__init__(in_channels, pool_features)

        def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
            branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
            return [self.branch1x1(x), branch5x5, branch3x3dbl, self.branch_pool(_tf_average_pool(x))]

    class TFPoolInceptionC(InceptionC):
        def __init__(self, in_channels: int, channels_7x7: int) -> None:
            super().__init__(in_channels, channels_7x7)

        def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
            branch7x7dbl = x
            for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                          self.branch7x7dbl_5):
                branch7x7dbl = layer(branch7x7dbl)
            return [self.branch1x1(x), branch7x7, branch7x7dbl, self.branch_pool(_tf_average_pool(x))]

    class TFPoolInceptionE(InceptionE):
        """``use_max_pool``: Mixed_7c of the TF graph max-pools its pool branch."""

        def __init__(self, in_channels: int, use_max_pool: bool) -> None:
            super().__init__(in_channels)
            self.pool = _max_pool if use_max_pool else _tf_average_pool

        def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            stem = self.branch3x3_1(x)
            branch3x3 = torch.cat([self.branch3x3_2a(stem), self.branch3x3_2b(stem)], 1)
            dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
            branch3x3dbl = torch.cat([self.branch3x3dbl_3a(dbl), self.branch3x3dbl_3b(dbl)], 1)
            return [self.branch1x1(x), branch3x3, branch3x3dbl, self.branch_pool(self.pool(x))]

    return TFPoolInceptionA, TFPoolInceptionC, TFPoolInceptionE


class FIDInceptionV3(nn.Module):
    """Images ``[N, 3, H, W]`` in [0, 1] -> 2048-d pool3 features of the FID Inception-v3."""

    num_features = INCEPTION_FEATURES

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models.inception import Inception3

        inception_a, inception_c, inception_e = _patched_inception_blocks()
        network = Inception3(num_classes=INCEPTION_CLASSES, aux_logits=False, transform_input=False,
                             init_weights=False)
        network.Mixed_5b = inception_a(192, pool_features=32)
        network.Mixed_5c = inception_a(256, pool_features=64)
        network.Mixed_5d = inception_a(288, pool_features=64)
        for name, channels_7x7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
            setattr(network, name, inception_c(768, channels_7x7=channels_7x7))
        network.Mixed_7b = inception_e(1280, use_max_pool=False)
        network.Mixed_7c = inception_e(2048, use_max_pool=True)
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images, size=(INCEPTION_INPUT_SIZE, INCEPTION_INPUT_SIZE), mode="bilinear",
                          align_corners=False)
        x = 2.0 * x - 1.0
        net = self.network
        for layer in (net.Conv2d_1a_3x3, net.Conv2d_2a_3x3, net.Conv2d_2b_3x3, net.maxpool1, net.Conv2d_3b_1x1,
                      net.Conv2d_4a_3x3, net.maxpool2, net.Mixed_5b, net.Mixed_5c, net.Mixed_5d, net.Mixed_6a,
                      net.Mixed_6b, net.Mixed_6c, net.Mixed_6d, net.Mixed_6e, net.Mixed_7a, net.Mixed_7b,
                      net.Mixed_7c):
            x = layer(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def load_fid_inception(weights: str | Path) -> FIDInceptionV3:
    """Build an eval-mode :class:`FIDInceptionV3` and load the FID Inception weights strictly.

    :param weights: path to ``pt_inception-2015-12-05-6726825d.pth`` /
        ``weights-inception-2015-12-05-6726825d.pth``, or ``"random"`` (explicit; tests only).
    :raises FIDWeightsError: missing/unreadable file or keys/shapes that are not the FID Inception's.
    """
    extractor = FIDInceptionV3()
    if str(weights) != RANDOM_INIT:
        try:
            state_dict = read_state_dict_file(weights, FID_INCEPTION_ORIGIN)
        except PretrainedWeightsError as error:
            raise FIDWeightsError(str(error)) from error
        expected = extractor.network.state_dict()
        # Files converted before PyTorch 0.4.1 carry no BatchNorm `num_batches_tracked`.
        missing = [k for k in expected if k not in state_dict and not k.endswith("num_batches_tracked")]
        unexpected = [k for k in state_dict if k not in expected]
        wrong = [k for k in state_dict if k in expected and state_dict[k].shape != expected[k].shape]
        if missing or unexpected or wrong:
            detail = describe_key_mismatch(missing, unexpected) or f"{len(wrong)} with wrong shapes (e.g. {wrong[:3]})"
            raise FIDWeightsError(f"{weights} is not the FID Inception-v3 ({detail}). Expected {FID_INCEPTION_ORIGIN}")
        extractor.network.load_state_dict(state_dict, strict=False)
    return extractor.eval()


# ---------------------------------------------------------------------------------------------
# Statistics and distance


@dataclass(frozen=True)
class FeatureStatistics:
    """Gaussian fitted to a set of features: mean ``[D]``, unbiased covariance ``[D, D]`` (float64)."""

    mean: torch.Tensor
    covariance: torch.Tensor
    count: int

    @classmethod
    def from_sums(cls, feature_sum: torch.Tensor, outer_sum: torch.Tensor, count: int) -> FeatureStatistics:
        """From sum_i f_i, sum_i f_i f_i^T and n (the running sums the metric keeps)."""
        if count < 2:
            raise EmptyMetricError(f"FID needs at least 2 images per set, got {count}")
        mean = feature_sum.double() / count
        covariance = (outer_sum.double() - count * torch.outer(mean, mean)) / (count - 1)
        return cls(mean=mean, covariance=covariance, count=count)


def frechet_distance(real: FeatureStatistics, fake: FeatureStatistics) -> torch.Tensor:
    """||mu_r - mu_f||^2 + tr(S_r + S_f - 2 (S_r S_f)^(1/2)) in float64.

    tr((S_r S_f)^(1/2)) is the sum of the square roots of the eigenvalues of S_r S_f (real and
    non-negative up to round-off for two covariance matrices), which avoids a matrix square root.
    """
    mean_term = (real.mean - fake.mean).square().sum()
    eigenvalues = torch.linalg.eigvals(real.covariance @ fake.covariance)
    trace_sqrt = eigenvalues.sqrt().real.sum()
    return mean_term + real.covariance.trace() + fake.covariance.trace() - 2.0 * trace_sqrt


# ---------------------------------------------------------------------------------------------
# Fingerprints and the reference cache


def module_fingerprint(module: nn.Module) -> str:
    """SHA-256 of a network's state dict (names, dtypes, shapes, values): identifies the extractor weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{data.dtype}:{list(data.shape)}".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def files_fingerprint(files: Iterable[Path], root: Path | None = None) -> str:
    """SHA-256 over the (relative) names and bytes of the real set's files, in sorted name order."""
    digest = hashlib.sha256()
    named = sorted((str(Path(path).relative_to(root)) if root else str(path), Path(path)) for path in files)
    if not named:
        raise ValueError("the real set is empty: nothing to fingerprint")
    for name, path in named:
        digest.update(name.encode() + b"\0")
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


def tensors_fingerprint(images: Sequence[torch.Tensor]) -> str:
    """SHA-256 over a real set given as tensors (synthetic or in-memory sets)."""
    digest = hashlib.sha256()
    for image in images:
        data = image.detach().cpu().contiguous()
        digest.update(f"{data.dtype}:{list(data.shape)}".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class ReferenceKey:
    """What a real set's statistics depend on."""

    real_set: str  # content hash of the real images (files_fingerprint / tensors_fingerprint)
    extractor: str  # module_fingerprint of the feature extractor
    resolution: int  # images are fed at this resolution
    num_features: int

    def digest(self) -> str:
        payload = json.dumps({**vars(self), "version": CACHE_FORMAT_VERSION}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()


class ReferenceStatisticsCache:
    """Reference statistics on disk, one file per :class:`ReferenceKey`, written atomically."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory).expanduser()

    def path(self, key: ReferenceKey) -> Path:
        return self.directory / f"fid_reference_{key.digest()[:24]}.pt"

    def load(self, key: ReferenceKey) -> FeatureStatistics | None:
        """The cached statistics, or None when there is no file for this key."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001  (any unreadable file is the same problem for the user)
            raise ReferenceCacheError(f"cannot read FID reference cache {path} ({error}); delete it to rebuild") from error
        if payload.get("key") != vars(key) or payload.get("version") != CACHE_FORMAT_VERSION:
            raise ReferenceCacheError(f"{path} holds statistics for {payload.get('key')}, not {vars(key)}; delete it")
        return FeatureStatistics(mean=payload["mean"], covariance=payload["covariance"], count=int(payload["count"]))

    def store(self, key: ReferenceKey, statistics: FeatureStatistics) -> Path:
        """Write atomically: a unique temporary file in the same folder, then ``os.replace``."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        payload = {
            "key": vars(key), "version": CACHE_FORMAT_VERSION, "count": statistics.count,
            "mean": statistics.mean.detach().cpu().double(), "covariance": statistics.covariance.detach().cpu().double(),
        }
        handle, temporary = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=self.directory)
        try:
            with os.fdopen(handle, "wb") as stream:
                torch.save(payload, stream)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return path


# ---------------------------------------------------------------------------------------------
# The metric


class FrechetInceptionDistance(FrozenNetworksMetric):
    """FID between predictions (fake) and targets or cached reference statistics (real); lower is better.

    ``update(prediction, target)`` adds the predictions to the fake set and, unless reference
    statistics are loaded, the targets to the real set. Images are in ``[-1, 1]`` (mapped to [0, 1]
    for the extractor). ``reset()`` clears the fake set and the accumulated real set, never the loaded
    reference.
    """

    higher_is_better = False
    is_differentiable = False
    full_state_update = False

    def __init__(self, feature_extractor: nn.Module, num_features: int | None = None, **kwargs: object) -> None:
        """:param feature_extractor: images in [0, 1] -> ``[N, D]`` features (e.g. :func:`load_fid_inception`);
        frozen here and kept out of ``state_dict``.
        :param num_features: D; defaults to the extractor's ``num_features`` attribute."""
        super().__init__(**kwargs)
        dimension = num_features if num_features is not None else getattr(feature_extractor, "num_features", None)
        if not isinstance(dimension, int):
            raise ValueError("pass num_features or give the feature extractor an int `num_features` attribute")
        self.num_features = dimension
        self._freeze(feature_extractor)
        for prefix in ("real", "fake"):
            self.add_state(f"{prefix}_sum", torch.zeros(dimension, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{prefix}_outer_sum", torch.zeros(dimension, dimension, dtype=torch.float64),
                           dist_reduce_fx="sum")
            self.add_state(f"{prefix}_count", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self._reference: FeatureStatistics | None = None

    @property
    def feature_extractor(self) -> nn.Module:
        return self.frozen_networks[0]

    @property
    def reference(self) -> FeatureStatistics | None:
        """Loaded reference statistics (they replace the accumulated real set), or None."""
        return self._reference

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``[N, D]`` float64 features of images in ``[-1, 1]``."""
        check_images(images)
        features = self.feature_extractor(to_unit_range(images)).double()
        if features.shape != (images.shape[0], self.num_features):
            raise ValueError(f"feature extractor returned {list(features.shape)}, expected [N, {self.num_features}]")
        return features

    def _accumulate(self, prefix: str, images: torch.Tensor) -> None:
        features = self.features(images)
        setattr(self, f"{prefix}_sum", getattr(self, f"{prefix}_sum") + features.sum(dim=0))
        setattr(self, f"{prefix}_outer_sum", getattr(self, f"{prefix}_outer_sum") + features.T @ features)
        setattr(self, f"{prefix}_count", getattr(self, f"{prefix}_count") + features.shape[0])

    def update(self, prediction: torch.Tensor | None, target: torch.Tensor | None = None) -> None:
        """Predictions join the fake set; targets join the real set unless reference statistics are loaded
        (then they are ignored). Either may be None."""
        if prediction is not None:
            self._accumulate("fake", prediction)
        if target is not None and self._reference is None:
            self._accumulate("real", target)

    # Both go through update(): torchmetrics' wrapper of update() is what invalidates a cached compute().
    def update_fake(self, images: torch.Tensor) -> None:
        self.update(images, None)

    def update_real(self, images: torch.Tensor) -> None:
        if self._reference is not None:
            raise RuntimeError("reference statistics are loaded; real images would be ignored")
        self.update(None, images)

    def load_reference(self, statistics: FeatureStatistics) -> None:
        if statistics.mean.shape != (self.num_features,):
            raise ValueError(f"reference has {statistics.mean.shape[0]} features, the extractor {self.num_features}")
        self._reference = FeatureStatistics(
            mean=statistics.mean.double().to(self.device), covariance=statistics.covariance.double().to(self.device),
            count=statistics.count,
        )

    def _real_from_states(self) -> FeatureStatistics:
        return FeatureStatistics.from_sums(self.real_sum, self.real_outer_sum, int(self.real_count))

    def real_statistics(self) -> FeatureStatistics:
        """Statistics of the real images accumulated on all ranks (collective: call on every rank)."""
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=self._to_sync):
            return self._real_from_states()

    def compute(self) -> torch.Tensor:
        real = self._reference if self._reference is not None else self._real_from_states()
        fake = FeatureStatistics.from_sums(self.fake_sum, self.fake_outer_sum, int(self.fake_count))
        return frechet_distance(real, fake).float()

    def _apply(self, fn, exclude_state=""):  # type: ignore[no-untyped-def]
        this = super()._apply(fn, exclude_state)
        if getattr(self, "_reference", None) is not None:
            self.load_reference(self._reference)  # follow the device
        return this


def _missing_on_any_rank(missing_here: bool, metric: FrechetInceptionDistance) -> bool:
    import torch.distributed as dist

    # A metric built with sync_on_compute=False is a per-process metric: nothing to agree on.
    if not (metric.sync_on_compute and dist.is_available() and dist.is_initialized()):
        return missing_here
    flag = torch.tensor([int(missing_here)], device=metric.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def prepare_reference(
    metric: FrechetInceptionDistance,
    cache: ReferenceStatisticsCache,
    key: ReferenceKey,
    real_batches: Iterable[torch.Tensor],
) -> FeatureStatistics:
    """Load the reference statistics for ``key`` from ``cache``, or compute and store them.

    In DDP, call on every rank with this rank's shard of the real set as ``real_batches``: the sums are
    reduced across ranks, every rank writes the same file atomically (last ``os.replace`` wins), and
    every rank loads the result into ``metric``. ``real_batches`` is not iterated on a cache hit.
    The metric's accumulated real set is cleared afterwards.
    """
    statistics = cache.load(key)
    # A miss on any rank must be a miss on every rank: real_statistics() is a collective, and a rank
    # that skipped it (the file appeared in between) would leave the others waiting forever.
    if _missing_on_any_rank(statistics is None, metric):
        for images in real_batches:
            metric.update_real(images)
        statistics = metric.real_statistics()
        cache.store(key, statistics)
    metric.load_reference(statistics)
    metric.real_sum.zero_()
    metric.real_outer_sum.zero_()
    metric.real_count.zero_()
    return statistics
