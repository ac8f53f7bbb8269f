"""Evaluation metrics of GOAE's tables (MSE, PSNR, SSIM, LPIPS, FID, ID, geometry error, time), DDP-correct.

See docs/metrics.md. Every metric takes images in [-1, 1]; ``compute()`` must run on every rank.
"""

from metrics.base import EmptyMetricError, FrozenNetworksMetric, MeanOverImages, to_unit_range
from metrics.collection import (
    METRIC_BUILDERS,
    MetricConfigError,
    MetricsConfig,
    MetricSuite,
    build_metric_suite,
    register_metric,
)
from metrics.fid import (
    FeatureStatistics,
    FIDInceptionV3,
    FIDWeightsError,
    FrechetInceptionDistance,
    ReferenceCacheError,
    ReferenceKey,
    ReferenceStatisticsCache,
    files_fingerprint,
    frechet_distance,
    load_fid_inception,
    module_fingerprint,
    prepare_reference,
    tensors_fingerprint,
)
from metrics.geometry import (
    DatasetReferenceDepth,
    FaceReconstructionReferenceDepth,
    FaceReconstructionUnavailableError,
    GeneratorReferenceDepth,
    GeometryError,
    GeometryPerImage,
    GeometryReport,
    ReferenceDepth,
    ReferenceDepthProvider,
    normalised_depth_error,
)
from metrics.identity import (
    DetectorAligner,
    IdentityReport,
    IdentitySimilarity,
    OnnxFaceRecognizer,
    PspCropAligner,
    RecognitionModelError,
    identity_similarity_ir_se50,
    identity_similarity_onnx,
)
from metrics.image_quality import (
    MeanSquaredError,
    PeakSignalNoiseRatio,
    PixelScale,
    StructuralSimilarity,
    mse_per_image,
    psnr_per_image,
    ssim_per_image,
)
from metrics.perceptual import LearnedPerceptualSimilarity
from metrics.timing import InferenceTimer, TimingSummary, cuda_synchronizer

__all__ = [
    "METRIC_BUILDERS", "DatasetReferenceDepth", "DetectorAligner", "EmptyMetricError", "FIDInceptionV3",
    "FIDWeightsError", "FaceReconstructionReferenceDepth", "FaceReconstructionUnavailableError", "FeatureStatistics",
    "FrechetInceptionDistance", "FrozenNetworksMetric", "GeneratorReferenceDepth", "GeometryError",
    "GeometryPerImage", "GeometryReport", "IdentityReport", "IdentitySimilarity", "InferenceTimer",
    "LearnedPerceptualSimilarity", "MeanOverImages", "MeanSquaredError", "MetricConfigError", "MetricSuite",
    "MetricsConfig", "OnnxFaceRecognizer", "PeakSignalNoiseRatio", "PixelScale", "PspCropAligner",
    "RecognitionModelError", "ReferenceCacheError", "ReferenceDepth", "ReferenceDepthProvider", "ReferenceKey",
    "ReferenceStatisticsCache", "StructuralSimilarity", "TimingSummary", "build_metric_suite", "cuda_synchronizer",
    "files_fingerprint", "frechet_distance", "identity_similarity_ir_se50", "identity_similarity_onnx",
    "load_fid_inception", "module_fingerprint", "mse_per_image", "normalised_depth_error", "prepare_reference",
    "psnr_per_image", "register_metric", "ssim_per_image", "tensors_fingerprint", "to_unit_range",
]
