"""`prepare` on real photos that ship offline (scikit-image, insightface), the EG3D crop and the backends."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cameras
from data_prep import face_detection, mtcnn
from data_prep.alignment import (
    STANDARD_LANDMARKS_3D,
    align_face,
    eg3d_crop_window,
    fit_scale_translation,
    standard_crop_landmarks,
)
from data_prep.face_detection import (
    Backend,
    DetectorUnavailableError,
    InsightFaceDetector,
    MtcnnDetector,
    create_face_detector,
    find_insightface_detection_model,
)
from data_prep.pose_estimation import estimate_pose
from data_prep.prepare import main, prepare_folder

skimage_data = pytest.importorskip("skimage.data")
insightface = pytest.importorskip("insightface")
INSIGHTFACE_IMAGES = Path(insightface.__file__).parent / "data" / "images"
# A real insightface pack for the optional detection test (never downloaded by the tests).
INSIGHTFACE_PACK_DIR = Path(os.environ.get("GOAE_INSIGHTFACE_PACK", face_detection.DEFAULT_INSIGHTFACE_PACK_DIR))


@pytest.fixture(scope="module")
def detector() -> MtcnnDetector:
    if mtcnn.facenet_pytorch_weights_dir() is None:
        pytest.skip("facenet-pytorch (MTCNN weights) is not installed")
    return MtcnnDetector(mtcnn.facenet_pytorch_weights_dir())


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.fromarray(skimage_data.astronaut())


def test_astronaut_is_found_cropped_centred_and_frontal(detector: MtcnnDetector, astronaut: Image.Image) -> None:
    faces = detector.detect(np.asarray(astronaut))
    assert len(faces) == 1
    face = faces[0]
    # The face is in the upper middle of the 512x512 portrait.
    assert 150 < face.box[0] < face.box[2] < 300 and 30 < face.box[1] < face.box[3] < 200
    aligned = align_face(astronaut, face.landmarks5)
    assert aligned.image.size == (512, 512) and aligned.image.mode == "RGB"
    landmarks = aligned.landmarks
    # Landmarks near where the crop puts the standard face (within 8% of the crop).
    assert np.abs(landmarks - standard_crop_landmarks(512)).max() < 0.08 * 512
    left_eye, right_eye = landmarks[0], landmarks[1]
    assert abs(left_eye[1] - right_eye[1]) < 10  # eyes level
    assert abs((left_eye[0] + right_eye[0]) / 2 - 256) < 10  # and symmetric about the centre
    assert abs(landmarks[2, 0] - 256) < 15  # nose on the centre line
    pose = estimate_pose(landmarks, 512)
    assert abs(pose.yaw_degrees) < 15 and abs(pose.pitch_degrees) < 15
    # The crop is not black: the face fills it (EG3D crops stay inside this portrait).
    assert np.asarray(aligned.image).mean() > 60


def test_crop_matches_eg3d_full_resize_procedure() -> None:
    """Our windowed crop equals resizing the whole image (bicubic), cutting 1024 then 700, LANCZOS to 512."""
    generator = np.random.default_rng(1)
    image = Image.fromarray(generator.integers(0, 256, size=(300, 400, 3), dtype=np.uint8))
    # A small face near the top-left corner: the 1024 window leaves the image (black padding).
    landmarks = np.array([[15.0, 10.0], [50.0, 12.0], [33.0, 32.0], [19.0, 50.0], [47.0, 51.0]])
    ours = np.asarray(align_face(image, landmarks).image).astype(int)

    width, height = image.size
    fit = fit_scale_translation(np.stack([landmarks[:, 0], height - 1 - landmarks[:, 1]], 1), STANDARD_LANDMARKS_3D)
    factor = 300.0 / fit.scale
    resized_width, resized_height = int(width * factor), int(height * factor)
    left = int(resized_width / 2 - 512 + (fit.translation[0] - width / 2) * factor)
    top = int(resized_height / 2 - 512 + (height / 2 - fit.translation[1]) * factor)
    full = image.resize((resized_width, resized_height), Image.Resampling.BICUBIC)
    window = full.crop((left, top, left + 1024, top + 1024)).crop((162, 162, 862, 862))
    reference = np.asarray(window.resize((512, 512), Image.Resampling.LANCZOS)).astype(int)
    assert np.abs(ours - reference).max() <= 2  # float rounding of the resampling box only
    assert np.abs(ours - reference).mean() < 0.01
    assert (reference[:20, :20] == 0).all()  # the padding really is in the test


def test_crop_puts_template_landmarks_at_the_standard_positions() -> None:
    """Landmarks that are an orthographic view of the template (any scale/shift) land on the standard spots."""
    image = Image.new("RGB", (900, 700), (120, 90, 60))
    scale, shift = 160.0, np.array([420.0, 330.0])
    landmarks = np.stack([STANDARD_LANDMARKS_3D[:, 0], -STANDARD_LANDMARKS_3D[:, 1]], 1) * scale + shift
    aligned = align_face(image, landmarks)
    # Up to EG3D's integer truncations and pixel-centre conventions: about one source pixel.
    assert np.abs(aligned.landmarks - standard_crop_landmarks(512)).max() < 1.5 * (300 / scale) * 512 / 700
    window, _ = eg3d_crop_window(900, 700, landmarks)
    assert window.resize_factor == pytest.approx(300 / scale, rel=1e-9)


def test_exif_orientation_is_applied(tmp_path: Path, detector: MtcnnDetector, astronaut: Image.Image) -> None:
    upright_dir, rotated_dir = tmp_path / "upright", tmp_path / "rotated"
    upright_dir.mkdir()
    rotated_dir.mkdir()
    astronaut.save(upright_dir / "photo.png")
    # Stored lying on its side with EXIF orientation 6 ("rotate 90 CW to view"), like a phone photo.
    exif = Image.Exif()
    exif[0x0112] = 6
    astronaut.transpose(Image.Transpose.ROTATE_90).save(rotated_dir / "photo.png", exif=exif)
    upright = prepare_folder(upright_dir, tmp_path / "out_upright", detector)
    rotated = prepare_folder(rotated_dir, tmp_path / "out_rotated", detector)
    assert len(upright.prepared) == len(rotated.prepared) == 1
    first = np.asarray(Image.open(tmp_path / "out_upright" / "photo.png")).astype(int)
    second = np.asarray(Image.open(tmp_path / "out_rotated" / "photo.png")).astype(int)
    assert np.abs(first - second).max() == 0


def test_prepare_cli_on_offline_photos(tmp_path: Path, astronaut: Image.Image, detector: MtcnnDetector) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    astronaut.save(photos / "astronaut.png")
    shutil.copy(INSIGHTFACE_IMAGES / "Tom_Hanks_54745.png", photos / "hanks.png")
    shutil.copy(INSIGHTFACE_IMAGES / "t1.jpg", photos / "group.jpg")
    Image.new("RGB", (320, 240), (200, 200, 200)).save(photos / "blank.png")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    astronaut.save(photos / "astronaut.webp")  # same stem as astronaut.png
    (photos / "notes.txt").write_text("not a photo")
    output = tmp_path / "dataset"

    assert main([str(photos), str(output), "--backend", "mtcnn"]) == 0

    report = json.loads((output / "report.json").read_text())
    assert report["backend"] == "mtcnn"
    assert sorted(entry["source"] for entry in report["prepared"]) == ["astronaut.png", "hanks.png"]
    assert report["no_face"] == ["blank.png"]
    assert [entry["source"] for entry in report["multiple_faces"]] == ["group.jpg"]
    assert report["multiple_faces"][0]["faces_found"] >= 4
    assert [entry["source"] for entry in report["unreadable"]] == ["broken.jpg"]
    assert [entry["source"] for entry in report["name_collisions"]] == ["astronaut.webp"]
    assert report["ignored"] == ["notes.txt"]
    text = (output / "report.txt").read_text()
    assert "blank.png" in text and "group.jpg" in text and "broken.jpg" in text

    labels = dict(json.loads((output / "dataset.json").read_text())["labels"])
    assert set(labels) == {"astronaut.png", "hanks.png"}
    assert sorted(path.name for path in output.glob("*.png")) == ["astronaut.png", "hanks.png"]
    for name, values in labels.items():
        assert Image.open(output / name).size == (512, 512)
        label = torch.tensor(values)
        cameras.validate_label(label, name)
        assert float(label[[3, 7, 11]].norm()) == pytest.approx(2.7, abs=1e-4)
        assert label[16].item() == pytest.approx(4.2647) and label[18].item() == pytest.approx(0.5)
    # Labels are joined by name: the astronaut's label is the near-frontal one computed for her.
    astronaut_entry = next(entry for entry in report["prepared"] if entry["source"] == "astronaut.png")
    assert labels["astronaut.png"] == astronaut_entry["label"]
    assert abs(astronaut_entry["yaw_degrees"]) < 15 and abs(astronaut_entry["pitch_degrees"]) < 15


def test_multiple_faces_allowed_keeps_the_largest(tmp_path: Path, detector: MtcnnDetector) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(INSIGHTFACE_IMAGES / "t1.jpg", photos / "group.jpg")
    report = prepare_folder(photos, tmp_path / "out", detector, allow_multiple_faces=True)
    assert [entry.source for entry in report.prepared] == ["group.jpg"] and not report.multiple_faces
    faces = detector.detect(np.asarray(Image.open(photos / "group.jpg").convert("RGB")))
    largest = max(faces, key=lambda face: face.area)
    assert report.prepared[0].face_score == pytest.approx(largest.score)
    assert report.prepared[0].faces_found == len(faces)


def test_nothing_prepared_exits_non_zero(tmp_path: Path, detector: MtcnnDetector) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (200, 200)).save(photos / "black.png")
    assert main([str(photos), str(tmp_path / "out"), "--backend", "mtcnn"]) == 1
    assert json.loads((tmp_path / "out" / "report.json").read_text())["no_face"] == ["black.png"]
    assert json.loads((tmp_path / "out" / "dataset.json").read_text()) == {"labels": []}
    assert main([str(tmp_path / "missing"), str(tmp_path / "out2"), "--backend", "mtcnn"]) == 2


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    boxes = torch.tensor([[0.0, 0, 9, 9], [1, 1, 10, 10], [50, 50, 59, 59], [0, 0, 4, 4]])
    scores = torch.tensor([0.9, 0.95, 0.5, 0.8])
    kept = mtcnn.non_maximum_suppression(boxes, scores, 0.5, mtcnn.Overlap.UNION)
    assert kept.tolist() == [1, 3, 2]  # box 0 overlaps box 1 (IoU 0.68); box 3 is small (IoU 0.25)
    kept_min = mtcnn.non_maximum_suppression(boxes, scores, 0.5, mtcnn.Overlap.MINIMUM)
    assert kept_min.tolist() == [1, 2]  # box 3 lies inside box 1: overlap/min = 1


def test_insightface_configured_but_missing_pack_is_a_clear_error(tmp_path: Path) -> None:
    empty_pack = tmp_path / "buffalo_l"
    empty_pack.mkdir()
    with pytest.raises(DetectorUnavailableError, match=str(empty_pack)):
        create_face_detector(Backend.INSIGHTFACE, insightface_root=empty_pack)
    assert find_insightface_detection_model(empty_pack) is None
    assert not any(tmp_path.rglob("*.onnx")) and not (tmp_path / "models").exists()  # nothing downloaded


def test_auto_falls_back_to_mtcnn_and_errors_once_when_nothing_is_available(tmp_path: Path) -> None:
    if mtcnn.facenet_pytorch_weights_dir() is None:
        pytest.skip("facenet-pytorch (MTCNN weights) is not installed")
    assert create_face_detector(Backend.AUTO, insightface_root=tmp_path / "nowhere").name == "mtcnn"
    with pytest.raises(DetectorUnavailableError) as error:
        create_face_detector(Backend.AUTO, insightface_root=tmp_path / "nowhere", mtcnn_weights_dir=tmp_path)
    message = str(error.value)
    assert "facenet-pytorch" in message and "--insightface-root" in message and str(tmp_path) in message
    with pytest.raises(DetectorUnavailableError, match="pnet.pt"):
        create_face_detector(Backend.MTCNN, mtcnn_weights_dir=tmp_path)


def test_cli_reports_missing_insightface_pack(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "photos").mkdir()
    code = main([str(tmp_path / "photos"), str(tmp_path / "out"), "--backend", "insightface",
                 "--insightface-root", str(tmp_path / "no_pack")])
    assert code == 2
    assert "no_pack" in capsys.readouterr().err


@pytest.mark.skipif(
    find_insightface_detection_model(INSIGHTFACE_PACK_DIR) is None,
    reason=f"no insightface detection model in {INSIGHTFACE_PACK_DIR} (set GOAE_INSIGHTFACE_PACK)",
)
def test_insightface_detects_the_astronaut(astronaut: Image.Image) -> None:
    detector = create_face_detector(Backend.INSIGHTFACE, insightface_root=INSIGHTFACE_PACK_DIR)
    assert isinstance(detector, InsightFaceDetector)
    faces = detector.detect(np.asarray(astronaut))
    assert len(faces) == 1
    aligned = align_face(astronaut, faces[0].landmarks5)
    assert np.abs(aligned.landmarks - standard_crop_landmarks(512)).max() < 0.08 * 512
