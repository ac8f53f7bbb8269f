"""The images the invert command works on: aligned crops with a dataset.json, or raw photos to align.

* Aligned inputs (``align=false``): folders holding EG3D-format crops and a ``dataset.json``, or image
  files inside such folders (their labels are looked up by file name). Read with the datamodules'
  indexer, so the same validation applies (missing labels, bad cameras, unreadable files).
* Raw photos (``align=true``): files or folders of photos go through ``data_prep.prepare`` (face
  detection, EG3D crop, camera estimation) into ``<outputs>/aligned``; its report lists the photos
  it could not use (no face, several faces, unreadable) and they are skipped. If none remains the
  command stops with ``NoUsableImagesError``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from data_prep.prepare import IMAGE_SUFFIXES, PrepareReport, format_report, prepare_folder
from datamodules.image_pose_dataset import image_sample_from_pil
from datamodules.image_store import FolderStore
from datamodules.labeled_index import DatasetError, IndexOptions, build_index, decode_rgb_image

LABEL_FILE_NAME = "dataset.json"
ALIGNED_DIR_NAME = "aligned"
STAGED_PHOTOS_DIR_NAME = "_photos"  # links to the requested photos: prepare_folder reads one folder


class InvertInputError(ValueError):
    """The inputs cannot be used; the message says which file and why."""


class NoUsableImagesError(InvertInputError):
    """Alignment kept no photo (no face found in any of them, ...)."""


@dataclass(frozen=True)
class AlignedImage:
    """One aligned crop with its camera; ``name`` is unique among the inputs (the output folder)."""

    name: str
    source: str  # where it came from (file path), for messages
    image: torch.Tensor  # [3, S, S] in [-1, 1], encoder resolution
    image_full: torch.Tensor  # [3, H, H] in [-1, 1], generator resolution
    camera: torch.Tensor  # [25]


@dataclass(frozen=True)
class AlignmentOptions:
    backend: str = "auto"  # auto | insightface | mtcnn (data_prep.face_detection)
    insightface_root: str | None = None
    allow_multiple_faces: bool = False


@dataclass(frozen=True)
class Resolutions:
    encoder: int  # the stage's encoder input size
    full: int  # the generator's image size


def expand_inputs(inputs: str | Sequence[str]) -> list[Path]:
    """The configured inputs as paths (one string or a list); each must exist."""
    entries = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    if not entries:
        raise InvertInputError("no inputs given (set inputs=<file or folder> or inputs=[a.png,b.png])")
    paths = [Path(str(entry)).expanduser() for entry in entries]
    for path in paths:
        if not path.exists():
            raise InvertInputError(f"input not found: {path}")
    return paths


# ----------------------------------------------------------------------------- aligned inputs
def load_aligned_inputs(paths: Sequence[Path], resolutions: Resolutions) -> list[AlignedImage]:
    """Folders with a dataset.json (every labelled image) and files inside such folders."""
    selected: list[tuple[Path, str | None]] = []  # (dataset folder, file name or None = all)
    for path in paths:
        selected.append((path, None) if path.is_dir() else (path.parent, path.name))
    images: list[AlignedImage] = []
    indexed: dict[Path, dict[str, tuple[float, ...]]] = {}
    for folder, file_name in selected:
        labels = indexed.setdefault(folder, _labels_of(folder, resolutions.full))
        wanted = sorted(labels) if file_name is None else [file_name]
        for relative in wanted:
            if relative not in labels:
                raise InvertInputError(
                    f"{folder / relative}: no camera label for it in {folder / LABEL_FILE_NAME} "
                    "(aligned inputs need their label; raw photos need align=true)"
                )
            images.append(_load_aligned(folder, relative, labels[relative], resolutions))
    return with_unique_names(images)


def _labels_of(folder: Path, full_resolution: int) -> dict[str, tuple[float, ...]]:
    if not (folder / LABEL_FILE_NAME).is_file():
        raise InvertInputError(
            f"{folder}: no {LABEL_FILE_NAME} next to the images. Aligned inputs need EG3D-format labels "
            "(python -m data_prep.prepare makes them); for raw photos use align=true"
        )
    options = IndexOptions(label_file=LABEL_FILE_NAME, full_resolution=full_resolution, resize_other_sizes=True)
    try:
        index = build_index(str(folder), options)
    except DatasetError as error:
        raise InvertInputError(str(error)) from error
    return {entry.identifier: entry.camera for entry in index.entries}


def _load_aligned(
    folder: Path, relative: str, camera: tuple[float, ...], resolutions: Resolutions
) -> AlignedImage:
    try:
        pil_image = decode_rgb_image(FolderStore(folder), relative)
    except DatasetError as error:
        raise InvertInputError(str(error)) from error
    sample = image_sample_from_pil(
        _square_or_error(pil_image, folder / relative), torch.tensor(camera), relative,
        resolutions.encoder, resolutions.full,
    )
    return AlignedImage(
        name=Path(relative).stem, source=str(folder / relative), image=sample.image,
        image_full=sample.image_full, camera=sample.camera,
    )


def _square_or_error(image: Image.Image, where: Path) -> Image.Image:
    if image.width != image.height:
        raise InvertInputError(f"{where}: aligned crops are square, this one is {image.width}x{image.height}")
    return image


def with_unique_names(images: list[AlignedImage]) -> list[AlignedImage]:
    """Same stems from different folders get _2, _3 ... so their output folders do not collide."""
    seen: dict[str, int] = {}
    unique: list[AlignedImage] = []
    for image in images:
        count = seen.get(image.name, 0) + 1
        seen[image.name] = count
        name = image.name if count == 1 else f"{image.name}_{count}"
        unique.append(AlignedImage(name, image.source, image.image, image.image_full, image.camera))
    return unique


# ----------------------------------------------------------------------------- raw photos
def photo_files(paths: Sequence[Path]) -> list[Path]:
    """Photo files among the inputs (folders: their photos, not recursive)."""
    photos: list[Path] = []
    for path in paths:
        candidates = sorted(path.iterdir()) if path.is_dir() else [path]
        photos += [candidate for candidate in candidates if candidate.is_file() and _is_photo(candidate)]
    if not photos:
        listed = ", ".join(str(path) for path in paths)
        raise NoUsableImagesError(f"no photo ({'/'.join(IMAGE_SUFFIXES)}) among the inputs: {listed}")
    return photos


def _is_photo(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def align_photos(
    paths: Sequence[Path], work_dir: Path, detector_options: AlignmentOptions, output_size: int = 512
) -> tuple[Path, PrepareReport]:
    """Run data_prep.prepare on the photos; returns (folder of crops + dataset.json, report)."""
    from data_prep.face_detection import Backend, DetectorUnavailableError, create_face_detector

    staged = _stage_photos(photo_files(paths), work_dir / STAGED_PHOTOS_DIR_NAME)
    try:
        root = Path(detector_options.insightface_root) if detector_options.insightface_root else None
        detector = create_face_detector(Backend(detector_options.backend), root)
    except DetectorUnavailableError as error:
        raise InvertInputError(f"face detection unavailable for align=true: {error}") from error
    aligned_dir = work_dir / ALIGNED_DIR_NAME
    report = prepare_folder(staged, aligned_dir, detector, detector_options.allow_multiple_faces, output_size)
    shutil.rmtree(staged, ignore_errors=True)
    return aligned_dir, report


def _stage_photos(photos: Sequence[Path], staging_dir: Path) -> Path:
    """Links (copies where links fail) to the photos in one folder, as prepare_folder expects."""
    shutil.rmtree(staging_dir, ignore_errors=True)
    staging_dir.mkdir(parents=True)
    for photo in photos:
        target = staging_dir / photo.name
        if target.exists():  # same name from two folders: prepare reports it as a name collision
            target = staging_dir / f"{photo.parent.name}_{photo.name}"
        try:
            os.symlink(photo.resolve(), target)
        except OSError:
            shutil.copy2(photo, target)
    return staging_dir


def skipped_photos_message(report: PrepareReport) -> str | None:
    """One line per photo alignment could not use, or None when every photo was used."""
    lines = [f"  {name}: no face found" for name in report.no_face]
    lines += [
        f"  {entry.source}: {entry.faces_found} faces (alignment.allow_multiple_faces=true keeps the largest)"
        for entry in report.multiple_faces
    ]
    lines += [f"  {failure.source}: {failure.reason}" for failure in report.unreadable + report.failed]
    lines += [f"  {failure.source}: {failure.reason}" for failure in report.name_collisions]
    if not lines:
        return None
    return "skipped photos:\n" + "\n".join(lines)


def require_prepared(report: PrepareReport) -> None:
    if report.prepared:
        return
    raise NoUsableImagesError(
        "no photo could be aligned, nothing to invert.\n" + (skipped_photos_message(report) or "")
        + "\nfull report:\n" + format_report(report)
    )
