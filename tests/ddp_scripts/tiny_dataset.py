"""Tiny EG3D-format datasets for the data tests: image i is a solid colour that encodes i (with a
black left quarter, so mirroring is visible) and its label is a look-at camera that depends on i."""

from __future__ import annotations

import io
import json
import random
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import cameras

MEAD_VIEWS = {"left60": -1.047, "left30": -0.524, "front": 0.0, "right30": 0.524, "right60": 1.047}


def camera_for(index: int) -> list[float]:
    yaw = 0.1 * (index - 3)
    pitch = 0.05 * (index % 3 - 1)
    return cameras.look_at_label(yaw, pitch)[0].tolist()


def colour_for(index: int) -> tuple[int, int, int]:
    return (10 + 20 * index, 200 - 10 * index, 7 * index)


def index_from_image(image: torch.Tensor) -> int:
    """Decode i from the centre pixel of a [3,H,W] image in [-1, 1]."""
    red = (float(image[0, image.shape[1] // 2, image.shape[2] // 2]) + 1.0) * 127.5
    return round((red - 10) / 20)


def image_bytes(index: int, resolution: int, image_format: str = "PNG") -> bytes:
    array = np.zeros((resolution, resolution, 3), dtype=np.uint8)
    array[:, :] = colour_for(index)
    array[:, : resolution // 4] = 0
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=image_format)
    return buffer.getvalue()


def write_tiny_dataset(
    root: Path,
    count: int = 8,
    resolution: int = 32,
    label_file: str = "dataset.json",
    as_zip: bool = False,
    shuffle_labels: bool = True,
    names: list[str] | None = None,
) -> Path:
    """Write ``count`` images (sub-folder 00000/) and a label file; labels listed in shuffled order.
    Returns the dataset path (the folder, or root.with_suffix('.zip'))."""
    names = names or [f"00000/img{index:08d}.png" for index in range(count)]
    files = {name: image_bytes(index, resolution) for index, name in enumerate(names)}
    labels = [[name, camera_for(index)] for index, name in enumerate(names)]
    if shuffle_labels:
        random.Random(1).shuffle(labels)
    files[label_file] = json.dumps({"labels": labels}).encode()
    return write_files(root, files, as_zip)


def write_files(root: Path, files: dict[str, bytes], as_zip: bool = False) -> Path:
    if as_zip:
        path = root.with_suffix(".zip")
        path.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(path, "w") as archive:
            for name, data in files.items():
                archive.writestr(name, data)
        return path
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def write_mead_layout(root: Path, people: int = 2, frames: int = 2, resolution: int = 32) -> Path:
    """<root>/<person>/<frame>/<view>.png with one dataset.json; colour index = running view number."""
    files: dict[str, bytes] = {}
    labels = []
    counter = 0
    for person in range(people):
        for frame in range(frames):
            for view, yaw in MEAD_VIEWS.items():
                name = f"M{person:03d}/frame{frame:03d}/{view}.png"
                files[name] = image_bytes(counter % 12, resolution)
                labels.append([name, cameras.look_at_label(yaw, 0.0)[0].tolist()])
                counter += 1
    files["dataset.json"] = json.dumps({"labels": labels}).encode()
    return write_files(root, files)
