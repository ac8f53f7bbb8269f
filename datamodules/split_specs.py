"""What each split of a named data configuration is made of (Hydra-instantiable dataclasses).

A spec is small and picklable; ``build(context)`` turns it into a Dataset in DataModule.setup.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch.utils.data import Dataset

from cameras.sampling import FFHQ_LIKE_POSES, PoseDistribution
from datamodules.image_pose_dataset import ImagePoseDataset
from datamodules.labeled_index import (
    DatasetReport,
    ImageCheck,
    IndexOptions,
    LabeledImageIndex,
    OnBadSample,
    build_index,
)
from datamodules.multiview import MultiViewDataset, group_views
from datamodules.splits import sampled_subset_file, seeded_split_file
from datamodules.synthetic import GeneratorSource, SyntheticDataset


@dataclass
class BuildContext:
    """Settings shared by every split of one DataModule."""

    split: str
    seed: int = 0
    on_bad_sample: OnBadSample = "error"
    image_check: ImageCheck = "header"
    generator: GeneratorSource | None = None
    # WHY: train/val/test of one dataset (AFHQ) share one index: scan the headers once.
    index_cache: dict[tuple[str, IndexOptions], LabeledImageIndex] = field(default_factory=dict)
    reports: dict[str, DatasetReport] = field(default_factory=dict)

    def index(self, root: str, options: IndexOptions) -> LabeledImageIndex:
        key = (str(root), options)
        if key not in self.index_cache:
            self.index_cache[key] = build_index(root, options)
        return self.index_cache[key]


def _default_file_next_to(root: str, suffix: str) -> Path:
    """'<data>/celebahq_512' -> '<data>/celebahq_512.<suffix>' (also for '<data>/x.zip')."""
    path = Path(root).expanduser()
    return path.parent / f"{path.name}.{suffix}"


@dataclass
class SampledSubset:
    """``count`` images drawn with ``seed`` once, kept in ``list_file`` (default: next to the data)."""

    count: int
    seed: int = 0
    list_file: str | None = None


@dataclass
class SeededSplit:
    """A seeded partition (e.g. 8:1:1) kept in ``split_file`` (default: next to the data); this
    split takes the part named ``part`` (default: the split's own name, train/val/test)."""

    fractions: Mapping[str, float] = field(default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1})
    seed: int = 0
    split_file: str | None = None
    part: str | None = None


class SplitSpec(ABC):
    @abstractmethod
    def build(self, context: BuildContext) -> Dataset:
        """The split's dataset; records its DatasetReport in context.reports when it has one."""


@dataclass
class ImageFolderSplit(SplitSpec):
    """EG3D-format images (folder or zip + label file), optionally restricted to a subset."""

    root: str
    label_file: str = "dataset.json"
    image_resolution: int = 256
    full_resolution: int = 512
    xflip: bool = False
    resize_other_sizes: bool = False
    subset: SampledSubset | SeededSplit | None = None

    def build(self, context: BuildContext) -> ImagePoseDataset:
        options = IndexOptions(
            label_file=self.label_file,
            full_resolution=self.full_resolution,
            on_bad_sample=context.on_bad_sample,
            image_check=context.image_check,
            resize_other_sizes=self.resize_other_sizes,
        )
        index = context.index(self.root, options)
        context.reports[context.split] = index.report
        by_identifier = {entry.identifier: entry for entry in index.entries}
        chosen = self._choose(sorted(by_identifier), context)
        return ImagePoseDataset(
            index,
            image_resolution=self.image_resolution,
            full_resolution=self.full_resolution,
            xflip=self.xflip,
            xflip_seed=context.seed,
            entries=[by_identifier[identifier] for identifier in chosen],
        )

    def _choose(self, available: list[str], context: BuildContext) -> list[str]:
        subset = self.subset
        if subset is None:
            return available
        if isinstance(subset, SampledSubset):
            list_file = subset.list_file or _default_file_next_to(
                self.root, f"{context.split}_{subset.count}_seed{subset.seed}.txt"
            )
            return sampled_subset_file(available, subset.count, subset.seed, Path(list_file))
        if isinstance(subset, SeededSplit):
            split_file = subset.split_file or _default_file_next_to(self.root, f"split_seed{subset.seed}.json")
            parts = seeded_split_file(available, dict(subset.fractions), subset.seed, Path(split_file))
            part = subset.part or context.split
            if part not in parts:
                raise ValueError(f"{split_file} has parts {sorted(parts)}, no part {part!r} for this split")
            rank_zero_info(f"split {context.split!r}: part {part!r} of {split_file}: {len(parts[part])} images")
            return parts[part]
        raise TypeError(f"unknown subset type {type(subset).__name__}")


@dataclass
class MultiViewSplit(SplitSpec):
    """MEAD-style groups of five views (see datamodules.multiview for the layout)."""

    root: str
    label_file: str = "dataset.json"
    input_view: str = "front"
    image_resolution: int = 256
    full_resolution: int = 512
    resize_other_sizes: bool = False

    def build(self, context: BuildContext) -> MultiViewDataset:
        options = IndexOptions(
            label_file=self.label_file,
            full_resolution=self.full_resolution,
            on_bad_sample=context.on_bad_sample,
            image_check=context.image_check,
            resize_other_sizes=self.resize_other_sizes,
        )
        index = build_index(self.root, options)  # not cached: group_views adds to its report
        groups = group_views(index, context.on_bad_sample)
        context.reports[context.split] = index.report
        return MultiViewDataset(index, groups, self.input_view, self.image_resolution, self.full_resolution)


@dataclass
class SyntheticSplit(SplitSpec):
    """``length`` samples of the frozen generator (its config: ``generator`` here or the DataModule's)."""

    length: int
    pose: PoseDistribution = FFHQ_LIKE_POSES
    image_resolution: int = 256
    full_resolution: int = 512
    truncation_psi: float = 1.0
    generator: GeneratorSource | None = None

    def __post_init__(self) -> None:
        # Hydra may hand plain mappings over; accept them as the dataclasses they describe.
        if isinstance(self.pose, Mapping):
            self.pose = PoseDistribution(**dict(self.pose))
        if isinstance(self.generator, Mapping):
            self.generator = GeneratorSource(**dict(self.generator))

    def build(self, context: BuildContext) -> SyntheticDataset:
        source = self.generator or context.generator
        if source is None:
            raise ValueError(f"synthetic split {context.split!r} has no generator config (set data.generator)")
        return SyntheticDataset(
            length=self.length,
            split=context.split,
            seed=context.seed,
            source=source,
            pose=self.pose,
            image_resolution=self.image_resolution,
            full_resolution=self.full_resolution,
            truncation_psi=self.truncation_psi,
        )
