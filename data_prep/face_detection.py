"""Face detection with 5 landmarks, behind one interface with two backends.

* insightface: a detection model (SCRFD/RetinaFace ONNX, e.g. buffalo_l's det_10g.onnx) from a
  model-pack directory the user configures. We only ever load files that exist: insightface's
  own FaceAnalysis would download a missing pack, which we never allow.
* mtcnn: our port of MTCNN (data_prep/mtcnn.py) on the weights inside the facenet-pytorch wheel;
  works offline. It is also the detector EG3D's in-the-wild preprocessing uses.

Landmarks are (x, y) in pixel-index coordinates (the centre of the top-left pixel is (0, 0)),
ordered left eye, right eye, nose tip, left mouth corner, right mouth corner, where left/right
are as seen in the image (the subject's right eye is the "left eye").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Protocol

import numpy as np

from data_prep import mtcnn

logger = logging.getLogger(__name__)

# EG3D's preprocess_in_the_wild keeps MTCNN faces with confidence > 0.9.
MTCNN_MIN_SCORE = 0.9
# insightface's own default detection threshold.
INSIGHTFACE_MIN_SCORE = 0.5
INSIGHTFACE_DETECTION_INPUT_SIZE = (640, 640)
# Where insightface keeps packs by default (~/.insightface/models/<pack>); only looked at, never filled.
DEFAULT_INSIGHTFACE_PACK_DIR = Path("~/.insightface/models/buffalo_l").expanduser()
# Detection models of the insightface packs, best first (buffalo_l, antelopev2, buffalo_m/s/sc).
INSIGHTFACE_DETECTION_FILE_PATTERNS = ("det_10g.onnx", "scrfd_10g*.onnx", "det_*.onnx", "scrfd*.onnx")

INSTALL_HINT = (
    "Install the offline MTCNN weights with `pip install --no-deps facenet-pytorch==2.6.0` "
    "(scripts/setup.sh does this), or download an insightface model pack (e.g. buffalo_l) and pass "
    "its folder, the one holding det_10g.onnx, with --insightface-root."
)


class Backend(str, Enum):
    AUTO = "auto"
    INSIGHTFACE = "insightface"
    MTCNN = "mtcnn"


class DetectorUnavailableError(RuntimeError):
    """No usable face detector: what is missing and how to fix it is in the message."""


@dataclass(frozen=True)
class FaceDetection:
    """One face: box (x1, y1, x2, y2) and 5 landmarks [5, 2], pixel-index coordinates."""

    box: np.ndarray
    score: float
    landmarks5: np.ndarray

    @property
    def area(self) -> float:
        width, height = self.box[2] - self.box[0], self.box[3] - self.box[1]
        return float(max(width, 0.0) * max(height, 0.0))


class FaceDetector(Protocol):
    name: str

    def detect(self, rgb_image: np.ndarray) -> list[FaceDetection]:
        """Faces in an [H,W,3] uint8 RGB image, most confident first."""
        ...


class MtcnnDetector:
    """MTCNN on facenet-pytorch's weight files."""

    name = "mtcnn"

    def __init__(
        self,
        weights_dir: Path,
        min_score: float = MTCNN_MIN_SCORE,
        min_face_size: int = mtcnn.DEFAULT_MIN_FACE_SIZE,
    ) -> None:
        self._cascade = mtcnn.Mtcnn(weights_dir, min_face_size=min_face_size)
        self._min_score = min_score

    def detect(self, rgb_image: np.ndarray) -> list[FaceDetection]:
        faces = self._cascade.detect(rgb_image)
        return [
            FaceDetection(box=box, score=float(score), landmarks5=landmarks)
            for box, score, landmarks in zip(faces.boxes, faces.scores, faces.landmarks)
            if score > self._min_score
        ]


