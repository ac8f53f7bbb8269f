"""`python -m data_prep.prepare INPUT_DIR OUTPUT_DIR`: raw photos -> an EG3D-format dataset.

For every photo (jpg/jpeg/png/webp, EXIF orientation applied): detect faces with 5 landmarks,
crop like EG3D's in-the-wild preprocessing (data_prep/alignment.py), estimate the camera from the
landmarks (data_prep/pose_estimation.py) and write OUTPUT_DIR/<stem>.png plus one label in
OUTPUT_DIR/dataset.json. Photos that cannot be used are listed in report.json / report.txt,
never silently dropped. Exit status 1 when no photo could be prepared. See docs/prepare.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from data_prep.alignment import EG3D_OUTPUT_SIZE, align_face
from data_prep.face_detection import Backend, DetectorUnavailableError, FaceDetection, FaceDetector, create_face_detector
from data_prep.pose_estimation import estimate_pose

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
LABEL_FILE_NAME = "dataset.json"
REPORT_JSON_NAME = "report.json"
REPORT_TEXT_NAME = "report.txt"


@dataclass(frozen=True)
class PreparedPhoto:
    source: str
    output: str
    label: list[float]
    face_score: float
    faces_found: int
    yaw_degrees: float
    pitch_degrees: float
    reprojection_error_pixels: float
    crop_landmarks: list[list[float]]


@dataclass(frozen=True)
class MultipleFaces:
    source: str
    faces_found: int


@dataclass(frozen=True)
class Failure:
    source: str
    reason: str


@dataclass
class PrepareReport:
    backend: str
    output_size: int
    prepared: list[PreparedPhoto] = field(default_factory=list)
    no_face: list[str] = field(default_factory=list)
    multiple_faces: list[MultipleFaces] = field(default_factory=list)
    unreadable: list[Failure] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)  # a face was found but could not be cropped/posed
    name_collisions: list[Failure] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # files that are not photos by their suffix


def prepare_folder(
    input_dir: Path,
    output_dir: Path,
    detector: FaceDetector,
    allow_multiple_faces: bool = False,
    output_size: int = EG3D_OUTPUT_SIZE,
) -> PrepareReport:
    """Process every photo in `input_dir` (not recursive) and write the dataset and the report."""
    if not input_dir.is_dir():
        raise FileNotFoundError(f"input folder {input_dir} does not exist")
    output_dir.mkdir(parents=True, exist_ok=True)
    report = PrepareReport(backend=detector.name, output_size=output_size)
    claimed_outputs: dict[str, str] = {}
    for path in sorted(input_dir.iterdir()):
        if not path.is_file():
            continue
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            report.ignored.append(path.name)
            continue
        output_name = f"{path.stem}.png"
        if output_name in claimed_outputs:
            report.name_collisions.append(
                Failure(path.name, f"output {output_name} already taken by {claimed_outputs[output_name]}")
            )
            continue
        claimed_outputs[output_name] = path.name
        _prepare_photo(path, output_dir / output_name, detector, allow_multiple_faces, output_size, report)

    labels = [[photo.output, photo.label] for photo in report.prepared]
    (output_dir / LABEL_FILE_NAME).write_text(json.dumps({"labels": labels}, indent=1))
    (output_dir / REPORT_JSON_NAME).write_text(json.dumps(asdict(report), indent=1))
    (output_dir / REPORT_TEXT_NAME).write_text(format_report(report))
    return report


def _prepare_photo(
    path: Path,
    output_path: Path,
    detector: FaceDetector,
    allow_multiple_faces: bool,
    output_size: int,
    report: PrepareReport,
) -> None:
    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened).convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as error:
        report.unreadable.append(Failure(path.name, f"{type(error).__name__}: {error}"))
        return
    faces = detector.detect(np.asarray(image))
    if not faces:
        report.no_face.append(path.name)
        return
    if len(faces) > 1 and not allow_multiple_faces:
        report.multiple_faces.append(MultipleFaces(path.name, len(faces)))
        return
    face = _largest(faces)
    try:
        aligned = align_face(image, face.landmarks5, output_size)
        pose = estimate_pose(aligned.landmarks, output_size)
    except ValueError as error:
        report.failed.append(Failure(path.name, str(error)))
        return
    aligned.image.save(output_path)
    report.prepared.append(
        PreparedPhoto(
            source=path.name,
            output=output_path.name,
            label=[float(value) for value in pose.label],
            face_score=face.score,
            faces_found=len(faces),
            yaw_degrees=pose.yaw_degrees,
            pitch_degrees=pose.pitch_degrees,
            reprojection_error_pixels=pose.reprojection_error * output_size,
            crop_landmarks=aligned.landmarks.tolist(),
        )
    )


def _largest(faces: list[FaceDetection]) -> FaceDetection:
    # EG3D keeps the biggest confident face; ties (never in practice) go to the higher score.
    return max(faces, key=lambda face: (face.area, face.score))


def format_report(report: PrepareReport) -> str:
    lines = [
        f"backend: {report.backend}, output size: {report.output_size}",
        f"prepared: {len(report.prepared)}",
    ]
    lines += [
        f"  {photo.source} -> {photo.output}  yaw {photo.yaw_degrees:+.1f} deg, pitch {photo.pitch_degrees:+.1f} deg"
        for photo in report.prepared
    ]
    lines.append(f"no face found: {len(report.no_face)}")
    lines += [f"  {name}" for name in report.no_face]
    lines.append(f"several faces (rerun with --allow-multiple-faces to keep the largest): {len(report.multiple_faces)}")
    lines += [f"  {entry.source}: {entry.faces_found} faces" for entry in report.multiple_faces]
    for title, failures in (
        ("unreadable", report.unreadable),
        ("face found but not usable", report.failed),
        ("output name collisions", report.name_collisions),
    ):
        lines.append(f"{title}: {len(failures)}")
        lines += [f"  {failure.source}: {failure.reason}" for failure in failures]
    lines.append(f"ignored (not {'/'.join(IMAGE_SUFFIXES)}): {len(report.ignored)}")
    lines += [f"  {name}" for name in report.ignored]
    return "\n".join(lines) + "\n"


def build_argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data_prep.prepare",
        description="Crop faces like EG3D's in-the-wild preprocessing and estimate their cameras.",
    )
    parser.add_argument("input_dir", type=Path, help="folder of photos (jpg/png/webp)")
    parser.add_argument("output_dir", type=Path, help="where the crops, dataset.json and report go")
    parser.add_argument("--backend", choices=[backend.value for backend in Backend], default=Backend.AUTO.value)
    parser.add_argument(
        "--insightface-root",
        type=Path,
        default=None,
        help="insightface model-pack folder holding a detection model (e.g. .../buffalo_l with det_10g.onnx)",
    )
    parser.add_argument(
        "--allow-multiple-faces", action="store_true", help="keep the largest face instead of reporting the photo"
    )
    parser.add_argument("--size", type=int, default=EG3D_OUTPUT_SIZE, help="output resolution (EG3D: 512)")
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = build_argument_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if not arguments.input_dir.is_dir():
        print(f"error: input folder {arguments.input_dir} does not exist", file=sys.stderr)
        return 2
    try:
        detector = create_face_detector(Backend(arguments.backend), arguments.insightface_root)
    except DetectorUnavailableError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    report = prepare_folder(
        arguments.input_dir, arguments.output_dir, detector, arguments.allow_multiple_faces, arguments.size
    )
    print(format_report(report), end="")
    if not report.prepared:
        print(f"error: no photo in {arguments.input_dir} could be prepared", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
