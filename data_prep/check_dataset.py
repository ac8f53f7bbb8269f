"""Validate an EG3D-format dataset up front: every label and every image (full decode).

    python -m data_prep.check_dataset PATH [--label-file dataset.json] [--resolution 512]
        [--layout image|mead] [--histogram yaw_pitch.png]

Prints a summary (count, resolutions, camera radius, yaw/pitch range in degrees, bad and unlabeled
files) and optionally saves a yaw/pitch 2D histogram (PNG). Exit code 1 when any entry is bad,
2 when the dataset cannot be read at all.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

import cameras
from datamodules.labeled_index import DatasetError, DatasetReport, IndexOptions, build_index
from datamodules.multiview import group_views

LAYOUTS = ("image", "mead")


@dataclass
class CameraStatistics:
    radius: np.ndarray  # [N]
    yaw_degrees: np.ndarray  # [N]
    pitch_degrees: np.ndarray  # [N]


def camera_statistics(labels: Sequence[Sequence[float]]) -> CameraStatistics:
    summary = cameras.camera_label_summary(torch.tensor(labels, dtype=torch.float64).reshape(-1, cameras.LABEL_SIZE))
    return CameraStatistics(
        radius=summary.radius.numpy(),
        yaw_degrees=np.degrees(summary.yaw.numpy()),
        pitch_degrees=np.degrees(summary.pitch.numpy()),
    )


def _symmetric_extent(values: np.ndarray, minimum: float = 30.0) -> float:
    """Half-width of a symmetric axis covering the values, rounded up to 15 degrees."""
    largest = float(np.abs(values).max()) if values.size else 0.0
    return max(minimum, 15.0 * math.ceil(largest / 15.0 + 1e-9))


def _colour(fraction: float) -> tuple[int, int, int]:
    """White (empty) -> dark blue (max), through light blue."""
    stops = [(255, 255, 255), (158, 202, 225), (49, 130, 189), (8, 48, 107)]
    position = fraction * (len(stops) - 1)
    low = min(int(position), len(stops) - 2)
    weight = position - low
    return tuple(round(stops[low][i] * (1 - weight) + stops[low + 1][i] * weight) for i in range(3))  # type: ignore[return-value]


def save_yaw_pitch_histogram(statistics: CameraStatistics, path: Path, title: str, bins: int = 36) -> None:
    """A 2D histogram (yaw on x, pitch on y, degrees) drawn with PIL (no plotting dependency)."""
    yaw_extent = _symmetric_extent(statistics.yaw_degrees)
    pitch_extent = _symmetric_extent(statistics.pitch_degrees)
    counts, _, _ = np.histogram2d(
        statistics.yaw_degrees,
        statistics.pitch_degrees,
        bins=bins,
        range=[[-yaw_extent, yaw_extent], [-pitch_extent, pitch_extent]],
    )
    cell, left, top, bottom, right = 12, 70, 40, 50, 20
    width, height = left + bins * cell + right, top + bins * cell + bottom
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    peak = max(float(counts.max()), 1.0)
    for yaw_bin in range(bins):
        for pitch_bin in range(bins):
            count = counts[yaw_bin, pitch_bin]
            if count == 0:
                continue
            # Pitch grows downwards on screen: positive pitch = camera below, looking up.
            x0, y0 = left + yaw_bin * cell, top + pitch_bin * cell
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=_colour(0.15 + 0.85 * count / peak))
    draw.rectangle([left, top, left + bins * cell, top + bins * cell], outline="black")
    for fraction in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = left + fraction * bins * cell
        y = top + fraction * bins * cell
        draw.line([x, top + bins * cell, x, top + bins * cell + 4], fill="black")
        draw.text((x - 12, top + bins * cell + 6), f"{-yaw_extent + 2 * yaw_extent * fraction:.0f}", fill="black")
        draw.line([left - 4, y, left, y], fill="black")
        draw.text((left - 34, y - 5), f"{-pitch_extent + 2 * pitch_extent * fraction:.0f}", fill="black")
    draw.text((left, top + bins * cell + 24), "yaw (degrees, + = camera towards +x)", fill="black")
    draw.text((4, top - 16), "pitch (deg)", fill="black")
    draw.text((left, 8), f"{title}  (n={len(statistics.radius)}, darkest cell={int(peak)})", fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def format_summary(report: DatasetReport, statistics: CameraStatistics | None, layout: str, groups: int) -> str:
    lines = [report.summary()]
    if layout == "mead":
        lines.append(f"  complete multi-view groups: {groups}")
    resolutions = ", ".join(f"{size}: {count}" for size, count in sorted(report.resolutions.items()))
    lines.append(f"  resolutions: {resolutions or 'none'}")
    if len(report.resolutions) > 1:
        lines.append("  WARNING: more than one resolution; the DataModule needs one full_resolution")
    if statistics is not None and statistics.radius.size:
        lines.append(
            f"  camera radius: min {statistics.radius.min():.4f}  mean {statistics.radius.mean():.4f}  "
            f"max {statistics.radius.max():.4f}"
        )
        lines.append(
            f"  yaw:   min {statistics.yaw_degrees.min():7.2f}  max {statistics.yaw_degrees.max():7.2f} degrees"
        )
        lines.append(
            f"  pitch: min {statistics.pitch_degrees.min():7.2f}  max {statistics.pitch_degrees.max():7.2f} degrees"
        )
    lines.append(f"  bad entries: {len(report.skipped)}   unlabeled images: {len(report.unlabeled_images)}")
    return "\n".join(lines)


def check_dataset(
    path: str, label_file: str, resolution: int | None, layout: str, histogram: Path | None
) -> int:
    """Print the summary; return the exit code (0 clean, 1 bad entries or nothing usable)."""
    options = IndexOptions(
        label_file=label_file,
        # WHY: without --resolution any square size is accepted; the summary lists what was found.
        full_resolution=resolution or 1,
        resize_other_sizes=resolution is None,
        on_bad_sample="skip",  # collect every problem instead of stopping at the first
        image_check="decode",
    )
    index = build_index(path, options)
    groups = len(group_views(index, "skip")) if layout == "mead" else 0
    statistics = camera_statistics([entry.camera for entry in index.entries]) if index.entries else None
    print(format_summary(index.report, statistics, layout, groups))
    if histogram is not None:
        if statistics is None:
            print(f"no usable labels: histogram {histogram} not written")
        else:
            save_yaw_pitch_histogram(statistics, histogram, title=Path(path).name)
            print(f"  yaw/pitch histogram: {histogram}")
    usable = groups if layout == "mead" else index.report.num_usable
    if index.report.skipped or usable == 0:
        print(f"FAILED: {len(index.report.skipped)} bad entries, {usable} usable", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_prep.check_dataset", description=__doc__.split("\n")[0])
    parser.add_argument("path", help="dataset folder or .zip")
    parser.add_argument("--label-file", default="dataset.json", help="label file name (GOAE: label.json)")
    parser.add_argument("--resolution", type=int, default=None, help="required image size (square); any if omitted")
    parser.add_argument("--layout", choices=LAYOUTS, default="image", help="'mead': also check five-view groups")
    parser.add_argument("--histogram", type=Path, default=None, help="save a yaw/pitch histogram PNG here")
    arguments = parser.parse_args(argv)
    try:
        return check_dataset(arguments.path, arguments.label_file, arguments.resolution, arguments.layout,
                             arguments.histogram)
    except DatasetError as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