class InsightFaceDetector:
    """An insightface detection ONNX model (SCRFD / RetinaFace with keypoints), loaded from a file."""

    name = "insightface"

    def __init__(self, model_path: Path, min_score: float = INSIGHTFACE_MIN_SCORE) -> None:
        # Imported here: insightface pulls in onnx/onnxruntime, which the MTCNN path does not need.
        from insightface import model_zoo

        # A direct .onnx path is loaded as is (no model-store lookup, no download).
        model = model_zoo.get_model(str(model_path), providers=["CPUExecutionProvider"])
        if model is None or not hasattr(model, "detect"):
            raise DetectorUnavailableError(f"{model_path} is not an insightface face-detection model")
        model.prepare(ctx_id=-1, input_size=INSIGHTFACE_DETECTION_INPUT_SIZE, det_thresh=min_score)
        if not getattr(model, "use_kps", True):
            raise DetectorUnavailableError(f"{model_path} detects faces but gives no 5-point landmarks")
        self._model = model
        self.model_path = model_path

    def detect(self, rgb_image: np.ndarray) -> list[FaceDetection]:
        # insightface models take OpenCV's BGR order.
        boxes, keypoints = self._model.detect(np.ascontiguousarray(rgb_image[:, :, ::-1]), max_num=0)
        detections = [
            FaceDetection(box=row[:4].astype(np.float64), score=float(row[4]), landmarks5=points.astype(np.float64))
            for row, points in zip(boxes, keypoints)
        ]
        return sorted(detections, key=lambda detection: detection.score, reverse=True)


def find_insightface_detection_model(pack_dir: Path) -> Path | None:
    """The detection ONNX file of a model pack, or None. Also accepts an insightface root
    (a folder with models/buffalo_l/ inside)."""
    for folder in (pack_dir, pack_dir / "models" / "buffalo_l"):
        if not folder.is_dir():
            continue
        for pattern in INSIGHTFACE_DETECTION_FILE_PATTERNS:
            matches = sorted(folder.glob(pattern))
            if matches:
                return matches[0]
    return None


def create_face_detector(
    backend: Backend | str = Backend.AUTO,
    insightface_root: Path | None = None,
    mtcnn_weights_dir: Path | None = None,
) -> FaceDetector:
    """The detector for `backend`.

    auto: insightface if a pack with a detection model is found (in `insightface_root`, or else
    in ~/.insightface/models/buffalo_l), otherwise MTCNN. `mtcnn_weights_dir` defaults to the
    installed facenet-pytorch wheel's data folder.
    """
    backend = Backend(backend)
    if backend is Backend.INSIGHTFACE:
        return _insightface_detector(insightface_root or DEFAULT_INSIGHTFACE_PACK_DIR)
    if backend is Backend.MTCNN:
        return _mtcnn_detector(mtcnn_weights_dir)

    pack_dir = insightface_root or DEFAULT_INSIGHTFACE_PACK_DIR
    model_path = find_insightface_detection_model(pack_dir)
    if model_path is not None:
        return InsightFaceDetector(model_path)
    if insightface_root is not None:
        logger.warning("no insightface detection model in %s; falling back to MTCNN", insightface_root)
    weights_dir = mtcnn_weights_dir or mtcnn.facenet_pytorch_weights_dir()
    if weights_dir is None or mtcnn.missing_weight_files(weights_dir):
        looked_at = weights_dir or "the facenet_pytorch package (not installed)"
        raise DetectorUnavailableError(
            f"no face detector available: no insightface detection model in {pack_dir} and no MTCNN "
            f"weights in {looked_at}. {INSTALL_HINT}"
        )
    return MtcnnDetector(weights_dir)


def _insightface_detector(pack_dir: Path) -> InsightFaceDetector:
    model_path = find_insightface_detection_model(pack_dir)
    if model_path is None:
        raise DetectorUnavailableError(
            f"insightface backend: no detection model ({', '.join(INSIGHTFACE_DETECTION_FILE_PATTERNS)}) "
            f"in {pack_dir}. Download a model pack (e.g. buffalo_l) there yourself (we never let "
            "insightface download), point --insightface-root at it, or use --backend mtcnn."
        )
    return InsightFaceDetector(model_path)


def _mtcnn_detector(weights_dir: Path | None) -> MtcnnDetector:
    weights_dir = weights_dir or mtcnn.facenet_pytorch_weights_dir()
    if weights_dir is None:
        raise DetectorUnavailableError(f"mtcnn backend: facenet-pytorch is not installed. {INSTALL_HINT}")
    missing = mtcnn.missing_weight_files(weights_dir)
    if missing:
        raise DetectorUnavailableError(
            f"mtcnn backend: missing weight files {', '.join(str(path) for path in missing)}. {INSTALL_HINT}"
        )
    return MtcnnDetector(weights_dir)
