"""Index and validate an EG3D-format dataset: images plus a label file of 25-float cameras.

The label file is ``{"labels": [[relative_path, [25 floats]], ...]}`` (EG3D's dataset.json,
GOAE's label.json). Labels are matched to files BY PATH, never by sorted position.

Bad input policy (``on_bad_sample``): "error" raises DatasetError naming the file and the problem
at the first bad entry; "skip" leaves bad entries out and records each one in the report.
Problems with the dataset as a whole (missing root, missing or unparseable label file) are always
errors. Images present but unlabeled are never used and always reported.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from PIL import Image, UnidentifiedImageError

import cameras
from datamodules.image_store import ImageStore, is_image_path, normalise_relative_path, open_image_store

OnBadSample = Literal["error", "skip"]
# "header": open every image's header at setup (size, format); "decode": fully decode every image.
ImageCheck = Literal["header", "decode"]
ON_BAD_SAMPLE_CHOICES = ("error", "skip")
IMAGE_CHECK_CHOICES = ("header", "decode")


class DatasetError(ValueError):
    """A dataset file is missing or malformed; the message names the file and the problem."""


@dataclass(frozen=True)
class BadFile:
    path: str
    problem: str


@dataclass
class DatasetReport:
    """What indexing found: usable samples, skipped entries (with reasons), unlabeled images."""

    source: str
    label_file: str
    num_labels: int = 0
    num_usable: int = 0
    resolutions: dict[str, int] = field(default_factory=dict)  # "WxH" -> count of usable images
    skipped: list[BadFile] = field(default_factory=list)
    unlabeled_images: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"{self.source}: {self.num_usable} usable of {self.num_labels} labels in {self.label_file}"]
        if self.skipped:
            lines.append(f"  skipped {len(self.skipped)} bad entries (on_bad_sample=skip):")
            lines.extend(f"    {bad.path}: {bad.problem}" for bad in self.skipped[:20])
            if len(self.skipped) > 20:
                lines.append(f"    ... and {len(self.skipped) - 20} more")
        if self.unlabeled_images:
            examples = ", ".join(self.unlabeled_images[:5])
            lines.append(
                f"  {len(self.unlabeled_images)} images have no label and are not used (e.g. {examples})"
            )
        return "\n".join(lines)


@dataclass(frozen=True)
class LabeledImage:
    identifier: str  # normalised relative path
    camera: tuple[float, ...]  # 25 floats


@dataclass
class LabeledImageIndex:
    store: ImageStore
    entries: list[LabeledImage]
    report: DatasetReport


@dataclass(frozen=True)
class IndexOptions:
    label_file: str = "dataset.json"
    full_resolution: int = 512
    on_bad_sample: OnBadSample = "error"
    image_check: ImageCheck = "header"
    # False (strict): an image not exactly full_resolution x full_resolution is bad.
    # True: square images of another size are accepted and resized when loaded.
    resize_other_sizes: bool = False

    def __post_init__(self) -> None:
        if self.on_bad_sample not in ON_BAD_SAMPLE_CHOICES:
            raise ValueError(f"on_bad_sample must be one of {ON_BAD_SAMPLE_CHOICES}, got {self.on_bad_sample!r}")
        if self.image_check not in IMAGE_CHECK_CHOICES:
            raise ValueError(f"image_check must be one of {IMAGE_CHECK_CHOICES}, got {self.image_check!r}")
        if self.full_resolution <= 0:
            raise ValueError(f"full_resolution must be positive, got {self.full_resolution}")


def _read_listed_image_bytes(store: ImageStore, relative_path: str, where: str) -> bytes:
    try:
        return store.read_bytes(relative_path)
    except FileNotFoundError as error:
        raise DatasetError(f"{where}: image listed in the labels is absent") from error


def decode_rgb_image(store: ImageStore, relative_path: str) -> Image.Image:
    """Fully decode an image as RGB; DatasetError naming the file if it is unreadable or truncated."""
    where = store.describe(relative_path)
    data = _read_listed_image_bytes(store, relative_path, where)
    try:
        with Image.open(io.BytesIO(data)) as probe:
            probe.verify()  # WHY: catches corrupt chunks/CRC errors that load() may let through
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # WHY: verify() does not decode pixels; load() raises on truncated data
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DatasetError(f"{where}: unreadable or truncated image ({type(error).__name__}: {error})") from error


def read_image_size(store: ImageStore, relative_path: str) -> tuple[int, int]:
    """(width, height) from the header only; DatasetError naming the file if it is not an image."""
    where = store.describe(relative_path)
    data = _read_listed_image_bytes(store, relative_path, where)
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DatasetError(f"{where}: unreadable image ({type(error).__name__}: {error})") from error


def read_label_entries(store: ImageStore, label_file: str) -> list[object]:
    """The raw "labels" list of the label file; DatasetError if the file is missing or malformed."""
    where = store.describe(label_file)
    try:
        text = store.read_bytes(label_file)
    except FileNotFoundError as error:
        raise DatasetError(
            f"{where}: label file not found (the dataset needs a JSON label file "
            f'{{"labels": [[relative_path, [25 floats]], ...]}}; its name is set by label_file)'
        ) from error
    try:
        content = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"{where}: label file is not valid JSON ({error})") from error
    if not isinstance(content, dict) or "labels" not in content:
        raise DatasetError(f'{where}: label file must be a JSON object with a "labels" key')
    labels = content["labels"]
    if not isinstance(labels, list):
        raise DatasetError(
            f'{where}: "labels" must be a list of [relative_path, [25 floats]] pairs, '
            f"got {type(labels).__name__}"
        )
    return labels


def _parse_entry(entry: object, position: int, label_where: str) -> tuple[str, list[float]]:
    """(normalised path, 25 floats) or DatasetError describing what is wrong with the entry."""
    if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[0], str)):
        raise DatasetError(f"{label_where} entry {position}: expected [relative_path, [25 floats]], got {entry!r:.80}")
    path, values = entry
    relative = normalise_relative_path(path)
    name = f"{label_where} entry {position} ('{relative}')"
    if not isinstance(values, (list, tuple)) or not all(
        isinstance(value, (int, float)) and not isinstance(value, bool) for value in values
    ):
        raise DatasetError(f"{name}: camera label must be a list of {cameras.LABEL_SIZE} numbers")
    floats = [float(value) for value in values]
    if len(floats) != cameras.LABEL_SIZE:
        raise DatasetError(f"{name}: camera label has {len(floats)} numbers, expected {cameras.LABEL_SIZE}")
    if not all(math.isfinite(value) for value in floats):
        raise DatasetError(f"{name}: camera label has non-finite numbers")
    try:
        cameras.validate_label(torch.tensor(floats, dtype=torch.float64), name)
    except ValueError as error:
        raise DatasetError(str(error)) from error
    return relative, floats


def build_index(root: str, options: IndexOptions) -> LabeledImageIndex:
    """Read the label file, check every entry and every image header (or full decode)."""
    try:
        store = open_image_store(root)
    except (FileNotFoundError, ValueError) as error:
        raise DatasetError(str(error)) from error
    label_file = normalise_relative_path(options.label_file)
    label_where = store.describe(label_file)
    raw_entries = read_label_entries(store, label_file)
    files = set(store.list_files())
    report = DatasetReport(source=str(store.root), label_file=label_file, num_labels=len(raw_entries))
    entries: list[LabeledImage] = []
    seen: set[str] = set()

    def reject(path: str, problem: DatasetError) -> None:
        if options.on_bad_sample == "error":
            raise problem
        report.skipped.append(BadFile(path=path, problem=str(problem)))

    for position, entry in enumerate(raw_entries):
        try:
            relative, floats = _parse_entry(entry, position, label_where)
        except DatasetError as problem:
            reject(f"{label_file} entry {position}", problem)
            continue
        where = store.describe(relative)
        if relative in seen:
            reject(relative, DatasetError(f"{where}: listed more than once in {label_where}"))
            continue
        seen.add(relative)
        if relative not in files:
            reject(relative, DatasetError(f"{where}: image listed in {label_where} is absent"))
            continue
        try:
            size = _check_image(store, relative, options)
        except DatasetError as problem:
            reject(relative, problem)
            continue
        entries.append(LabeledImage(identifier=relative, camera=tuple(floats)))
        key = f"{size[0]}x{size[1]}"
        report.resolutions[key] = report.resolutions.get(key, 0) + 1

    report.unlabeled_images = sorted(path for path in files if is_image_path(path) and path not in seen)
    report.num_usable = len(entries)
    return LabeledImageIndex(store=store, entries=entries, report=report)


def _check_image(store: ImageStore, relative: str, options: IndexOptions) -> tuple[int, int]:
    if options.image_check == "decode":
        size = decode_rgb_image(store, relative).size
    else:
        size = read_image_size(store, relative)
    check_image_size(size, store.describe(relative), options)
    return size


def check_image_size(size: tuple[int, int], where: str, options: IndexOptions) -> None:
    width, height = size
    expected = options.full_resolution
    if (width, height) == (expected, expected):
        return
    if width != height:
        raise DatasetError(f"{where}: image is {width}x{height}, not square (expected {expected}x{expected})")
    if not options.resize_other_sizes:
        raise DatasetError(
            f"{where}: image is {width}x{height}, expected {expected}x{expected} "
            "(set full_resolution to match, or resize_other_sizes=true to resize square images)"
        )
