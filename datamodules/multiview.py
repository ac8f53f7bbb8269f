"""MEAD-style multi-view evaluation: groups of five views of one person and frame.

On-disk layout (docs/data.md): ``<root>/<person>/<frame>/<view>.<ext>`` with view one of
left60, left30, front, right30, right60, plus ONE label file at the root listing every view's
camera by its relative path. A sample is a whole group: the chosen input view and the other four
as targets, in VIEW_NAMES order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from datamodules.image_pose_dataset import image_sample_from_pil
from datamodules.labeled_index import (
    BadFile,
    DatasetError,
    IndexOptions,
    LabeledImage,
    LabeledImageIndex,
    OnBadSample,
    build_index,
    decode_rgb_image,
)
from datamodules.sampling import EpochIndex, split_key
from datamodules.samples import MultiViewSample

VIEW_NAMES = ("left60", "left30", "front", "right30", "right60")


@dataclass(frozen=True)
class ViewGroup:
    identifier: str  # "<person>/<frame>"
    views: dict[str, LabeledImage]  # view name -> entry, all five


def _view_of(identifier: str) -> tuple[str, str] | None:
    """('person/frame', view) if the path follows the layout, else None."""
    parts = identifier.split("/")
    if len(parts) != 3 or "." not in parts[2]:
        return None
    view = parts[2].rsplit(".", 1)[0]
    if view not in VIEW_NAMES:
        return None
    return f"{parts[0]}/{parts[1]}", view


def group_views(index: LabeledImageIndex, on_bad_sample: OnBadSample) -> list[ViewGroup]:
    """Check the layout and group entries; bad entries and incomplete groups raise or are recorded
    in index.report.skipped (with on_bad_sample='skip')."""
    store = index.store

    def reject(path: str, problem: str) -> None:
        if on_bad_sample == "error":
            raise DatasetError(problem)
        index.report.skipped.append(BadFile(path=path, problem=problem))

    partial: dict[str, dict[str, LabeledImage]] = {}
    for entry in index.entries:
        parsed = _view_of(entry.identifier)
        if parsed is None:
            reject(
                entry.identifier,
                f"{store.describe(entry.identifier)}: does not follow the multi-view layout "
                f"<person>/<frame>/<view>.<ext> with view in {list(VIEW_NAMES)}",
            )
            continue
        group, view = parsed
        partial.setdefault(group, {})[view] = entry
    # Groups with a view skipped by the index are incomplete too: look at every labeled path.
    for bad in list(index.report.skipped):
        parsed = _view_of(bad.path)
        if parsed is not None:
            partial.setdefault(parsed[0], {})
    groups = []
    for group in sorted(partial):
        missing = [view for view in VIEW_NAMES if view not in partial[group]]
        if missing:
            reject(
                group,
                f"{store.describe(group)}: incomplete multi-view group, missing or unusable views {missing} "
                f"(each <person>/<frame> folder needs {list(VIEW_NAMES)}, all labeled)",
            )
            continue
        groups.append(ViewGroup(identifier=group, views=partial[group]))
    index.report.num_usable = sum(len(group.views) for group in groups)
    return groups


class MultiViewDataset(Dataset[MultiViewSample]):
    def __init__(
        self,
        index: LabeledImageIndex,
        groups: list[ViewGroup],
        input_view: str = "front",
        image_resolution: int = 256,
        full_resolution: int = 512,
    ) -> None:
        if input_view not in VIEW_NAMES:
            raise ValueError(f"input_view must be one of {list(VIEW_NAMES)}, got {input_view!r}")
        self.index = index
        self.groups = groups
        self.input_view = input_view
        self.target_views = [view for view in VIEW_NAMES if view != input_view]
        self.image_resolution = image_resolution
        self.full_resolution = full_resolution

    @classmethod
    def from_path(
        cls, root: str, options: IndexOptions, input_view: str = "front", image_resolution: int = 256
    ) -> MultiViewDataset:
        index = build_index(root, options)
        groups = group_views(index, options.on_bad_sample)
        if not groups:
            raise DatasetError(f"{root}: no complete multi-view group found ({index.report.summary()})")
        return cls(index, groups, input_view, image_resolution, options.full_resolution)

    @property
    def identifiers(self) -> list[str]:
        return [group.identifier for group in self.groups]

    def __len__(self) -> int:
        return len(self.groups)

    def _load_view(self, entry: LabeledImage):  # -> ImageSample
        image = decode_rgb_image(self.index.store, entry.identifier)
        camera = torch.tensor(entry.camera, dtype=torch.float32)
        return image_sample_from_pil(image, camera, entry.identifier, self.image_resolution, self.full_resolution)

    def __getitem__(self, key: int | EpochIndex) -> MultiViewSample:
        index, _ = split_key(key)
        group = self.groups[index]
        input_sample = self._load_view(group.views[self.input_view])
        targets = [self._load_view(group.views[view]) for view in self.target_views]
        return MultiViewSample(
            input=input_sample,
            input_view=self.input_view,
            target_image=torch.stack([target.image for target in targets]),
            target_image_full=torch.stack([target.image_full for target in targets]),
            target_camera=torch.stack([target.camera for target in targets]),
            target_views=list(self.target_views),
            identifier=group.identifier,
        )
