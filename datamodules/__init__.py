"""Datasets and the LightningDataModule: EG3D-format images, MEAD multi-view groups, synthetic samples."""

from datamodules.image_pose_dataset import ImagePoseDataset
from datamodules.inversion_datamodule import InversionDataModule, LoaderConfig
from datamodules.labeled_index import (
    BadFile,
    DatasetError,
    DatasetReport,
    IndexOptions,
    LabeledImage,
    LabeledImageIndex,
    build_index,
)
from datamodules.multiview import VIEW_NAMES, MultiViewDataset
from datamodules.samples import (
    ImageBatch,
    ImageSample,
    MultiViewBatch,
    MultiViewSample,
    SyntheticBatch,
    SyntheticSample,
    collate_samples,
)
from datamodules.sampling import EpochIndex, EvaluationSampler, TrainSampler
from datamodules.split_specs import (
    ImageFolderSplit,
    MultiViewSplit,
    SampledSubset,
    SeededSplit,
    SyntheticSplit,
)
from datamodules.synthetic import GeneratorSource, SyntheticDataset

__all__ = [
    "VIEW_NAMES",
    "BadFile",
    "DatasetError",
    "DatasetReport",
    "EpochIndex",
    "EvaluationSampler",
    "GeneratorSource",
    "ImageBatch",
    "ImageFolderSplit",
    "ImagePoseDataset",
    "ImageSample",
    "IndexOptions",
    "InversionDataModule",
    "LabeledImage",
    "LabeledImageIndex",
    "LoaderConfig",
    "MultiViewBatch",
    "MultiViewDataset",
    "MultiViewSample",
    "MultiViewSplit",
    "SampledSubset",
    "SeededSplit",
    "SyntheticBatch",
    "SyntheticDataset",
    "SyntheticSample",
    "SyntheticSplit",
    "TrainSampler",
    "build_index",
    "collate_samples",
]
